"""The one JSON policy (tc_hw.model.jsonsafe): non-finite floats become null, everywhere JSON is written."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from calibration.record import to_json
from sim_backend.emulator.truth import dump_truth, load_truth
from tc_hw.cli._common import emit
from tc_hw.model.jsonsafe import dumps, json_safe, nan_for_null

NON_FINITE = [math.nan, math.inf, -math.inf, np.float32("nan"), np.float64("-inf"), np.float16("inf")]


def strict_loads(text: str):
    """``json.loads`` that refuses the non-standard NaN/Infinity tokens."""

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("value", NON_FINITE, ids=repr)
def test_every_non_finite_float_becomes_null(value):
    assert json_safe(value) is None
    assert json_safe({"a": [1.0, (value,)]}) == {"a": [1.0, [None]]}
    assert strict_loads(dumps(np.array([0.5, value]))) == [0.5, None]


def test_numpy_values_become_python_values_of_the_same_value():
    out = json_safe({1: np.int16(-3), "b": np.bool_(True), "f": np.float32(0.25), "a": np.arange(4).reshape(2, 2)})
    assert out == {"1": -3, "b": True, "f": 0.25, "a": [[0, 1], [2, 3]]}
    assert type(out["1"]) is int and type(out["b"]) is bool and type(out["f"]) is float
    assert json_safe("text") == "text" and json_safe(None) is None


def test_finite_floats_are_kept_exactly():
    values = np.random.default_rng(3).normal(size=50) * 10.0 ** np.arange(-25, 25)
    assert strict_loads(dumps(values)) == values.tolist()


def test_nan_for_null_inverts_the_policy():
    back = nan_for_null([[1.5, None], [None, -2.0]])
    assert back.dtype == np.float64 and back.shape == (2, 2)
    assert np.array_equal(back, [[1.5, np.nan], [np.nan, -2.0]], equal_nan=True)


def test_the_calibration_record_writes_strict_json():
    assert strict_loads(to_json({"tau": np.array([1.0, np.nan]), "gain": np.float32("inf")})) == {
        "tau": [1.0, None], "gain": None}


def test_the_truth_file_round_trips_nan_as_nan(tmp_path):
    path = tmp_path / "truth.json"
    dump_truth({"n_nodes": 2, "nodes": {"tau_s": np.array([1e-6, np.nan])}, "adc": {"gain": [1.0, 2.0]}}, path)
    assert strict_loads(path.read_text())["nodes"]["tau_s"] == [1e-6, None]
    truth = load_truth(path)
    assert np.array_equal(truth["nodes"]["tau_s"], [1e-6, np.nan], equal_nan=True)
    assert truth["adc"]["gain"].dtype == np.float64


def test_the_cli_json_line_is_strict(capsys):
    emit(argparse.Namespace(json=True), {"loss": np.float64("nan"), "x": np.arange(2), "path": object()}, "human")
    line = strict_loads(capsys.readouterr().out)
    assert line["loss"] is None and line["x"] == [0, 1] and line["path"].startswith("<object")
