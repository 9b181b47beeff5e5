"""Published parameters of the 784/64/10 thermodynamic computer (Whitelam, arXiv 2509.15324).

``parameters.dat`` is a flat list of 63,143 numbers; its layout is documented in
``<shared>/data/thermo_gd/README.md``.  In that code's convention (spins: 784 clamped inputs,
then 64 hidden, then 10 outputs) the energy is::

    V = sum_s (J2 x_s^2 + J4 x_s^4) + sum_s b_s x_s + sum_(pairs) J_st x_s x_t

so a positive bias pushes a spin *down*.  :func:`to_params` converts to the project convention
(:mod:`tc_hw.model.params`) on :func:`tc_hw.model.network.thermo_gd_network`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..network import Network, thermo_gd_network
from ..params import Params, from_ising_convention
from .paths import shared_dir

__all__ = [
    "ThermoGD",
    "read_thermo_gd",
    "to_params",
    "normalise_images",
    "load_published",
    "thermo_gd_path",
    "N_PARAMETERS",
    "PIXEL_MEAN",
    "PIXEL_SECOND_MOMENT",
    "TEST_SET_NORM",
]

N_PIXELS, N_HIDDEN, N_OUT = 784, 64, 10
N_SPINS = N_PIXELS + N_HIDDEN + N_OUT  # 858

# Block offsets into the flat vector (README, "Layout of parameters.dat").
_INPUT_INPUT = 0  # 2 * 784 lattice bonds, all zero
_INPUT_HIDDEN = 1568  # 784 x 64, row-major
_HIDDEN_HIDDEN = 51744  # strict lower triangle of 64 x 64, tril_indices(64, -1) order
_HIDDEN_OUTPUT = 53760  # 64 x 10, row-major
_OUTPUT_OUTPUT = 54400  # strict lower triangle of 10 x 10
_INPUT_OUTPUT = 54445  # 784 x 10, row-major
_BIASES = 62285  # 858 biases by spin index
#: Number of values in ``parameters.dat`` (62,285 couplings + 858 biases).
N_PARAMETERS = _BIASES + N_SPINS  # 63143

#: Training-set pixel mean of ``p = pixel / 255``.
PIXEL_MEAN = 0.13066
#: Training-set second moment ``E[p^2]`` hard-coded in the original code.
PIXEL_SECOND_MOMENT = 0.112003
#: Common L2 norm of the standardised t10k digits (the largest one in that set).
TEST_SET_NORM = 44.483989


@dataclass(frozen=True, eq=False)
class ThermoGD:
    """The published couplings and biases, in the original (thermo_gd) sign convention.

    All arrays are float64 and read-only; node blocks are pixels ``i`` (0..783, ``28*row+col``),
    hidden ``h`` (0..63) and outputs ``o`` (0..9, the digit class).

    Attributes
    ----------
    input_hidden : (784, 64)  ``J[i, h]``
    hidden_hidden : (64, 64)  symmetric, zero diagonal
    hidden_output : (64, 10)  ``J[h, o]``
    output_output : (10, 10)  symmetric, zero diagonal
    input_output : (784, 10)  ``J[i, o]``
    hidden_bias : (64,)  ``b_h``
    output_bias : (10,)  ``b_o``
    """

    input_hidden: np.ndarray
    hidden_hidden: np.ndarray
    hidden_output: np.ndarray
    output_output: np.ndarray
    input_output: np.ndarray
    hidden_bias: np.ndarray
    output_bias: np.ndarray

    def node_coupling_matrix(self) -> np.ndarray:
        """Symmetric (74, 74) coupling matrix between hidden (0..63) and output (64..73) nodes."""
        m = np.zeros((N_HIDDEN + N_OUT, N_HIDDEN + N_OUT))
        m[:N_HIDDEN, :N_HIDDEN] = self.hidden_hidden
        m[:N_HIDDEN, N_HIDDEN:] = self.hidden_output
        m[N_HIDDEN:, :N_HIDDEN] = self.hidden_output.T
        m[N_HIDDEN:, N_HIDDEN:] = self.output_output
        return m

    def input_matrix(self) -> np.ndarray:
        """Pixel-to-node couplings, shape (784, 74): hidden columns then output columns."""
        return np.hstack([self.input_hidden, self.input_output])

    def node_bias(self) -> np.ndarray:
        """Biases ``b`` of the 74 nodes (hidden then outputs), shape (74,)."""
        return np.concatenate([self.hidden_bias, self.output_bias])


def thermo_gd_path() -> Path:
    """Default location of the published file, ``<shared>/data/thermo_gd/parameters.dat``."""
    return shared_dir() / "data" / "thermo_gd" / "parameters.dat"


def _symmetric_from_tril(values: np.ndarray, n: int) -> np.ndarray:
    """(n, n) symmetric matrix, zero diagonal, from its strict lower triangle in tril order."""
    m = np.zeros((n, n))
    a, b = np.tril_indices(n, -1)
    m[a, b] = values
    m[b, a] = values
    return m


def _read_numbers(path: Path) -> np.ndarray:
    """All whitespace-separated numbers of ``path`` as float64, checked for count and finiteness."""
    tokens = Path(path).read_text().split()
    try:
        flat = np.array(tokens, dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{path}: not a list of numbers ({exc})") from exc
    if flat.size != N_PARAMETERS:
        raise ValueError(f"{path}: expected exactly {N_PARAMETERS} numbers, found {flat.size}")
    bad = np.flatnonzero(~np.isfinite(flat))
    if bad.size:
        raise ValueError(
            f"{path}: {bad.size} non-finite value(s) (NaN/inf) at positions {bad[:10].tolist()}"
        )
    return flat


def read_thermo_gd(path: str | Path) -> ThermoGD:
    """Parse ``parameters.dat`` into a :class:`ThermoGD`.

    Raises ``ValueError`` unless the file holds exactly 63,143 finite numbers; warns
    (``UserWarning``) if the unused input-input couplings or input biases are not all zero.
    """
    path = Path(path)
    flat = _read_numbers(path)
    for name, start, stop in (
        ("input-input couplings", _INPUT_INPUT, _INPUT_HIDDEN),
        ("input biases", _BIASES, _BIASES + N_PIXELS),
    ):
        nonzero = np.count_nonzero(flat[start:stop])
        if nonzero:
            warnings.warn(
                f"{path}: {nonzero} of the {name} are nonzero; they are ignored (inputs are clamped)",
                stacklevel=2,
            )
    arrays = dict(
        input_hidden=flat[_INPUT_HIDDEN:_HIDDEN_HIDDEN].reshape(N_PIXELS, N_HIDDEN),
        hidden_hidden=_symmetric_from_tril(flat[_HIDDEN_HIDDEN:_HIDDEN_OUTPUT], N_HIDDEN),
        hidden_output=flat[_HIDDEN_OUTPUT:_OUTPUT_OUTPUT].reshape(N_HIDDEN, N_OUT),
        output_output=_symmetric_from_tril(flat[_OUTPUT_OUTPUT:_INPUT_OUTPUT], N_OUT),
        input_output=flat[_INPUT_OUTPUT:_BIASES].reshape(N_PIXELS, N_OUT),
        hidden_bias=flat[_BIASES + N_PIXELS : _BIASES + N_PIXELS + N_HIDDEN],
        output_bias=flat[_BIASES + N_PIXELS + N_HIDDEN :],
    )
    for key, value in arrays.items():
        value = np.array(value, dtype=np.float64)  # own, contiguous copy
        value.setflags(write=False)
        arrays[key] = value
    return ThermoGD(**arrays)


def to_params(tg: ThermoGD, J2: float = 1.0, J4: float = 1.0, kT: float = 1.0) -> Params:
    """Convert to :class:`tc_hw.model.params.Params` on :func:`tc_hw.model.network.thermo_gd_network`.

    ``J2``, ``J4`` (energy units) are the same on every node, as in the original code (not stored
    in the file); biases change sign (``B = -b``), couplings and crossbar weights keep theirs.
    The inputs of the result are the normalised pixels of :func:`normalise_images`, shape (P, 784).
    """
    net: Network = thermo_gd_network()
    a, b = net.edges.T
    k, j = net.crossbar.T
    return from_ising_convention(
        net,
        J2,
        J4,
        tg.node_bias(),
        tg.node_coupling_matrix()[a, b],
        tg.input_matrix()[k, j],
        kT=kT,
    )


def normalise_images(images_uint8, norm: float | None = TEST_SET_NORM) -> np.ndarray:
    """Input spins for MNIST digits, the README's recipe.

    ``p = pixel / 255``, ``z = (p - 0.13066) / sqrt(0.112003 - 0.13066**2)``, then each digit
    is rescaled to L2 norm ``norm`` (dimensionless; ``None``: the largest norm in the given set).

    Parameters
    ----------
    images_uint8 : array_like, shape (n, 28, 28) or (n, 784)
        Grey levels 0..255.
    norm : float or None

    Returns
    -------
    ndarray of float64, shape (n, 784), pixel order ``s = 28*row + col``.
    """
    img = np.asarray(images_uint8)
    if img.ndim == 3 and img.shape[1:] == (28, 28):
        img = img.reshape(len(img), N_PIXELS)
    if img.ndim != 2 or img.shape[1] != N_PIXELS:
        raise ValueError(f"images must have shape (n, 28, 28) or (n, 784), got {np.shape(images_uint8)}")
    if img.size and (img.min() < 0 or img.max() > 255):
        raise ValueError("images must hold grey levels in 0..255")
    sigma = np.sqrt(PIXEL_SECOND_MOMENT - PIXEL_MEAN**2)
    z = (img.astype(np.float64) / 255.0 - PIXEL_MEAN) / sigma
    norms = np.linalg.norm(z, axis=1)
    if (norms == 0).any():
        raise ValueError("an image standardises to all zeros and cannot be rescaled")
    if norm is None:
        if not len(norms):
            raise ValueError("norm=None needs at least one image")
        norm = float(norms.max())
    elif not (np.isfinite(norm) and norm > 0):
        raise ValueError(f"norm must be a positive finite number or None, got {norm}")
    return z * (norm / norms)[:, None]


def load_published(path: str | Path | None = None, **kwargs) -> Params:
    """Published parameters as :class:`~tc_hw.model.params.Params`.

    ``path`` defaults to ``<shared>/data/thermo_gd/parameters.dat``; ``kwargs`` (``J2``, ``J4``,
    ``kT``) go to :func:`to_params`.
    """
    return to_params(read_thermo_gd(thermo_gd_path() if path is None else path), **kwargs)
