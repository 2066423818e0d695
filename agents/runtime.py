"""Load one ONNX partition (after checking its sha256) and run it on a sample."""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort


class PartitionError(Exception):
    """The partition file is missing, has the wrong hash, or does not load."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def top1(logits: np.ndarray) -> tuple[float, int]:
    """(max softmax probability, argmax) of one row of logits.

    Plain floats, not numpy: a handful of classes, on the per-sample path, right after
    onnxruntime has left the caches cold.
    """
    row = logits.tolist()
    top = max(row)
    total = sum(math.exp(v - top) for v in row)
    return 1.0 / total, row.index(top)


def top1_entropy(logits: np.ndarray) -> tuple[float, int]:
    """(1 - entropy / ln K of the softmax, argmax) of one row of logits: 1 when certain, 0 when uniform."""
    row = logits.tolist()
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    total = sum(exps)
    entropy = -sum((e / total) * math.log(e / total) for e in exps if e > 0)
    return (1.0 - entropy / math.log(len(row)) if len(row) > 1 else 1.0), row.index(top)


def softmax(logits: np.ndarray) -> list[float]:
    """The softmax of one row of logits, as plain floats (the pool router's probabilities)."""
    row = logits.tolist()
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def confidence(logits: np.ndarray, measure: str = "max") -> tuple[float, int]:
    """(confidence under ``measure``, argmax): ``max`` softmax or ``entropy`` (see :func:`top1_entropy`)."""
    return top1_entropy(logits) if measure == "entropy" else top1(logits)


CPU = "CPUExecutionProvider"


def usable_providers(wanted: list[str] | None, available: list[str] | None = None) -> list[str]:
    """``wanted`` in order, less what this onnxruntime lacks (``available``: its own list), the CPU last."""
    have = ort.get_available_providers() if available is None else available
    out = [w for w in (wanted or []) if w in have and w != CPU]
    return [*out, CPU]


@dataclass
class Partition:
    """An onnxruntime session for one tier's partition."""

    path: Path
    session: ort.InferenceSession
    load_ms: float

    def __post_init__(self) -> None:
        # asked once: the session's own getters build new lists on every call
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.providers = list(self.session.get_providers())

    @classmethod
    def load(cls, path: Path, sha256: str, threads: int = 1, providers: list[str] | None = None) -> Partition:
        """Verify ``path`` against ``sha256`` and open it with onnxruntime.

        ``providers``: the execution providers to try, in order (default the CPU); those this
        onnxruntime lacks are left out (:func:`usable_providers`), the CPU is always the last
        resort, and :attr:`providers` says which the session really took.

        Raises:
            PartitionError: the file is missing, its hash differs, or onnxruntime refuses it.
        """
        t0 = time.perf_counter()
        if not path.is_file():
            raise PartitionError(f"partition file {path} does not exist; push the bundle to this device")
        actual = sha256_file(path)
        if actual != sha256:
            raise PartitionError(
                f"partition file {path} has sha256 {actual[:16]}…, the bundle says {sha256[:16]}…; "
                "the file is stale or corrupt: rebuild or re-push the bundle"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(path), opts, providers=usable_providers(providers))
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise PartitionError(f"onnxruntime cannot load {path}: {e}") from e
        return cls(path, session, (time.perf_counter() - t0) * 1e3)

    def run(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on the tensors it takes; returns every output by name."""
        feed = {name: tensors[name] for name in self.inputs}
        return dict(zip(self.outputs, self.session.run(self.outputs, feed)))
