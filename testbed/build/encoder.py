"""The torch side of the transformer builder: tokenised splits, tier modules, exit training, ONNX export, parity.

torch is imported inside the functions: it is a build-time dependency of the controller
machine, never of a device.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from agents.runtime import Partition
from testbed.build.common import Progress
from testbed.build.steps import exit_row
from testbed.build.tiers import Cut, exit_output


class Training(BaseModel):
    """How the exit heads are trained: alone on the frozen backbone, or jointly with it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    finetune: bool = Field(False, description="train the backbone together with every exit (sum of losses)")
    epochs: int = Field(10, ge=1, description="epochs; cartography statistics are over these")
    lr: float = Field(1e-3, gt=0, description="learning rate of the exit heads")
    backbone_lr: float = Field(3e-5, gt=0, description="learning rate of the backbone (finetune only)")
    batch_size: int = Field(32, ge=1, description="training batch size")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")


def pad(seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Token lists padded with zeros to the longest, and their attention mask."""
    width = max(len(s) for s in seqs)
    x = np.zeros((len(seqs), width), np.int64)
    m = np.zeros((len(seqs), width), np.int64)
    for i, s in enumerate(seqs):
        x[i, :len(s)] = s
        m[i, :len(s)] = 1
    return x, m


class Encoded:
    """Tokenised split: unpadded token ids (and token types for pairs), labels."""

    def __init__(self, ids: list[list[int]], types: list[list[int]] | None, labels: np.ndarray):
        self.ids, self.types, self.labels = ids, types, labels

    def batch(self, idx: np.ndarray | list[int]) -> dict[str, np.ndarray]:
        """A padded batch of the samples ``idx``: input_ids, attention_mask (, token_type_ids)."""
        x, m = pad([self.ids[i] for i in idx])
        out = {"input_ids": x, "attention_mask": m}
        if self.types is not None:
            t, _ = pad([self.types[i] for i in idx])
            out["token_type_ids"] = t
        return out

    def one(self, i: int) -> dict[str, np.ndarray]:
        """Sample ``i`` as a live run sends it: a batch of one, no padding."""
        return self.batch([i])


def pooled(h: Any, mask: Any) -> Any:
    """Mean of the hidden states over the real (unpadded) tokens."""
    m = mask.to(h.dtype)[:, :, None]
    return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


def tier_modules(model: Any, cut: Cut, heads: Any, mode: str, token_types: bool) -> dict[str, Any]:
    """One torch module per tier: (embeddings,) its layers, its exit heads."""
    import torch

    class TierPart(torch.nn.Module):
        def __init__(self, tier: str):
            super().__init__()
            first, last = cut.tiers[tier]
            self.from_tokens = tier == cut.first or mode == "input"
            run_from = 1 if self.from_tokens else first
            self.embeddings = model.embeddings if self.from_tokens else None
            self.numbers = list(range(run_from, last + 1))
            self.layers = torch.nn.ModuleList(model.encoder.layer[run_from - 1:last])
            self.exits = cut.exits_in(tier)
            self.heads = torch.nn.ModuleList([heads[str(e)] for e in self.exits])
            self.hidden_out = tier != cut.last and mode == "hidden"

        def forward(self, x: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            h = self.embeddings(input_ids=x, token_type_ids=token_type_ids) if self.embeddings is not None else x
            additive = (1.0 - attention_mask.to(h.dtype)[:, None, None, :]) * torch.finfo(h.dtype).min
            found = {}
            for number, layer in zip(self.numbers, self.layers, strict=True):
                out = layer(h, attention_mask=additive)
                h = out[0] if isinstance(out, tuple) else out
                if number in self.exits:
                    found[number] = self.heads[self.exits.index(number)](pooled(h, attention_mask))
            outs = [h] if self.hidden_out else []
            outs.append(found[self.exits[-1]])
            outs.extend(found[e] for e in self.exits[:-1])
            return tuple(outs)

        def output_names(self) -> list[str]:
            names = ["hidden_out"] if self.hidden_out else []
            return names + ["logits"] + [exit_output(e, cut) for e in self.exits[:-1]]

        def input_names(self) -> list[str]:
            if not self.from_tokens:
                return ["hidden", "attention_mask"]
            return ["input_ids", "attention_mask"] + (["token_type_ids"] if token_types else [])

    return {tier: TierPart(tier).eval() for tier in cut.names}


def features(model: Any, data: Encoded, layers: list[int], batch: int) -> dict[int, np.ndarray]:
    """Mean-pooled hidden state after each layer in ``layers`` (frozen backbone), batches sorted by length."""
    import torch

    order = np.argsort([len(x) for x in data.ids], kind="stable")
    feats = {layer: np.zeros((len(data.ids), model.config.hidden_size), np.float32) for layer in layers}
    with torch.no_grad():
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            feed = {k: torch.from_numpy(v) for k, v in data.batch(idx).items()}
            hs = model(**feed, output_hidden_states=True).hidden_states
            for layer in layers:
                feats[layer][idx] = pooled(hs[layer], feed["attention_mask"]).numpy()
    return feats


def train(model: Any, heads: Any, data: Encoded, exits: list[int], cfg: Training, seed: int, batch: int,
           progress: Progress) -> tuple[np.ndarray, np.ndarray]:
    """Train the exit heads (and the backbone when ``cfg.finetune``); returns the training dynamics.

    Returns:
        (gold_prob, correct), each (epochs, train samples, exits): the probability of the gold label
        and whether the argmax was right, logged from each sample's training forward pass.
    """
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = len(data.ids)
    y_all = torch.from_numpy(data.labels)
    gold = np.zeros((cfg.epochs, n, len(exits)), np.float32)
    right = np.zeros((cfg.epochs, n, len(exits)), bool)
    groups = [{"params": heads.parameters(), "lr": cfg.lr}]
    feats = None
    if cfg.finetune:
        model.train()
        groups.append({"params": model.parameters(), "lr": cfg.backbone_lr})
    else:
        progress(f"encoding the train split ({n} samples) once: frozen backbone, exits after layers {exits}")
        feats = {e: torch.from_numpy(v) for e, v in features(model, data, exits, batch).items()}
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    heads.train()
    for epoch in range(cfg.epochs):
        t0, total = time.perf_counter(), 0.0
        perm = rng.permutation(n)
        for start in range(0, n, cfg.batch_size):
            idx = np.sort(perm[start:start + cfg.batch_size])
            y = y_all[idx]
            if feats is None:
                feed = {k: torch.from_numpy(v) for k, v in data.batch(idx).items()}
                hs = model(**feed, output_hidden_states=True).hidden_states
                logits = [heads[str(e)](pooled(hs[e], feed["attention_mask"])) for e in exits]
            else:
                logits = [heads[str(e)](feats[e][idx]) for e in exits]
            loss = sum(F.cross_entropy(lg, y) for lg in logits) / len(exits)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            with torch.no_grad():
                for j, lg in enumerate(logits):
                    p = lg.softmax(-1)
                    gold[epoch, idx, j] = p.gather(1, y[:, None])[:, 0].numpy()
                    right[epoch, idx, j] = (p.argmax(1) == y).numpy()
        progress(f"epoch {epoch + 1}/{cfg.epochs}: loss {total / n:.4f}, train accuracy by exit "
                 + " ".join(f"L{e}={right[epoch, :, j].mean():.3f}" for j, e in enumerate(exits))
                 + f" ({time.perf_counter() - t0:.1f} s)")
    model.eval()
    heads.eval()
    return gold, right


def export(part: Any, path: Path, hidden: int, vocab: int) -> None:
    """Export one tier's module to ONNX, traced on a padded batch with dynamic batch and sequence axes."""
    import torch

    # Trace with a padded batch: an all-ones mask would bake "no padding" into the graph.
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3], dtype=torch.int64)
    inputs = part.input_names()
    x = torch.randint(min(5, vocab - 1), vocab, (2, 7)) if inputs[0] == "input_ids" else torch.randn(2, 7, hidden)
    args: tuple[Any, ...] = (x, mask) + ((torch.zeros(2, 7, dtype=torch.int64),) if "token_type_ids" in inputs else ())
    outputs = part.output_names()
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "seq"} for n in inputs}
    axes |= {n: {0: "batch"} for n in outputs}
    if "hidden_out" in outputs:
        axes["hidden_out"] = {0: "batch", 1: "seq"}
    with torch.no_grad():
        torch.onnx.export(part, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=axes,
                          opset_version=17, dynamo=False)


def chain(sessions: dict[str, Partition], feed: dict[str, np.ndarray], mode: str) -> dict[str, dict[str, np.ndarray]]:
    """Run the tiers in order as the agents do; returns every tier's outputs.

    ``sessions``: tier -> its partition, in the order a sample crosses them (the first ones only: a prefix).
    """
    outs: dict[str, dict[str, np.ndarray]] = {}
    cur = feed
    for tier in sessions:
        outs[tier] = sessions[tier].run(cur)
        if mode == "hidden" and "hidden_out" in outs[tier]:
            cur = {"hidden": outs[tier]["hidden_out"], "attention_mask": feed["attention_mask"]}
    return outs


def parity(parts: dict[str, Any], sessions: dict[str, Partition], feed: dict[str, np.ndarray], mode: str) -> float:
    """Max |onnx - torch| over every output of every tier on one padded batch (``parts`` in tier order)."""
    import torch

    onnx_out = chain(sessions, feed, mode)
    mask = feed["attention_mask"]
    worst = 0.0
    cur = feed
    for tier, part in parts.items():
        args = [torch.from_numpy(cur[n]) for n in part.input_names()]
        with torch.no_grad():
            t_out = part(*args)
        for name, t in zip(part.output_names(), t_out, strict=True):
            diff = np.abs(onnx_out[tier][name] - t.numpy())
            if name == "hidden_out":
                diff = diff * mask[:, :, None]  # padded positions carry no meaning
            worst = max(worst, float(diff.max()))
        if part.hidden_out:  # the next tier gets exactly what the agents would send it
            cur = {"hidden": onnx_out[tier]["hidden_out"], "attention_mask": mask}
    return worst


def exit_table(sessions: dict[str, Partition], cut: Cut, mode: str, split: str, data: Encoded) -> pd.DataFrame:
    """Every exit's prediction and confidence per sample, one unpadded sample at a time as a live run does.

    The columns are :func:`testbed.build.steps.exit_row`'s.
    """
    exits = {tier: [(layer, exit_output(layer, cut)) for layer in cut.exits_in(tier)] for tier in cut.names}
    return pd.DataFrame([exit_row(split, sid, int(data.labels[sid]), chain(sessions, data.one(sid), mode), exits)
                         for sid in range(len(data.ids))])
