"""Training dynamics for data cartography (Swayamdipta et al., 2020), per exit: pure, no torch.

During training, for every training sample, every epoch and every exit, the builder
records the probability the exit gives to the gold label and whether its argmax was
right (from the training forward pass, as the reference implementation logs them).
This module turns that history into the per-sample statistics the cartography policy
clusters on:

- ``confidence``: mean gold-label probability over epochs;
- ``variability``: standard deviation of it over epochs (population std, ``ddof=0``);
- ``correctness``: fraction of epochs in which the exit predicted the gold label.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

CARTOGRAPHY_COLUMNS = ("sample_id", "label", "exit_layer", "tier", "confidence", "variability", "correctness",
                       "epochs", "gold_prob_by_epoch")


def dynamics_table(gold_prob: np.ndarray, correct: np.ndarray, sample_ids: np.ndarray, labels: np.ndarray,
                   exit_layers: list[int], tiers: list[str]) -> pd.DataFrame:
    """Per-sample cartography statistics, one row per (sample, exit).

    Args:
        gold_prob: shape (epochs, samples, exits), probability of the gold label.
        correct: same shape, True where the exit's argmax was the gold label.
        sample_ids: shape (samples,), the training split's sample ids.
        labels: shape (samples,), gold labels.
        exit_layers: the layer of each exit, in the order of the last axis.
        tiers: the tier that computes each exit.
    """
    if gold_prob.shape != correct.shape or gold_prob.ndim != 3:
        raise ValueError(f"gold_prob {gold_prob.shape} and correct {correct.shape} must both be "
                         "(epochs, samples, exits)")
    epochs, n, k = gold_prob.shape
    if len(sample_ids) != n or len(labels) != n or len(exit_layers) != k or len(tiers) != k:
        raise ValueError("sample_ids/labels must match the samples axis and exit_layers/tiers the exits axis")
    if epochs < 1:
        raise ValueError("cartography needs at least one epoch of training dynamics")
    frames = []
    for j, layer in enumerate(exit_layers):
        p = gold_prob[:, :, j].astype(np.float64)
        frames.append(pd.DataFrame({
            "sample_id": np.asarray(sample_ids, np.int64),
            "label": np.asarray(labels, np.int64),
            "exit_layer": np.full(n, layer, np.int64),
            "tier": tiers[j],
            "confidence": p.mean(axis=0),
            "variability": p.std(axis=0),
            "correctness": correct[:, :, j].mean(axis=0),
            "epochs": np.full(n, epochs, np.int64),
            "gold_prob_by_epoch": list(p.T.astype(np.float32)),
        }))
    return pd.concat(frames, ignore_index=True)[list(CARTOGRAPHY_COLUMNS)]
