"""Board description (TOML), channel layout, DAC quantisation, and the hidden board model.

A *board file* (TOML, read with :mod:`tomllib`) says what the board is; :class:`Board` adds the
hidden truth drawn from the board seed (:mod:`.nonideal`) and turns applied voltages into the
:class:`tc_hw.model.params.Params` that the twin integrates.

Board file schema (every key optional; defaults are those of :data:`DEFAULT_BOARD_TOML`)::

    name = "default"              # free text
    model = "TC-RLC32-EMU"        # *IDN? model field
    serial = "EMU0001"            # *IDN? serial field
    firmware = "emu-1.0"          # *IDN? firmware field
    technology = "RLC"            # "RLC" or "JJ"
    seed = 20250101               # hidden truth and acquisition noise (--seed overrides)
    tau_s = 1e-6                  # node time constant, seconds (default 1e-6 RLC, 1e-9 JJ)
    rail_v = 3.0                  # hidden node rails, |x| <= rail_v volts
    adc_range_v = 4.0             # ADC full scale (ACQ:RANGE?), volts
    temperature_k = 300.0         # mean board temperature = tempco reference, kelvin
    capacity_readings = 134217728 # ACQ:CAP?: most readings (P x M x digitized nodes) per INIT
    work_limit_element_steps = 4e9  # most P x M x steps x channels per INIT (default: unlimited)
    tau_node_factors = [1.0, ...] # optional: per-node time constant tau_i = factor_i * tau_s
                                  # (N positive numbers; mobility_i = 1 / factor_i in units of tau)
    age_h = 0.0                   # optional: hours the board has already run when the emulator
                                  # starts (its clock starts there: element drift and the
                                  # temperature cycle go on from age_h; 0 = a fresh start)
    # zoo = 12345                 # a board drawn from a seed (sim_backend.emulator.zoo); only
                                  # name, serial, seed, [faults] and [nonideal] (overrides of
                                  # the drawn sizes, e.g. adc_inl = 0 to study one effect) may
                                  # stand beside it

    [topology]                    # exactly one of the three forms
    layered = { width = 8, depth = 4, inputs = 1 }          # tc_hw.model.network.layered
    # all_to_all = { hidden = 64, outputs = 10, inputs = 784 }  # tc_hw.model.network.all_to_all
    # nodes = 3, edges = [[0, 1], [1, 2]], inputs = 1, crossbar = [[0, 0]], outputs = [2]

    [channels]                    # per-kind safe range, nominal gain (value per volt), period (V)
    Q = { vmin = -2.5, vmax = 5.0, gain = 4.0 }    # Q in [-10, 20]
    R = { vmin = 0.0,  vmax = 5.0, gain = 4.0 }    # R in [0, 20]
    B = { vmin = -5.0, vmax = 5.0, gain = 4.0 }    # B in [-20, 20]
    C = { vmin = -5.0, vmax = 5.0, gain = 4.0 }    # C in [-20, 20]
    W = { vmin = -5.0, vmax = 5.0, gain = 4.0 }    # W in [-20, 20]
    # JJ defaults: Q, R as above; B, C, W gain 8/V, period 12 V (monotonic branch |v| < 3 V)

    [nonideal]                    # sizes, see sim_backend.emulator.nonideal.NonIdeal
    ideal = false                 # true: every size below defaults to 0
    gain_spread = 0.20            # +-20 % uniform
    offset = 0.05                 # +-5 % of the channel span, volts
    nonlinearity = 0.03           # +-3 % of full scale
    tempco_per_k = 0.005          # +-0.5 %/K
    temp_drift_k = 0.5            # board temperature swing, kelvin
    temp_period_s = 900.0
    adc_gain_spread = 0.03        # +-3 %
    adc_offset_v = 0.020          # +-20 mV
    adc_noise_v = 0.001           # 1 mV rms readout noise
    adc_noise_spread = 0.25       # per-node noise spread

    [faults]                      # see sim_backend.emulator.faults (--fault-rate overrides rate)
    rate = 0.0
    kinds = ["delay", "truncate", "drop"]
    delay_s = [0.2, 1.0]

Gains were chosen so that the programs of the papers fit with margin after a +-20 % gain spread:
beta = 10 programs have Q = R = 10 (2.5 V of 5 V) and couplings of order +-10 (2.5 V of +-5 V).
Channel order is the manual's: all Q (node 0..N-1), all R, all B, C (pairs a<b row-major), W
(line-major).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from tc_hw.model.network import Network, all_to_all, layered
from tc_hw.model.params import Params

from . import nonideal as ni
from .faults import FaultSpec

__all__ = [
    "KINDS",
    "KindSpec",
    "Layout",
    "BoardDescription",
    "BoardFileError",
    "Board",
    "load_board",
    "parse_board",
    "board_from_name_or_path",
    "quantize",
    "DAC_LSB_V",
    "DAC_FULL_SCALE_V",
    "DEFAULT_BOARD_TOML",
    "PRESETS",
]

KINDS = ("Q", "R", "B", "C", "W")

#: DAC: 16-bit two's complement over +-10 V.
DAC_FULL_SCALE_V = 10.0
DAC_LSB_V = 20.0 / 65536.0
_DAC_MAX_V = 32767 * DAC_LSB_V


def quantize(volts) -> np.ndarray:
    """Voltages the 16-bit DAC actually applies: ``rint(v / LSB) * LSB`` (nearest, ties to even),
    codes saturating at -32768..32767.  ``LSB = 20 V / 65536``.  Returns float64."""
    code = np.clip(np.rint(np.asarray(volts, np.float64) / DAC_LSB_V), -32768, 32767)
    return code * DAC_LSB_V


DEFAULT_BOARD_TOML = """\
# Default emulated board: layered 8 x 4 (32 nodes), one input line feeding layer 0, RLC.
name = "default"
model = "TC-RLC32-EMU"
serial = "EMU0001"
firmware = "emu-1.0"
technology = "RLC"
seed = 20250101
tau_s = 1e-6
rail_v = 3.0
adc_range_v = 4.0
temperature_k = 300.0

[topology]
layered = { width = 8, depth = 4, inputs = 1 }

[channels]
Q = { vmin = -2.5, vmax = 5.0, gain = 4.0 }
R = { vmin = 0.0, vmax = 5.0, gain = 4.0 }
B = { vmin = -5.0, vmax = 5.0, gain = 4.0 }
C = { vmin = -5.0, vmax = 5.0, gain = 4.0 }
W = { vmin = -5.0, vmax = 5.0, gain = 4.0 }

[nonideal]
gain_spread = 0.20
offset = 0.05
nonlinearity = 0.03
tempco_per_k = 0.005
temp_drift_k = 0.5
temp_period_s = 900.0
adc_gain_spread = 0.03
adc_offset_v = 0.020
adc_noise_v = 0.001
adc_noise_spread = 0.25

[faults]
rate = 0.0
kinds = ["delay", "truncate", "drop"]
delay_s = [0.2, 1.0]
"""

#: Built-in boards selectable by name with ``--board NAME``.
PRESETS = {
    "default": DEFAULT_BOARD_TOML,
    "ideal": """\
name = "ideal"
model = "TC-RLC32-EMU"
[topology]
layered = { width = 8, depth = 4, inputs = 1 }
[nonideal]
ideal = true
""",
    "jj": """\
name = "jj-default"
technology = "JJ"
[topology]
layered = { width = 8, depth = 4, inputs = 1 }
""",
    "layered96": """\
name = "layered-24x4"
[topology]
layered = { width = 24, depth = 4, inputs = 1 }
""",
}


class BoardFileError(ValueError):
    """A board file is malformed; the message names the key."""


@dataclass(frozen=True)
class KindSpec:
    """Nominal description of one element kind: safe range (volts), gain (value/V), period (V)."""

    vmin: float
    vmax: float
    gain: float
    period: float = 0.0


_RLC_KINDS = {
    "Q": KindSpec(-2.5, 5.0, 4.0),
    "R": KindSpec(0.0, 5.0, 4.0),
    "B": KindSpec(-5.0, 5.0, 4.0),
    "C": KindSpec(-5.0, 5.0, 4.0),
    "W": KindSpec(-5.0, 5.0, 4.0),
}
_JJ_KINDS = {
    "Q": KindSpec(-2.5, 5.0, 4.0),
    "R": KindSpec(0.0, 5.0, 4.0),
    "B": KindSpec(-5.0, 5.0, 8.0, 12.0),
    "C": KindSpec(-5.0, 5.0, 8.0, 12.0),
    "W": KindSpec(-5.0, 5.0, 8.0, 12.0),
}


@dataclass(frozen=True)
class Layout:
    """Channel arrays in channel-map order, each of shape (n_channels,).

    ``kind`` (str), ``a``, ``b`` (int; ``b = -1`` for node kinds), ``vmin``, ``vmax`` (volts),
    ``gain`` (value per volt), ``period`` (volts, 0 = not periodic); ``slices`` maps each kind to
    its channel range.
    """

    n_nodes: int
    n_inputs: int
    kind: np.ndarray
    a: np.ndarray
    b: np.ndarray
    vmin: np.ndarray
    vmax: np.ndarray
    gain: np.ndarray
    period: np.ndarray
    slices: dict

    @property
    def n_channels(self) -> int:
        return len(self.kind)

    @classmethod
    def build(cls, network: Network, kinds: dict) -> "Layout":
        n = network.n_nodes
        node = np.arange(n)
        rows = [
            ("Q", node, np.full(n, -1)),
            ("R", node, np.full(n, -1)),
            ("B", node, np.full(n, -1)),
            ("C", network.edges[:, 0], network.edges[:, 1]),
            ("W", network.crossbar[:, 0], network.crossbar[:, 1]),
        ]
        kind, a, b, slices, pos = [], [], [], {}, 0
        for k, ra, rb in rows:
            kind += [k] * len(ra)
            a.append(np.asarray(ra, np.int64))
            b.append(np.asarray(rb, np.int64))
            slices[k] = slice(pos, pos + len(ra))
            pos += len(ra)
        kind = np.array(kind, dtype="<U1")

        def per(attr):
            return np.array([getattr(kinds[k], attr) for k in kind], np.float64)

        return cls(n, network.n_inputs, kind, np.concatenate(a), np.concatenate(b),
                   per("vmin"), per("vmax"), per("gain"), per("period"), slices)

    def map_csv(self) -> str:
        """The ``BOARD:MAP?`` payload: ``ch,kind,a,b,vmin,vmax,gain,period`` rows, each ending ``\\n``."""
        return "".join(
            f"{i},{k},{a},{b},{lo!r},{hi!r},{g!r},{p!r}\n"
            for i, (k, a, b, lo, hi, g, p) in enumerate(
                zip(self.kind.tolist(), self.a.tolist(), self.b.tolist(), self.vmin.tolist(),
                    self.vmax.tolist(), self.gain.tolist(), self.period.tolist())
            )
        )


@dataclass(frozen=True)
class BoardDescription:
    """Everything a board file says (see the module docstring for the schema)."""

    network: Network
    technology: str = "RLC"
    tau_s: float = 1e-6
    seed: int = 20250101
    kinds: dict = field(default_factory=lambda: dict(_RLC_KINDS))
    nonideal: ni.NonIdeal = field(default_factory=ni.NonIdeal)
    faults: FaultSpec = field(default_factory=FaultSpec)
    rail_v: float = 3.0
    adc_range_v: float = 4.0
    temperature_k: float = 300.0
    name: str = "default"
    model: str = "TC-RLC32-EMU"
    serial: str = "EMU0001"
    firmware: str = "emu-1.0"
    #: ACQ:CAP?: the most readings (P x M x digitized nodes) one acquisition may hold
    capacity_readings: int = 2**27
    #: most integration work of one acquisition, P x M x steps x channels (None: unlimited)
    work_limit_element_steps: float | None = None
    tau_node_factors: tuple | None = None
    zoo_seed: int | None = None
    #: hours on the board's clock at emulator start (drift and temperature go on from there)
    age_h: float = 0.0

    def layout(self) -> Layout:
        return Layout.build(self.network, self.kinds)

    def node_mobility(self):
        """Mobility of the board equation in units of ``1/tau_s``: ``1.0``, or per node
        ``1 / tau_node_factors`` (float64 shape (N,))."""
        if self.tau_node_factors is None:
            return 1.0
        return 1.0 / np.asarray(self.tau_node_factors, np.float64)


# ----------------------------------------------------------------------------- parsing
_TOP_KEYS = {
    "name", "model", "serial", "firmware", "technology", "seed", "tau_s", "rail_v", "adc_range_v",
    "temperature_k", "topology", "channels", "nonideal", "faults", "capacity_readings",
    "work_limit_element_steps", "tau_node_factors", "zoo", "age_h",
}
#: Keys a board file may hold next to ``zoo = SEED``.
_ZOO_KEYS = {"zoo", "name", "serial", "seed", "faults", "nonideal"}


def _num(table, key, default, where, *, positive=False, integer=False):
    if key not in table:
        return default
    v = table[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        raise BoardFileError(f"{where}{key} must be a finite number, got {v!r}")
    if integer:
        if not isinstance(v, int) or v < 0:
            raise BoardFileError(f"{where}{key} must be a non-negative integer, got {v!r}")
        return int(v)
    if positive and v <= 0:
        raise BoardFileError(f"{where}{key} must be > 0, got {v!r}")
    return float(v)


def _int_table(t, keys, where):
    unknown = sorted(set(t) - set(keys))
    missing = [k for k in keys if k not in t]
    if unknown or missing:
        raise BoardFileError(f"{where}: needs exactly the keys {list(keys)} (unknown {unknown}, missing {missing})")
    out = []
    for k in keys:
        v = t[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise BoardFileError(f"{where}.{k} must be a non-negative integer, got {v!r}")
        out.append(v)
    return out


def _topology(t: dict) -> Network:
    forms = [f for f in ("layered", "all_to_all", "nodes") if f in t]
    if len(forms) != 1:
        raise BoardFileError("[topology] needs exactly one of: layered = {...}, all_to_all = {...}, or nodes = N with edges/crossbar")
    try:
        if forms[0] == "layered":
            if set(t) != {"layered"}:
                raise BoardFileError(f"[topology]: unexpected keys {sorted(set(t) - {'layered'})} next to layered")
            w, d, k = _int_table(t["layered"], ("width", "depth", "inputs"), "[topology].layered")
            return layered(w, d, k)
        if forms[0] == "all_to_all":
            if set(t) != {"all_to_all"}:
                raise BoardFileError(f"[topology]: unexpected keys {sorted(set(t) - {'all_to_all'})} next to all_to_all")
            h, o, k = _int_table(t["all_to_all"], ("hidden", "outputs", "inputs"), "[topology].all_to_all")
            return all_to_all(h, o, k)
        unknown = sorted(set(t) - {"nodes", "edges", "inputs", "crossbar", "outputs"})
        if unknown:
            raise BoardFileError(f"[topology]: unknown keys {unknown}")
        n = t["nodes"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise BoardFileError(f"[topology].nodes must be a positive integer, got {n!r}")
        return Network(n, t.get("edges", []), int(t.get("inputs", 0)), t.get("crossbar", []), t.get("outputs", []))
    except BoardFileError:
        raise
    except (ValueError, TypeError) as e:
        raise BoardFileError(f"[topology]: {e}") from None


def _kinds(t: dict, technology: str) -> dict:
    kinds = dict(_JJ_KINDS if technology == "JJ" else _RLC_KINDS)
    unknown = sorted(set(t) - set(KINDS))
    if unknown:
        raise BoardFileError(f"[channels]: unknown kinds {unknown}; kinds are {list(KINDS)}")
    for k, spec in t.items():
        where = f"[channels].{k}."
        if not isinstance(spec, dict):
            raise BoardFileError(f"[channels].{k} must be a table {{vmin, vmax, gain, period}}")
        bad = sorted(set(spec) - {"vmin", "vmax", "gain", "period"})
        if bad:
            raise BoardFileError(f"[channels].{k}: unknown keys {bad}")
        base = kinds[k]
        kinds[k] = KindSpec(
            _num(spec, "vmin", base.vmin, where),
            _num(spec, "vmax", base.vmax, where),
            _num(spec, "gain", base.gain, where),
            _num(spec, "period", base.period, where),
        )
    for k, s in kinds.items():
        where = f"[channels].{k}"
        if not (s.vmin <= s.vmax):
            raise BoardFileError(f"{where}: vmin {s.vmin} > vmax {s.vmax}")
        if s.vmin < -DAC_FULL_SCALE_V or s.vmax > _DAC_MAX_V:
            raise BoardFileError(f"{where}: safe range [{s.vmin}, {s.vmax}] V exceeds the DAC range [-10, {_DAC_MAX_V}] V")
        if s.period < 0:
            raise BoardFileError(f"{where}: period must be >= 0, got {s.period}")
        if s.period > 0 and technology != "JJ":
            raise BoardFileError(f"{where}: periodic elements (period > 0) exist only on JJ boards")
    return kinds


def parse_board(text: str, source: str = "<board>") -> BoardDescription:
    """Parse board-file TOML text into a :class:`BoardDescription` (raises :class:`BoardFileError`)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BoardFileError(f"{source}: not valid TOML: {e}") from None
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise BoardFileError(f"{source}: unknown top-level keys {unknown}; known: {sorted(_TOP_KEYS)}")
    if "zoo" in doc:
        return _zoo_board(doc, source)
    tech = doc.get("technology", "RLC")
    if tech not in ("RLC", "JJ"):
        raise BoardFileError(f"{source}: technology must be \"RLC\" or \"JJ\", got {tech!r}")
    for key in ("name", "model", "serial", "firmware"):
        if key in doc and (not isinstance(doc[key], str) or any(c in doc[key] for c in ',;"\n')):
            raise BoardFileError(f"{source}: {key} must be a string without , ; \" or newlines")
    try:
        network = _topology(doc.get("topology", {"layered": {"width": 8, "depth": 4, "inputs": 1}}))
        kinds = _kinds(doc.get("channels", {}), tech)
        nonideal = ni.NonIdeal.from_table(doc.get("nonideal", {}))
        faults = FaultSpec.from_table(doc.get("faults", {}))
    except BoardFileError as e:
        raise BoardFileError(f"{source}: {e}") from None
    except ValueError as e:
        raise BoardFileError(f"{source}: {e}") from None
    if tech == "RLC" and nonideal.nonlinearity > ni.RLC_NONLIN_LIMIT:
        raise BoardFileError(
            f"{source}: [nonideal].nonlinearity {nonideal.nonlinearity} would make RLC curves non-monotonic "
            f"(limit {ni.RLC_NONLIN_LIMIT})"
        )
    where = f"{source}: "
    return BoardDescription(
        network=network,
        technology=tech,
        tau_s=_num(doc, "tau_s", 1e-9 if tech == "JJ" else 1e-6, where, positive=True),
        seed=_num(doc, "seed", 20250101, where, integer=True),
        kinds=kinds,
        nonideal=nonideal,
        faults=faults,
        rail_v=_num(doc, "rail_v", 3.0, where, positive=True),
        adc_range_v=_num(doc, "adc_range_v", 4.0, where, positive=True),
        temperature_k=_num(doc, "temperature_k", 300.0, where, positive=True),
        name=doc.get("name", "default"),
        model=doc.get("model", f"TC-{tech}{network.n_nodes}-EMU"),
        serial=doc.get("serial", "EMU0001"),
        firmware=doc.get("firmware", "emu-1.0"),
        tau_node_factors=_tau_node_factors(doc.get("tau_node_factors"), network.n_nodes, source),
        age_h=_age_h(doc, where),
        **_capacity(doc, where),
    )


def _age_h(doc, where: str) -> float:
    """``age_h`` (hours, >= 0; absent: 0)."""
    age = float(_num(doc, "age_h", 0.0, where))
    if age < 0:
        raise BoardFileError(f"{where}age_h must be >= 0 hours, got {age}")
    return age


def _tau_node_factors(value, n_nodes: int, source: str):
    """``tau_node_factors`` as a tuple of N positive floats, or None when absent."""
    if value is None:
        return None
    ok = isinstance(value, list) and all(
        not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in value)
    if not ok or len(value) != n_nodes:
        raise BoardFileError(f"{source}: tau_node_factors must be a list of {n_nodes} positive numbers (one per node)")
    return tuple(float(v) for v in value)


def _zoo_board(doc: dict, source: str) -> BoardDescription:
    """A board file ``zoo = SEED`` (plus optional name, serial, seed, [faults])."""
    from .zoo import draw_board  # local: zoo imports this module (a cycle)

    unknown = sorted(set(doc) - _ZOO_KEYS)
    if unknown:
        raise BoardFileError(f"{source}: a zoo board takes only {sorted(_ZOO_KEYS)} next to zoo; unknown {unknown}")
    desc = draw_board(_num(doc, "zoo", 0, f"{source}: ", integer=True))
    changes = {}
    for key in ("name", "serial"):
        if key in doc:
            if not isinstance(doc[key], str) or any(c in doc[key] for c in ',;"\n'):
                raise BoardFileError(f"{source}: {key} must be a string without , ; \" or newlines")
            changes[key] = doc[key]
    if "seed" in doc:
        changes["seed"] = _num(doc, "seed", 0, f"{source}: ", integer=True)
    try:
        if "faults" in doc:
            changes["faults"] = FaultSpec.from_table(doc["faults"])
        if "nonideal" in doc:
            changes["nonideal"] = _override_sizes(desc.nonideal, doc["nonideal"])
    except ValueError as e:
        raise BoardFileError(f"{source}: {e}") from None
    return replace(desc, **changes)


def _override_sizes(sizes: ni.NonIdeal, table) -> ni.NonIdeal:
    """``sizes`` with the keys of a ``[nonideal]`` table replaced (validated as in a board file)."""
    if not isinstance(table, dict) or "ideal" in table:
        raise ValueError("[nonideal] next to zoo overrides sizes by name (no 'ideal' switch)")
    parsed = ni.NonIdeal.from_table(table)  # validates names and values
    return replace(sizes, **{k: getattr(parsed, k) for k in table})


def _capacity(doc: dict, where: str) -> dict:
    """``capacity_readings`` (a positive integer) and ``work_limit_element_steps`` (> 0) if given."""
    out = {}
    if "capacity_readings" in doc:
        cap = _num(doc, "capacity_readings", None, where, integer=True)
        if cap < 1:
            raise BoardFileError(f"{where}capacity_readings must be a positive integer, got {cap}")
        out["capacity_readings"] = cap
    if "work_limit_element_steps" in doc:
        out["work_limit_element_steps"] = _num(doc, "work_limit_element_steps", None, where, positive=True)
    return out


def load_board(path) -> BoardDescription:
    """Read a board file (TOML)."""
    p = Path(path)
    return parse_board(p.read_text(encoding="utf-8"), str(p))


def board_from_name_or_path(spec: str | None) -> BoardDescription:
    """``None`` -> the default board; a preset name (:data:`PRESETS`) or a path to a TOML file."""
    if spec is None:
        return parse_board(DEFAULT_BOARD_TOML, "<default board>")
    if spec in PRESETS and not Path(spec).exists():
        return parse_board(PRESETS[spec], f"<preset {spec}>")
    return load_board(spec)


# ----------------------------------------------------------------------------- the board
class Board:
    """A board description plus its hidden truth: the physics side of the emulator.

    ``truth`` is the dict of :func:`sim_backend.emulator.nonideal.draw_truth` (plus scalars such
    as ``rail_v``); nothing in it is reachable through SCPI.
    """

    def __init__(self, desc: BoardDescription):
        self.desc = desc
        self.network = desc.network
        self.layout = desc.layout()
        self.truth = ni.draw_truth(
            self.layout, desc.nonideal, seed=desc.seed, t0_k=desc.temperature_k, technology=desc.technology
        )
        self.truth.update(
            {
                "format": "tc-hw-emulator-truth/1",
                "name": desc.name,
                "n_nodes": self.network.n_nodes,
                "n_inputs": self.network.n_inputs,
                "tau_s": desc.tau_s,
                "rail_v": desc.rail_v,
                "dac": {"lsb_v": DAC_LSB_V, "full_scale_v": DAC_FULL_SCALE_V},
                "kT": 1.0,
                "nodes": {"tau_s": desc.tau_s * np.broadcast_to(1.0 / np.asarray(desc.node_mobility()),
                                                                 (self.network.n_nodes,)).copy()},
                "tau_node_factors": None if desc.tau_node_factors is None else list(desc.tau_node_factors),
                "capacity_readings": int(desc.capacity_readings),
                "work_limit_element_steps": desc.work_limit_element_steps,
                "zoo_seed": desc.zoo_seed,
            }
        )
        self.truth["adc"]["range_v"] = desc.adc_range_v
        self.truth["curves"] = curve_grid(self.truth)

    @property
    def n_channels(self) -> int:
        return self.layout.n_channels

    def temperature(self, elapsed_s: float) -> float:
        """Board temperature (kelvin) ``elapsed_s`` seconds after start."""
        return ni.board_temperature(self.truth, elapsed_s)

    def element_values(self, applied_volts, temp_k: float, elapsed_s: float = 0.0) -> np.ndarray:
        """Element values, shape (n_channels,), from the applied (quantised) volts."""
        return ni.element_values(self.truth, applied_volts, temp_k, elapsed_s)

    def params(self, applied_volts, temp_k: float, elapsed_s: float = 0.0) -> Params:
        """The board equation as :class:`Params` (cubic 0, kT 1, mobility 1: time in units of tau)."""
        v = self.element_values(applied_volts, temp_k, elapsed_s)
        s = self.layout.slices
        return Params(
            self.network,
            quadratic=v[s["Q"]],
            cubic=np.zeros(self.network.n_nodes),
            quartic=v[s["R"]],
            bias=v[s["B"]],
            coupling=v[s["C"]],
            crossbar=v[s["W"]],
            kT=1.0,
            mobility=self.desc.node_mobility(),
            require_stable=False,
        )


#: Points per channel of the truth's ``curves`` grid.
CURVE_GRID_POINTS = 129


def curve_grid(truth: dict, points: int = CURVE_GRID_POINTS) -> dict:
    """Each channel's true static curve on its safe range at the reference temperature.

    Returns ``{"volts": (n_channels, points), "value": (n_channels, points)}`` (float64): the
    element value (energy units, kT = 1) at ``points`` evenly spaced programmed voltages from
    ``vmin`` to ``vmax``, without crosstalk or drift.  A reader that does not run this package can
    judge a calibration from it alone."""
    ch = truth["channels"]
    u = np.linspace(0.0, 1.0, points)
    vmin = np.asarray(ch["vmin"], float)[:, None]
    vmax = np.asarray(ch["vmax"], float)[:, None]
    volts = vmin + (vmax - vmin) * u[None, :]
    params = {k: np.asarray(v)[:, None] for k, v in ch.items() if k != "kind"}
    t0 = truth["temperature"]["t0_k"]
    return {"volts": volts, "value": ni.element_curve(params, volts, t0, t0)}
