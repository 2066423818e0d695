"""Labelled images for ResNet bundles: scikit-learn digits, Fashion-MNIST IDX files, image folders, HF datasets.

Sources (the ``data`` of a ResNet spec):

- ``builtin:digits``: scikit-learn's ``load_digits`` (1,797 images, 8x8, 10 classes; no download);
- ``builtin:fashion-mnist``: the gzipped IDX files of Debian's ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``), or ``idx:DIR`` for any directory holding
  ``train-images-idx3-ubyte.gz`` and friends (MNIST-style);
- a local folder ``ROOT/<class>/*.png|jpg`` (resized to ``image_size``);
- a Hugging Face dataset name or ``save_to_disk`` directory with an image and a label column.

Images come back as float32 arrays (N, C, H, W) scaled to [0, 1].
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from testbed.core.errors import BuildError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_LABELS = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                  "ankle boot"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclass(frozen=True)
class ImageDataset:
    """Images (N, C, H, W) in [0, 1] with integer labels and the class names they index."""

    images: np.ndarray
    label: np.ndarray
    labels: list[str]
    source: str


def read_idx(path: Path) -> np.ndarray:
    """Read one (optionally gzipped) IDX file: the MNIST container format."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise BuildError(f"--data: cannot read IDX file {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise BuildError(f"--data: {path} is not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise BuildError(f"--data: {path} holds {data.size} values, its header says {dims}")
    return data.reshape(dims)


def _idx_dir(root: Path, source: str) -> ImageDataset:
    parts = []
    for prefix in ("train", "t10k"):
        imgs = [root / f"{prefix}-images-idx3-ubyte{s}" for s in (".gz", "")]
        labs = [root / f"{prefix}-labels-idx1-ubyte{s}" for s in (".gz", "")]
        img = next((p for p in imgs if p.is_file()), None)
        lab = next((p for p in labs if p.is_file()), None)
        if img and lab:
            parts.append((read_idx(img), read_idx(lab)))
    if not parts:
        hint = " (`apt-get install dataset-fashion-mnist`)" if root == FASHION_DIR else ""
        raise BuildError(f"--data {source}: no train-/t10k-images-idx3-ubyte[.gz] with labels in {root}{hint}")
    x = np.concatenate([p[0] for p in parts]).astype(np.float32)[:, None] / 255.0
    y = np.concatenate([p[1] for p in parts]).astype(np.int64)
    names = FASHION_LABELS if root == FASHION_DIR or source == "builtin:fashion-mnist" else [
        str(i) for i in range(int(y.max()) + 1)]
    return ImageDataset(x, y, names, str(root))


def _folder(root: Path, size: int) -> ImageDataset:
    from PIL import Image

    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise BuildError(f"--data {root}: an image folder needs one sub-directory per class (at least two), "
                         f"found {classes}")
    xs, ys = [], []
    for i, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                with Image.open(f) as opened:
                    im = opened.convert("RGB").resize((size, size))
                    xs.append(np.asarray(im, np.float32).transpose(2, 0, 1) / 255.0)
                ys.append(i)
    if not xs:
        raise BuildError(f"--data {root}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    return ImageDataset(np.stack(xs), np.array(ys, np.int64), classes, str(root))


def _hf(source: str, image_column: str, label_column: str, size: int) -> ImageDataset:
    try:
        import datasets
    except ImportError as e:
        raise BuildError(f"--data {source}: Hugging Face datasets need `pip install datasets`") from e
    try:
        ds: Any = datasets.load_from_disk(source) if Path(source).is_dir() else datasets.load_dataset(
            *source.split(":", 1))
    except Exception as e:  # datasets raises many types
        raise BuildError(f"--data {source}: cannot load it as a Hugging Face dataset ({type(e).__name__}: {e})") from e
    parts = list(ds.values()) if isinstance(ds, datasets.DatasetDict) else [ds]
    cols = parts[0].column_names
    missing = [c for c in (image_column, label_column) if c not in cols]
    if missing:
        raise BuildError(f"--data {source}: no column(s) {missing}; its columns are {cols}")
    feat = parts[0].features[label_column]
    names = list(feat.names) if isinstance(feat, datasets.ClassLabel) else None
    xs, ys = [], []
    for part in parts:
        for row in part:
            if int(row[label_column]) < 0:
                continue
            im = row[image_column].convert("RGB" if row[image_column].mode not in ("L", "1") else "L")
            arr = np.asarray(im.resize((size, size)), np.float32) / 255.0
            xs.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
            ys.append(int(row[label_column]))
    y = np.array(ys, np.int64)
    return ImageDataset(np.stack(xs), y, names or [str(i) for i in range(int(y.max()) + 1)], source)


def load_image_dataset(source: str, image_size: int = 28, image_column: str = "image",
                       label_column: str = "label") -> ImageDataset:
    """Load ``source`` (see the module docstring)."""
    if source == "builtin:digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return ImageDataset((d.images / 16.0).astype(np.float32)[:, None], d.target.astype(np.int64),
                            [str(i) for i in range(10)], "sklearn.datasets.load_digits")
    if source == "builtin:fashion-mnist":
        return _idx_dir(FASHION_DIR, source)
    if source.startswith("idx:"):
        return _idx_dir(Path(source[4:]), source)
    path = Path(source)
    if path.is_dir() and not (path / "dataset_dict.json").exists() and not (path / "dataset_info.json").exists():
        return _folder(path, image_size)
    return _hf(source, image_column, label_column, image_size)
