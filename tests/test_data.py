"""Tests of the shared-data loaders (tc_hw.model.data): MNIST idx files and the thermo_gd parameters."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from tc_hw.model.data import (
    load_mnist,
    load_published,
    normalise_images,
    read_thermo_gd,
    shared_dir,
    to_params,
)
from tc_hw.model.data.mnist import MNIST_FILES
from tc_hw.model.data.thermo_gd import N_PARAMETERS, TEST_SET_NORM
from tc_hw.model.network import thermo_gd_network

try:
    SHARED = shared_dir()
except FileNotFoundError:  # pragma: no cover - machines without the shared folder
    SHARED = None
pytestmark = pytest.mark.skipif(
    SHARED is None or not (SHARED / "data" / "mnist").is_dir(), reason="shared data not available"
)

MNIST_DIR = SHARED / "data" / "mnist" if SHARED else None
PARAMS_FILE = SHARED / "data" / "thermo_gd" / "parameters.dat" if SHARED else None


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def test_set():
    return load_mnist("test")


@pytest.fixture(scope="module")
def flat():
    """The raw 63,143 numbers, parsed independently of the loader."""
    return np.array(PARAMS_FILE.read_text().split(), dtype=float)


@pytest.fixture(scope="module")
def tg():
    return read_thermo_gd(PARAMS_FILE)


@pytest.fixture(scope="module")
def params():
    return load_published()


def _mnist_copy(tmp_path: Path) -> Path:
    """Copy the test-split files and MD5SUMS into ``tmp_path``."""
    for name in (*MNIST_FILES["test"], "MD5SUMS"):
        shutil.copy(MNIST_DIR / name, tmp_path / name)
    return tmp_path


def _replace_file(root: Path, name: str, raw: bytes) -> None:
    """Write ``raw`` as ``root/name`` and update MD5SUMS so that the checksum passes."""
    (root / name).write_bytes(raw)
    lines = []
    for line in (root / "MD5SUMS").read_text().splitlines():
        digest, fname = line.split()
        if fname == name:
            digest = hashlib.md5(raw).hexdigest()
        lines.append(f"{digest}  {fname}")
    (root / "MD5SUMS").write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- paths
def test_shared_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("TC_HW_SHARED", str(tmp_path))
    assert shared_dir() == tmp_path.resolve()
    monkeypatch.setenv("TC_HW_SHARED", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="TC_HW_SHARED"):
        shared_dir()


# ----------------------------------------------------------------------------- MNIST
def test_mnist_test_split(test_set):
    images, labels = test_set
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert labels[:9].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5]
    assert set(np.unique(labels).tolist()) == set(range(10))
    assert images.max() == 255 and images.min() == 0


def test_mnist_cached_and_read_only(test_set):
    images, _ = load_mnist("t10k")
    assert images is test_set[0]
    with pytest.raises(ValueError):
        images[0, 0, 0] = 1


def test_mnist_bad_split():
    with pytest.raises(ValueError, match="split"):
        load_mnist("validation")


def test_mnist_md5_mismatch(tmp_path):
    root = _mnist_copy(tmp_path)
    name = MNIST_FILES["test"][1]
    raw = bytearray((root / name).read_bytes())
    raw[-20] ^= 0xFF
    (root / name).write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=f"MD5 mismatch for {name}"):
        load_mnist("test", root=root)


def test_mnist_root_copy_loads(tmp_path, test_set):
    images, labels = load_mnist("test", root=_mnist_copy(tmp_path))
    assert np.array_equal(images, test_set[0]) and np.array_equal(labels, test_set[1])


def test_mnist_missing_md5sums(tmp_path):
    root = _mnist_copy(tmp_path)
    (root / "MD5SUMS").unlink()
    with pytest.raises(FileNotFoundError, match="MD5SUMS"):
        load_mnist("test", root=root)


def test_mnist_truncated_gzip(tmp_path):
    root = _mnist_copy(tmp_path)
    name = MNIST_FILES["test"][1]
    _replace_file(root, name, (root / name).read_bytes()[:-100])
    with pytest.raises(ValueError, match="gzip"):
        load_mnist("test", root=root)


def test_mnist_bad_magic(tmp_path):
    root = _mnist_copy(tmp_path)
    name = MNIST_FILES["test"][1]
    data = bytearray(gzip.decompress((root / name).read_bytes()))
    data[3] = 0x03  # looks like an images file
    _replace_file(root, name, gzip.compress(bytes(data)))
    with pytest.raises(ValueError, match="magic"):
        load_mnist("test", root=root)


def test_mnist_truncated_payload(tmp_path):
    root = _mnist_copy(tmp_path)
    name = MNIST_FILES["test"][0]
    data = gzip.decompress((root / name).read_bytes())[:-784]
    _replace_file(root, name, gzip.compress(data, compresslevel=1))
    with pytest.raises(ValueError, match="payload"):
        load_mnist("test", root=root)


def test_mnist_truncated_header(tmp_path):
    root = _mnist_copy(tmp_path)
    name = MNIST_FILES["test"][1]
    _replace_file(root, name, gzip.compress(b"\x00\x00\x08\x01\x00"))
    with pytest.raises(ValueError, match="header"):
        load_mnist("test", root=root)


def test_mnist_count_mismatch(tmp_path):
    root = _mnist_copy(tmp_path)
    name = MNIST_FILES["test"][1]
    data = gzip.decompress((root / name).read_bytes())
    n = 9999
    short = data[:4] + n.to_bytes(4, "big") + data[8 : 8 + n]
    _replace_file(root, name, gzip.compress(short))
    with pytest.raises(ValueError, match="labels"):
        load_mnist("test", root=root)


# ----------------------------------------------------------------------------- thermo_gd layout
def test_thermo_gd_shapes_and_sanity_values(tg):
    assert tg.input_hidden.shape == (784, 64)
    assert tg.hidden_hidden.shape == (64, 64)
    assert tg.hidden_output.shape == (64, 10)
    assert tg.output_output.shape == (10, 10)
    assert tg.input_output.shape == (784, 10)
    assert tg.hidden_bias.shape == (64,) and tg.output_bias.shape == (10,)
    np.testing.assert_allclose(tg.hidden_bias[:2], [0.240012, -0.443373])
    np.testing.assert_allclose(
        tg.output_bias,
        [0.274152, 0.316167, 0.358277, 0.284748, 0.395536, 0.335305, 0.27374, 0.251073, 0.530837, 0.299289],
    )


def test_thermo_gd_symmetry(tg):
    for m in (tg.hidden_hidden, tg.output_output):
        assert np.array_equal(m, m.T)
        assert not np.diag(m).any()
        assert np.count_nonzero(m) == m.shape[0] * (m.shape[0] - 1)


def test_thermo_gd_positions(tg, flat):
    """Spot-check the README's position formulas against the parsed blocks."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        i, h, o = rng.integers(784), rng.integers(64), rng.integers(10)
        a = rng.integers(1, 64)
        b = rng.integers(a)
        c = rng.integers(1, 10)
        d = rng.integers(c)
        assert tg.input_hidden[i, h] == flat[1568 + 64 * i + h]
        assert tg.hidden_hidden[a, b] == tg.hidden_hidden[b, a] == flat[51744 + a * (a - 1) // 2 + b]
        assert tg.hidden_output[h, o] == flat[53760 + 10 * h + o]
        assert tg.output_output[c, d] == flat[54400 + c * (c - 1) // 2 + d]
        assert tg.input_output[i, o] == flat[54445 + 10 * i + o]
    assert np.array_equal(tg.hidden_bias, flat[63069:63133])
    assert np.array_equal(tg.output_bias, flat[63133:])


def _repeated_rows(m: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``m`` equal to at least one other row."""
    _, inverse, counts = np.unique(m, axis=0, return_inverse=True, return_counts=True)
    return np.flatnonzero(counts[inverse.ravel()] > 1)


def test_thermo_gd_untrained_pixels_align(tg):
    """68 pixels share one (untrained) row, at the same indices in both input blocks.

    They include every pixel that is blank in all training digits, which confirms the alignment.
    (The README says "0 in every test digit"; in fact 116 pixels are blank in the test set and
    67 in the training set.)
    """
    rows_h, rows_o = _repeated_rows(tg.input_hidden), _repeated_rows(tg.input_output)
    assert len(rows_h) == 68 and np.array_equal(rows_h, rows_o)
    assert (tg.input_hidden[rows_h] == tg.input_hidden[rows_h[0]]).all()
    train_images, _ = load_mnist("train")
    blank = np.flatnonzero(train_images.reshape(-1, 784).max(0) == 0)
    assert len(blank) == 67 and set(blank) <= set(rows_h)


def test_thermo_gd_arrays_read_only(tg):
    with pytest.raises(ValueError):
        tg.hidden_bias[0] = 0.0


def _write_numbers(path: Path, values) -> Path:
    path.write_text(" ".join(str(v) for v in values) + " ")
    return path


@pytest.mark.parametrize("count", [N_PARAMETERS - 1, N_PARAMETERS + 1])
def test_thermo_gd_wrong_count(tmp_path, flat, count):
    values = np.resize(flat, count)
    with pytest.raises(ValueError, match=f"found {count}"):
        read_thermo_gd(_write_numbers(tmp_path / "p.dat", values))


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_thermo_gd_non_finite(tmp_path, flat, bad):
    tokens = PARAMS_FILE.read_text().split()
    tokens[40000] = bad
    with pytest.raises(ValueError, match="non-finite.*40000"):
        read_thermo_gd(_write_numbers(tmp_path / "p.dat", tokens))


def test_thermo_gd_not_numbers(tmp_path):
    tokens = PARAMS_FILE.read_text().split()
    tokens[5] = "abc"
    with pytest.raises(ValueError, match="not a list of numbers"):
        read_thermo_gd(_write_numbers(tmp_path / "p.dat", tokens))


@pytest.mark.parametrize("position", [3, 62285 + 100])
def test_thermo_gd_warns_on_unused_nonzero(tmp_path, position):
    tokens = PARAMS_FILE.read_text().split()
    tokens[position] = "0.5"
    with pytest.warns(UserWarning, match="nonzero"):
        read_thermo_gd(_write_numbers(tmp_path / "p.dat", tokens))


def test_thermo_gd_published_has_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_thermo_gd(PARAMS_FILE)


# ----------------------------------------------------------------------------- conversion
def _thermo_gd_energy(flat, pixels, x, J2=1.0, J4=1.0) -> float:
    """Energy in the original convention, built straight from the flat file and the README.

    Self terms only over the free spins (the clamped inputs add a constant).
    """
    n = 858
    j = np.zeros((n, n))
    i, h = np.meshgrid(np.arange(784), np.arange(64), indexing="ij")
    j[i, 784 + h] = flat[1568 + 64 * i + h]
    a, b = np.tril_indices(64, -1)
    j[784 + a, 784 + b] = flat[51744 + a * (a - 1) // 2 + b]
    h, o = np.meshgrid(np.arange(64), np.arange(10), indexing="ij")
    j[784 + h, 848 + o] = flat[53760 + 10 * h + o]
    a, b = np.tril_indices(10, -1)
    j[848 + a, 848 + b] = flat[54400 + a * (a - 1) // 2 + b]
    i, o = np.meshgrid(np.arange(784), np.arange(10), indexing="ij")
    j[i, 848 + o] = flat[54445 + 10 * i + o]
    s = np.concatenate([pixels, x])  # each unordered pair appears once in j
    return float(J2 * (x**2).sum() + J4 * (x**4).sum() + flat[62285:] @ s + s @ j @ s)


@pytest.mark.parametrize("J2,J4", [(1.0, 1.0), (0.7, 1.3)])
def test_conversion_energy_matches_original_convention(params, flat, test_set, J2, J4):
    p = params if (J2, J4) == (1.0, 1.0) else load_published(J2=J2, J4=J4)
    assert p.network.same_as(thermo_gd_network())
    pixels = normalise_images(test_set[0][:3])
    rng = np.random.default_rng(1)
    for k in range(3):
        x = rng.normal(size=74)
        expected = _thermo_gd_energy(flat, pixels[k], x, J2, J4)
        np.testing.assert_allclose(p.energy(x, inputs=pixels[k]), expected, rtol=1e-10, atol=1e-10)


def test_conversion_force_sign(params, tg):
    """At x = 0 the force is -b - I @ J: a positive bias pushes the node down."""
    pixels = np.zeros(784)
    np.testing.assert_allclose(params.force(np.zeros(74), pixels), -tg.node_bias())
    np.testing.assert_allclose(params.bias, -tg.node_bias())


def test_to_params_kT(tg):
    assert to_params(tg, kT=0.25).kT == 0.25


# ----------------------------------------------------------------------------- normalisation
def test_normalise_common_norm(test_set):
    x = normalise_images(test_set[0][:500])
    assert x.shape == (500, 784) and x.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), TEST_SET_NORM, rtol=1e-12)
    assert TEST_SET_NORM == 44.483989


def test_normalise_max_norm(test_set):
    x = normalise_images(test_set[0], norm=None)
    assert abs(np.linalg.norm(x, axis=1).max() - 44.48399) < 1e-4


def test_normalise_pixel_order(test_set):
    """Direction of each vector is the standardised image, row-major."""
    img = test_set[0][0]
    z = (img.astype(float) / 255 - 0.13066) / np.sqrt(0.112003 - 0.13066**2)
    x = normalise_images(img.reshape(1, 784), norm=1.0)[0]
    np.testing.assert_allclose(x, z.ravel() / np.linalg.norm(z))
    assert x[28 * 10 + 5] == pytest.approx(z[10, 5] / np.linalg.norm(z))


def test_normalise_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        normalise_images(np.zeros((2, 27, 28), np.uint8))
    with pytest.raises(ValueError, match="0..255"):
        normalise_images(np.full((1, 784), 300))
    with pytest.raises(ValueError, match="norm"):
        normalise_images(np.zeros((1, 784), np.uint8), norm=-1.0)


# ----------------------------------------------------------------------------- end to end
def test_noise_free_accuracy(params, test_set):
    """kT = 0 Euler dynamics (200 steps of 1e-3) on 2000 test digits give ~92 % accuracy."""
    images, labels = test_set
    n = 2000
    inputs = normalise_images(images[:n])
    field = params.field(inputs)
    c = params.coupling_matrix()
    q, r = params.quadratic, params.quartic
    x = np.zeros_like(field)
    for _ in range(200):
        x = x + 1e-3 * (field - x * (2 * q + 4 * r * x * x) - x @ c)
    predicted = x[:, 64:74].argmax(axis=1)
    accuracy = float((predicted == labels[:n]).mean())
    assert 0.89 <= accuracy <= 0.96, accuracy
