"""tc-hw: control stack for analog thermodynamic computers.

The core package: what a program is (:class:`Network` topology and :class:`Params` values in one
sign convention), parameter files, the :class:`~tc_hw.model.device.Device` protocol every backend
satisfies, tasks and the command line.  Backends live in ``sim_backend`` (the numerical twin and
the board emulator) and ``drivers`` (real boards); ``calibration`` maps parameters to volts.
"""

from .model import __version__

from .model.network import Network, all_to_all, layered, thermo_gd_network
from .model.params import Params, ParamsError
from .model.files import load_params, save_params

__all__ = [
    "Network",
    "Params",
    "ParamsError",
    "layered",
    "all_to_all",
    "thermo_gd_network",
    "load_params",
    "save_params",
    "__version__",
]
