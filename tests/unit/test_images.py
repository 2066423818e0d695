"""Image sources for ResNet bundles: IDX files, class folders, digits."""

import gzip
import struct

import numpy as np
import pytest

from testbed.build.images import load_image_dataset, read_idx
from testbed.core.errors import BuildError


def _write_idx(path, arr):
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_idx_directory_like_fashion_mnist(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 28, 28))
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", imgs)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([0, 1, 2, 1, 0]))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs[:2])
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([2, 2]))
    d = load_image_dataset(f"idx:{tmp_path}")
    assert d.images.shape == (7, 1, 28, 28) and d.images.dtype == np.float32
    np.testing.assert_allclose(d.images[0, 0], imgs[0] / 255.0, rtol=1e-6)
    assert d.label.tolist() == [0, 1, 2, 1, 0, 2, 2] and d.labels == ["0", "1", "2"]


def test_idx_errors(tmp_path):
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x01abcd"))
    with pytest.raises(BuildError, match="not an unsigned-byte IDX"):
        read_idx(tmp_path / "bad.gz")
    with pytest.raises(BuildError, match="no train-/t10k-images"):
        load_image_dataset(f"idx:{tmp_path}")


def test_image_folder_one_directory_per_class(tmp_path):
    from PIL import Image

    for cls, value in (("cat", 10), ("dog", 200)):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (20, 12), (value, value, value)).save(tmp_path / cls / f"{i}.png")
    d = load_image_dataset(str(tmp_path), image_size=16)
    assert d.images.shape == (4, 3, 16, 16) and d.labels == ["cat", "dog"] and d.label.tolist() == [0, 0, 1, 1]
    assert d.images[3].mean() == pytest.approx(200 / 255, abs=1e-6)


def test_digits_ship_with_scikit_learn():
    d = load_image_dataset("builtin:digits")
    assert d.images.shape == (1797, 1, 8, 8) and 0 <= d.images.min() and d.images.max() <= 1 and len(d.labels) == 10


def test_saved_huggingface_image_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    imgs = [Image.new("L", (10, 10), v) for v in (0, 255, 128)]
    feats = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["dark", "light"])})
    ds = datasets.Dataset.from_dict({"img": imgs, "y": [0, 1, 1]}, features=feats)
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "ds"))
    d = load_image_dataset(str(tmp_path / "ds"), image_size=8, image_column="img", label_column="y")
    assert d.images.shape == (3, 1, 8, 8) and d.labels == ["dark", "light"] and d.label.tolist() == [0, 1, 1]
    assert d.images[1].min() == pytest.approx(1.0) and d.images[0].max() == pytest.approx(0.0)
    with pytest.raises(BuildError, match=r"no column\(s\) \['image', 'label'\].*\['img', 'y'\]"):
        load_image_dataset(str(tmp_path / "ds"))
