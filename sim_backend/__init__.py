"""The numerical twin of a thermodynamic computer and the board emulator built on it.

* :mod:`sim_backend.twin` - sampling (reset, serial, moments, heat) with the compiled kernel;
* :mod:`sim_backend.kernel` - the numba Langevin kernel; :mod:`sim_backend.rng` its generator;
* :mod:`sim_backend.reference` - small pure-numpy integrators the kernel is tested against;
* :mod:`sim_backend.device` - the twin as an ideal :class:`tc_hw.model.device.Device`;
* :mod:`sim_backend.emulator` - a separate process speaking the board manual over TCP and a pty.
"""

from .twin import reset_moments, sample_reset, sample_serial

__all__ = ["sample_reset", "sample_serial", "reset_moments"]
