"""One conversion of Python/numpy values to what JSON can hold, with one NaN policy.

JSON has no NaN or Infinity (RFC 8259); ``json.dumps`` writes them as the non-standard tokens
``NaN``/``Infinity`` that strict readers refuse.  Every JSON the project writes (the CLI's
``--json`` lines, calibration records' option/summary attributes, the emulator's truth files)
therefore goes through :func:`json_safe`, whose policy is:

* a non-finite float (``nan``, ``inf``, ``-inf``; Python or numpy, any precision) becomes ``null``
  (``None``).  Readers that need numbers turn ``null`` back into ``nan`` (see :func:`nan_for_null`);
* numpy scalars become the Python ``int``/``float``/``bool`` of the same value;
* numpy arrays, lists and tuples become lists (elementwise, recursively);
* dict keys become strings (JSON object keys are strings);
* anything else is returned unchanged (``json.dumps`` decides: a caller may pass ``default=str``).
"""

from __future__ import annotations

import json
import math

import numpy as np

__all__ = ["json_safe", "dumps", "nan_for_null"]


def json_safe(value):
    """``value`` made JSON-ready under the policy above (non-finite floats -> None); a new object."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def dumps(value, **kwargs) -> str:
    """``json.dumps(json_safe(value))``, refusing any NaN that slipped through (``allow_nan=False``)."""
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)


def nan_for_null(values: list) -> np.ndarray:
    """A numeric JSON list (nested lists allowed) read back as float64, ``null`` -> ``nan`` (the
    inverse of the policy)."""

    def fill(v):
        return [fill(u) for u in v] if isinstance(v, list) else (np.nan if v is None else v)

    return np.array(fill(values), dtype=np.float64)
