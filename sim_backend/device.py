"""The twin as a :class:`tc_hw.model.device.Device`: the ideal board.

Same channel map as the emulated board of the same description, but every element is exactly
``nominal gain * applied volts`` (applied = 16-bit DAC quantised), node values are read without
ADC gain, offset, noise or quantisation, and the temperature is the description's.  Registered
as the ``twin`` backend (entry point group ``tc_hw.backends``).
"""

from __future__ import annotations

import numpy as np

from tc_hw.model.device import Acquisition, Channel, ChannelMap
from tc_hw.model.params import Params

from . import twin
from .emulator.acquire import time_step
from .emulator.board import board_from_name_or_path, quantize

__all__ = ["TwinDevice"]


class TwinDevice:
    """An in-process ideal board driven by the twin.

    Parameters
    ----------
    board : str, optional
        Board description: a preset name or a TOML path (default: the default emulated board).
    seed : int
        Seed of the first acquisition; each acquisition uses the next seed.
    """

    technology: str

    def __init__(self, board: str | None = None, seed: int = 0):
        desc = board_from_name_or_path(board)
        self.description = desc
        self.network = desc.network
        lay = desc.layout()
        self._slices = lay.slices
        self.channel_map = ChannelMap(
            tuple(
                Channel(i, str(k), int(a), int(b), float(lo), float(hi), float(g), float(p))
                for i, (k, a, b, lo, hi, g, p) in enumerate(
                    zip(lay.kind, lay.a, lay.b, lay.vmin, lay.vmax, lay.gain, lay.period)
                )
            )
        )
        self.identity = f"TWIN,{desc.model},{desc.serial},tc-hw"
        self.technology = desc.technology
        self.n_nodes = self.network.n_nodes
        self.n_inputs = self.network.n_inputs
        self.n_channels = len(self.channel_map)
        self.tau_s = desc.tau_s
        self.rail_v = desc.rail_v
        self._volts = np.zeros(len(self.channel_map))
        self._inputs: np.ndarray | None = None
        self._armed = False
        self._seed = int(seed)

    # ------------------------------------------------------------------ Device protocol
    def temperature(self) -> float:
        """The description's board temperature, kelvin (the ideal board does not drift)."""
        return float(self.description.temperature_k)

    def set_channels(self, volts, start: int = 0) -> None:
        """Apply channel voltages; unsafe values raise ``UnsafeVoltageError`` and change nothing."""
        v = self.channel_map.check(volts, start)
        self._volts[start : start + len(v)] = quantize(v)

    def get_channels(self, start: int = 0, n: int | None = None) -> np.ndarray:
        """Applied (quantised) voltages of channels ``start .. start + n - 1``."""
        n = len(self._volts) - start if n is None else n
        return self._volts[start : start + n].copy()

    def set_inputs(self, inputs) -> None:
        """Input batch, shape (P, K)."""
        self._inputs = self.params().check_inputs(inputs)

    def arm(self, on: bool = True) -> None:
        self._armed = bool(on)

    def close(self) -> None:
        self.arm(False)

    def reseed(self, seed: int) -> None:
        """Seed of the next acquisition (the twin's noise is reproducible; a board's is not).

        Loops that must repeat exactly after a resume (``tc-hw refine --resume``) call this with
        a seed derived from the run seed, the generation and the candidate."""
        self._seed = int(seed)

    def params(self) -> Params:
        """What the board computes now: element values ``gain * applied volts``; the mobility is
        the description's (``1 / tau_node_factors`` per node when the board file gives them)."""
        v = self._volts * self.channel_map.gain
        s = self._slices
        return Params(
            self.network,
            v[s["Q"]],
            np.zeros(self.n_nodes),
            v[s["R"]],
            v[s["B"]],
            v[s["C"]],
            v[s["W"]],
            mobility=self.description.node_mobility(),
            require_stable=False,
        )

    def acquire(self, mode: str, time_s: float, samples: int, nodes=None) -> Acquisition:
        """Reset or serial acquisition of ``samples`` readings per input; volts (P, M, n)."""
        if not self._armed:
            raise RuntimeError("outputs are off: arm the device first (tc_hw.model.device.armed)")
        if self._inputs is None:
            raise RuntimeError("no input batch: call set_inputs first")
        t_tau = float(time_s) / self.tau_s
        dt = time_step(t_tau)
        kwargs = dict(dt=dt, seed=self._seed, nodes=nodes, rail=self.rail_v)
        if mode == "reset":
            run = twin.sample_reset(self.params(), self._inputs, t_tau, samples, **kwargs)
        elif mode == "serial":
            run = twin.sample_serial(self.params(), self._inputs, t_tau, samples, **kwargs)
        else:
            raise ValueError(f"mode must be 'reset' or 'serial', got {mode!r}")
        self._seed += 1
        return Acquisition(
            run.x[:, :, 0, :].astype(np.float64),
            run.nodes,
            mode,
            float(time_s),
            self._inputs.copy(),
            temperature_k=self.temperature(),
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
