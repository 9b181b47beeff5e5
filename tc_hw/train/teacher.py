"""The digital MNIST teacher of Onsager-Machlup training (Whitelam, arXiv 2509.15324, "teacher #1").

A fully connected 784-32-32-10 network, ``tanh`` / ``tanh`` / ``softmax``, in plain numpy
(float32, one batched matmul per layer).  It works on MNIST digits normalised as for the
published computer (:func:`tc_hw.model.tasks.mnist_inputs`: standardised pixels, every digit rescaled
to L2 norm 44.483989); :meth:`Teacher.predict_proba` also accepts raw ``uint8`` grey levels and
normalises them itself.

Its 32 + 32 hidden activations and 10 softmax outputs are the targets of the 64 hidden and
10 output nodes of the student computer (:mod:`tc_hw.train.om`).  The same network is the
classifier that labels generated digits (:meth:`Teacher.predict_proba`).

Files are HDF5 (no pickle)::

    /            attrs: format = "tc-hw/teacher", format_version = 1, layers = [784, 32, 32, 10],
                        plus free-form training settings and accuracies (strings or numbers)
    /W0, /b0     float32 (784, 32), (32,)
    /W1, /b1     float32 (32, 32), (32,)
    /W2, /b2     float32 (32, 10), (10,)

Defaults of :func:`train_teacher` (Adam, lr 2e-3 with cosine decay, batch 128, 40 epochs,
decoupled weight decay 0.3, random 1-pixel translations): 97.84 % on the MNIST test set in
54-86 s on 2 shared cores (one BLAS thread).  Without translations 96.1-96.7 %; the paper's SGD
recipe (lr 0.2, wd 1e-4, batch 256) gave 95.8 % after 300 epochs on these inputs (their large
norm makes lr 0.2 too big).  The weight decay also makes the hidden units less saturated,
which is what the OM student imitates best (see :mod:`tc_hw.train.om`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..model import provenance, seeds
from ..model.data.thermo_gd import normalise_images
from ..model.tasks import mnist_inputs

__all__ = ["Teacher", "train_teacher", "get_teacher", "TeacherError", "FORMAT", "LAYERS"]

FORMAT = "tc-hw/teacher"
FORMAT_VERSION = 1
#: Layer widths of the teacher of arXiv 2509.15324.
LAYERS = (784, 32, 32, 10)


class TeacherError(ValueError):
    """A teacher file or weight set is malformed."""


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass(eq=False)
class Teacher:
    """A trained (or initial) tanh/tanh/softmax network.

    Attributes
    ----------
    weights : list of ndarray
        ``[W0 (784, 32), W1 (32, 32), W2 (32, 10)]``, float32; layer ``l`` computes
        ``a_{l+1} = act(a_l @ W_l + b_l)``.
    biases : list of ndarray
        ``[b0 (32,), b1 (32,), b2 (10,)]``, float32.
    info : dict
        Training settings and accuracies (saved as file attributes).
    """

    weights: list
    biases: list
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        if len(self.weights) != 3 or len(self.biases) != 3:
            raise TeacherError("a teacher has exactly 3 weight matrices and 3 bias vectors")
        w = [np.ascontiguousarray(np.asarray(a, dtype=np.float32)) for a in self.weights]
        b = [np.ascontiguousarray(np.asarray(a, dtype=np.float32)) for a in self.biases]
        for l, (wl, bl) in enumerate(zip(w, b)):
            shape = (LAYERS[l], LAYERS[l + 1])
            if wl.shape != shape or bl.shape != (LAYERS[l + 1],):
                raise TeacherError(f"layer {l}: weights must be {shape} and bias ({shape[1]},), got {wl.shape}, {bl.shape}")
            if not (np.isfinite(wl).all() and np.isfinite(bl).all()):
                raise TeacherError(f"layer {l} has non-finite weights")
        self.weights, self.biases = w, b

    # ------------------------------------------------------------------ construction
    @classmethod
    def init(cls, seed: int = 0, input_rms: float = 1.0) -> "Teacher":
        """Random Glorot-style initial weights; ``input_rms`` is the rms of one input pixel."""
        rng = seeds.rng(seed, seeds.TEACHER_INIT)
        ws, bs = [], []
        for l in range(3):
            fan_in, fan_out = LAYERS[l], LAYERS[l + 1]
            scale = np.sqrt(2.0 / (fan_in + fan_out)) / (input_rms if l == 0 else 1.0)
            ws.append(rng.normal(0.0, scale, (fan_in, fan_out)).astype(np.float32))
            bs.append(np.zeros(fan_out, np.float32))
        return cls(ws, bs)

    # ------------------------------------------------------------------ inference
    @staticmethod
    def check_images(images) -> np.ndarray:
        """``images`` as float32 (P, 784): normalised inputs, or ``uint8`` grey levels (normalised here).

        Accepts shapes (P, 784), (P, 28, 28), (784,) or (28, 28).  Raises ``ValueError`` on a bad
        shape or non-finite values."""
        a = np.asarray(images)
        if a.ndim == 1 or (a.ndim == 2 and a.shape == (28, 28)):
            a = a[None]
        if a.ndim == 3 and a.shape[1:] == (28, 28):
            a = a.reshape(len(a), 784)
        if a.ndim != 2 or a.shape[1] != 784:
            raise ValueError(f"images must have shape (P, 784) or (P, 28, 28), got {np.shape(images)}")
        if a.dtype == np.uint8:

            a = normalise_images(a)
        a = np.asarray(a, dtype=np.float32)
        if not np.isfinite(a).all():
            raise ValueError("images contain NaN or infinite values")
        return a

    def _forward(self, x: np.ndarray):
        h1 = np.tanh(x @ self.weights[0] + self.biases[0])
        h2 = np.tanh(h1 @ self.weights[1] + self.biases[1])
        p = _softmax(h2 @ self.weights[2] + self.biases[2])
        return h1, h2, p

    def activations(self, images, batch: int = 8192):
        """Hidden and output activations: ``(hidden (P, 64), output (P, 10))``, float32.

        ``hidden`` is the first tanh layer (columns 0..31) then the second (32..63), in [-1, 1];
        ``output`` the softmax probabilities."""
        x = self.check_images(images)
        hid = np.empty((len(x), 64), np.float32)
        out = np.empty((len(x), 10), np.float32)
        for s in range(0, len(x), batch):
            h1, h2, p = self._forward(x[s : s + batch])
            hid[s : s + batch, :32] = h1
            hid[s : s + batch, 32:] = h2
            out[s : s + batch] = p
        return hid, out

    def predict_proba(self, images) -> np.ndarray:
        """Class probabilities, shape (P, 10), float32 (rows sum to 1).

        ``images``: normalised inputs as :func:`tc_hw.model.tasks.mnist_inputs` gives (float, (P, 784)
        or (P, 28, 28)), or raw ``uint8`` grey levels, which are normalised first."""
        return self.activations(images)[1]

    def predict(self, images) -> np.ndarray:
        """Most probable class of each image, shape (P,), int64."""
        return np.argmax(self.predict_proba(images), axis=1).astype(np.int64)

    def accuracy(self, images, labels) -> float:
        """Top-1 accuracy (fraction) on ``images`` with integer ``labels``."""
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        pred = self.predict(images)
        if len(pred) != len(labels):
            raise ValueError(f"{len(pred)} images for {len(labels)} labels")
        return float((pred == labels).mean())

    # ------------------------------------------------------------------ files
    def save(self, path) -> Path:
        """Write the teacher to an HDF5 file at ``path`` (replaced if it exists)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            f.attrs.update(format=FORMAT, format_version=FORMAT_VERSION, layers=np.asarray(LAYERS, np.int64))
            for k, v in self.info.items():
                f.attrs[f"info_{k}"] = v if isinstance(v, (int, float, str, np.number)) else str(v)
            for l in range(3):
                f[f"W{l}"] = self.weights[l]
                f[f"b{l}"] = self.biases[l]
            provenance.write_entry(f, writer="teacher")
        return path

    @classmethod
    def load(cls, path) -> "Teacher":
        """Read a teacher written by :meth:`save`; raises :class:`TeacherError` for other files."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no teacher file at {path}")
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise TeacherError(f"{path}: not a readable HDF5 file ({e})") from None
        with f:
            if f.attrs.get("format") != FORMAT:
                raise TeacherError(f"{path}: format attribute is {f.attrs.get('format')!r}, expected {FORMAT!r}")
            try:
                ws = [f[f"W{l}"][()] for l in range(3)]
                bs = [f[f"b{l}"][()] for l in range(3)]
            except KeyError as e:
                raise TeacherError(f"{path}: missing dataset {e}") from None
            info = {}
            for k, v in f.attrs.items():
                if k.startswith("info_"):
                    info[k[5:]] = v.item() if isinstance(v, np.generic) else v
        return cls(ws, bs, info)


_RR, _CC = np.divmod(np.arange(784), 28)


def _translate(xb: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Images (B, 784) translated cyclically by ``d[0]`` rows and ``d[1]`` columns each."""
    src = ((_RR[None] - d[0][:, None]) % 28) * 28 + (_CC[None] - d[1][:, None]) % 28
    return np.take_along_axis(xb, src, axis=1)


def train_teacher(
    images,
    labels,
    *,
    epochs: int = 40,
    batch: int = 128,
    lr: float = 2e-3,
    optimizer: str = "adam",
    weight_decay: float = 0.3,
    seed: int = 0,
    shift: int = 1,
    val=None,
    progress: bool = True,
    threads: int | None = 1,
) -> Teacher:
    """Train a :class:`Teacher` by minibatch cross-entropy.

    Parameters
    ----------
    images : array_like, shape (P, 784)
        Normalised inputs (:func:`tc_hw.model.tasks.mnist_inputs`).
    labels : array_like of int, shape (P,)
    epochs, batch : int
        Passes over the data and minibatch size.
    lr : float
        Learning rate (peak; a cosine decay to 0 over the run is applied).
    optimizer : {"adam", "sgd"}
        Adam (weight decay decoupled, AdamW) or plain SGD (weight decay as L2 in the gradient,
        the paper's lr 0.2 / wd 1e-4 / batch 256 / 300 epochs recipe).
    weight_decay : float
    shift : int
        Data augmentation: every minibatch image is translated by a random number of pixels in
        ``-shift..shift`` along each axis (cyclically; MNIST digits have a 4-pixel blank border).
    seed : int
        Initial weights and minibatch order depend only on the seed.
    val : tuple (images, labels), optional
        Held-out data whose accuracy is reported on the progress bar and stored in ``info``.
    progress : bool
        tqdm progress bar on stderr.
    threads : int or None
        BLAS threads during training (default 1: the minibatch matmuls are small, and extra
        BLAS threads are up to 20x *slower* on a shared, loaded machine); ``None``: leave as is.
    """
    if threads is None:
        return _train(images, labels, epochs, batch, lr, optimizer, weight_decay, seed, shift, val, progress)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=int(threads), user_api="blas"):
        return _train(images, labels, epochs, batch, lr, optimizer, weight_decay, seed, shift, val, progress)


def _train(images, labels, epochs, batch, lr, optimizer, weight_decay, seed, shift, val, progress) -> Teacher:
    from tqdm import tqdm

    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    if epochs < 1 or batch < 1 or not (lr > 0):
        raise ValueError("epochs and batch must be >= 1 and lr > 0")
    x = Teacher.check_images(images)
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    if len(y) != len(x):
        raise ValueError(f"{len(x)} images for {len(y)} labels")
    if y.min() < 0 or y.max() > 9:
        raise ValueError("labels must be digits 0..9")
    rng = seeds.rng(seed, seeds.TEACHER_DATA)
    net = Teacher.init(seed, input_rms=float(np.sqrt(np.mean(x.astype(np.float64) ** 2))))
    params = net.weights + net.biases  # views: updated in place
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    b1, b2, eps = 0.9, 0.999, 1e-8
    onehot = np.eye(10, dtype=np.float32)
    n = len(x)
    steps_per_epoch = -(-n // batch)
    total = epochs * steps_per_epoch
    step = 0
    t0 = time.perf_counter()
    bar = tqdm(range(epochs), desc="teacher 784-32-32-10", unit="epoch", disable=not progress, file=sys.stderr)
    loss_hist = []
    for _ in bar:
        order = rng.permutation(n)
        run_loss = 0.0
        for s in range(0, n, batch):
            idx = order[s : s + batch]
            xb, yb = x[idx], onehot[y[idx]]
            if shift:
                xb = _translate(xb, rng.integers(-shift, shift + 1, (2, len(idx))))
            h1, h2, p = net._forward(xb)
            run_loss += float(-np.log(np.maximum(p[np.arange(len(idx)), y[idx]], 1e-12)).sum())
            # backward (mean cross-entropy)
            d3 = (p - yb) / np.float32(len(idx))
            g_w2 = h2.T @ d3
            d2 = (d3 @ net.weights[2].T) * (1 - h2 * h2)
            g_w1 = h1.T @ d2
            d1 = (d2 @ net.weights[1].T) * (1 - h1 * h1)
            g_w0 = xb.T @ d1
            grads = [g_w0, g_w1, g_w2, d1.sum(0), d2.sum(0), d3.sum(0)]
            rate = lr * 0.5 * (1 + np.cos(np.pi * step / total))
            step += 1
            for k, (prm, g) in enumerate(zip(params, grads)):
                if optimizer == "sgd":
                    if weight_decay and k < 3:
                        g = g + weight_decay * prm
                    prm -= np.float32(rate) * g
                else:
                    m[k] *= b1
                    m[k] += (1 - b1) * g
                    v[k] *= b2
                    v[k] += (1 - b2) * g * g
                    mh = m[k] / (1 - b1**step)
                    vh = v[k] / (1 - b2**step)
                    prm -= np.float32(rate) * (mh / (np.sqrt(vh) + eps) + (weight_decay * prm if k < 3 else 0))
        loss_hist.append(run_loss / n)
        post = {"loss": f"{loss_hist[-1]:.4f}"}
        if val is not None and progress:
            post["val"] = f"{net.accuracy(*val):.4f}"
        bar.set_postfix(post)
    net.info = {
        "optimizer": optimizer,
        "epochs": epochs,
        "batch": batch,
        "lr": lr,
        "weight_decay": weight_decay,
        "shift": shift,
        "seed": seed,
        "n_train": n,
        "train_seconds": time.perf_counter() - t0,
        "train_accuracy": net.accuracy(x, y),
        "final_loss": loss_hist[-1],
    }
    if val is not None:
        net.info["val_accuracy"] = net.accuracy(*val)
    return net


def get_teacher(path=None, *, images=None, labels=None, progress: bool = True, test: bool = True, **kwargs) -> Teacher:
    """Load the teacher cached at ``path`` or train one (on the MNIST training set by default).

    If ``path`` is given and exists it is loaded (training settings are then ignored); otherwise
    a teacher is trained with ``kwargs`` (see :func:`train_teacher`) and, if ``path`` is given,
    saved there.  With ``test`` the MNIST test accuracy is stored as ``info["test_accuracy"]``.
    """
    if path is not None and Path(path).exists():
        return Teacher.load(path)

    if images is None:
        images, labels = mnist_inputs("train")
    net = train_teacher(images, labels, progress=progress, **kwargs)
    if test:
        net.info["test_accuracy"] = net.accuracy(*mnist_inputs("test"))
    if path is not None:
        net.save(path)
    return net
