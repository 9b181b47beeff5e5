"""Loaders for the project's shared, read-only data sets (MNIST, published thermo_gd parameters).

Nothing is ever downloaded: files are found under :func:`shared_dir` (``$TC_HW_SHARED`` or
``<repo>/../shared``) and verified before use.
"""

from .mnist import load_mnist
from .paths import shared_dir
from .thermo_gd import ThermoGD, load_published, normalise_images, read_thermo_gd, to_params

__all__ = [
    "shared_dir",
    "load_mnist",
    "ThermoGD",
    "read_thermo_gd",
    "to_params",
    "normalise_images",
    "load_published",
]
