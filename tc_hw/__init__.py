"""tc-hw: control stack for analog thermodynamic computers.

The core package: what a program is (:class:`Network` topology and :class:`Params` values in one
sign convention), parameter files, the :class:`~tc_hw.device.Device` protocol every backend
satisfies, tasks and the command line.  Backends live in ``sim_backend`` (the numerical twin and
the board emulator) and ``drivers`` (real boards); ``calibration`` maps parameters to volts.
"""

__version__ = "0.1.0"

from .network import Network, all_to_all, layered, thermo_gd_network
from .params import Params, ParamsError
from .files import load_params, save_params

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
