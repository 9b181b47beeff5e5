"""MNIST from the original gzipped idx files in ``<shared>/data/mnist`` (never downloaded).

Every file is checked against the folder's ``MD5SUMS`` before it is parsed; parsed arrays are
cached in-process and returned read-only.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

from .paths import shared_dir

__all__ = ["load_mnist", "mnist_dir", "MNIST_FILES"]

#: File names of each split: (images, labels).
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_ALIASES = {"train": "train", "training": "train", "test": "test", "t10k": "test"}
_IMAGES_MAGIC = 0x00000803  # uint8, 3 dims
_LABELS_MAGIC = 0x00000801  # uint8, 1 dim


def mnist_dir() -> Path:
    """Default MNIST folder, ``<shared>/data/mnist``."""
    return shared_dir() / "data" / "mnist"


def _read_md5sums(root: Path) -> dict[str, str]:
    """Parse ``root/MD5SUMS`` (``<hex digest>  <file name>`` per line) into {name: digest}."""
    path = root / "MD5SUMS"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the MNIST folder needs an MD5SUMS file")
    sums = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[0]) != 32:
            raise ValueError(f"{path}, line {n}: expected '<md5>  <file name>', got {line!r}")
        sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def _decompress(path: Path, expected_md5: str) -> bytes:
    """Read ``path``, check its MD5 against ``expected_md5`` and gunzip it."""
    raw = path.read_bytes()
    digest = hashlib.md5(raw).hexdigest()
    if digest != expected_md5:
        raise ValueError(
            f"MD5 mismatch for {path.name}: got {digest}, MD5SUMS says {expected_md5} "
            f"(the file in {path.parent} is corrupt or not the original)"
        )
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path.name} is not a valid (complete) gzip file: {exc}") from exc


def _parse_idx(data: bytes, name: str, magic: int, ndim: int) -> np.ndarray:
    """Parse an uncompressed big-endian uint8 idx file with the given magic and dimension count."""
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{name}: truncated idx header ({len(data)} bytes)")
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        raise ValueError(f"{name}: bad idx magic 0x{got:08x}, expected 0x{magic:08x}")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    payload = memoryview(data)[4 + 4 * ndim :]
    expected = int(np.prod(dims, dtype=np.int64))
    if len(payload) != expected:
        raise ValueError(
            f"{name}: payload is {len(payload)} bytes but the header dims {dims} need {expected} "
            "(file truncated or malformed)"
        )
    return np.frombuffer(payload, np.uint8).reshape(dims)


@functools.lru_cache(maxsize=8)
def _load_file(path: str, mtime_ns: int, size: int, expected_md5: str, kind: str) -> np.ndarray:
    """Cached, verified parse of one idx file (``mtime_ns``/``size`` only key the cache)."""
    p = Path(path)
    data = _decompress(p, expected_md5)
    if kind == "images":
        arr = _parse_idx(data, p.name, _IMAGES_MAGIC, 3)
        if arr.shape[1:] != (28, 28):
            raise ValueError(f"{p.name}: images are {arr.shape[1:]}, expected (28, 28)")
    else:
        arr = _parse_idx(data, p.name, _LABELS_MAGIC, 1)
        if arr.size and arr.max() > 9:
            raise ValueError(f"{p.name}: labels must be 0..9, found {int(arr.max())}")
    arr = arr.copy()
    arr.setflags(write=False)
    return arr


def _load(root: Path, name: str, sums: dict[str, str], kind: str) -> np.ndarray:
    """Verify and parse ``root/name`` (via the cache)."""
    path = (root / name).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (MNIST is never downloaded; put the idx files there)")
    if name not in sums:
        raise ValueError(f"{name} is not listed in {root / 'MD5SUMS'}")
    st = path.stat()
    return _load_file(str(path), st.st_mtime_ns, st.st_size, sums[name], kind)


def load_mnist(split: str = "test", root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load an MNIST split.

    Parameters
    ----------
    split : {"test", "train"}
        ``"test"`` (alias ``"t10k"``) is the 10,000-digit set, ``"train"`` the 60,000-digit one.
    root : path, optional
        Folder holding the gzipped idx files and ``MD5SUMS``; default ``<shared>/data/mnist``.

    Returns
    -------
    images : ndarray of uint8, shape (n, 28, 28), grey levels 0..255, read-only
    labels : ndarray of uint8, shape (n,), classes 0..9, read-only

    Raises
    ------
    ValueError
        On an MD5 mismatch, a malformed or truncated file, or images and labels of different count.
    FileNotFoundError
        If a file or ``MD5SUMS`` is missing.
    """
    key = _ALIASES.get(str(split).lower())
    if key is None:
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    root = Path(root) if root is not None else mnist_dir()
    sums = _read_md5sums(root)
    image_file, label_file = MNIST_FILES[key]
    images = _load(root, image_file, sums, "images")
    labels = _load(root, label_file, sums, "labels")
    if len(images) != len(labels):
        raise ValueError(f"{image_file} has {len(images)} images but {label_file} has {len(labels)} labels")
    return images, labels
