"""Property-based fuzz suite of issue 15 (hypothesis): loaders, SCPI replies, CLI argument
checks, a misbehaving board and kill/resume of run logs.  Every example must end in a result or
a documented, clear failure (ValueError family / DeviceError / exit 2 or 3) within its time bound,
with no DAC write outside the map or +-10 V and no committed generation lost.

The CI sizes below run in well under 3 minutes on 2 cores; ``benchmarks/fuzz.py`` runs the same
checks for ~10 minutes (``--minutes``).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import fuzzlib
from tests.fake_board import MODES

FAST = settings(max_examples=60, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return fuzzlib.Corpus(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture(autouse=True)
def _private_lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TC_HW_LOCK_DIR", str(tmp_path / "locks"))


@pytest.mark.parametrize("loader", sorted(fuzzlib.LOADERS))
def test_loaders_refuse_damaged_files_cleanly(corpus, loader):
    tally = fuzzlib.Tally(strict=True)

    @FAST
    @given(fuzzlib.mutation_strategy())
    def run(mutation):
        fuzzlib.check_loader(corpus, loader, mutation, tally)

    run()
    assert tally.cases >= 30


def test_params_json_any_content(corpus):
    tally = fuzzlib.Tally(strict=True)

    @settings(FAST, max_examples=150)
    @given(fuzzlib.json_strategy())
    def run(case):
        fuzzlib.check_params_json(corpus, case, tally)

    run()


@settings(FAST, max_examples=400)
@given(st.one_of(st.binary(max_size=80),
                 st.builds(lambda c, t: f'{c},"{t}"'.encode(), st.integers(-10**30, 10**30), st.text(max_size=20))))
def test_error_queue_lines(line):
    fuzzlib.check_scpi_line(line, fuzzlib.Tally(strict=True))


@settings(FAST, max_examples=400)
@given(st.one_of(st.binary(max_size=64),
                 st.builds(lambda d, n, body: b"#" + d + n + body, st.sampled_from([b"0", b"1", b"9", b"x", b"5"]),
                           st.binary(max_size=12), st.binary(max_size=40))),
       st.integers(0, 64))
def test_blocks_are_bounded(stream, limit):
    fuzzlib.check_block(stream, limit, fuzzlib.Tally(strict=True))


@pytest.mark.parametrize("mode", sorted(MODES))
def test_fake_board_modes_with_random_triggers(mode):
    tally = fuzzlib.Tally(strict=True)
    triggers = [None, "*IDN?", "BOARD:MAP?", "DAC:BLOCK?", "SYST:ERR?", "OUTP?"]
    for k, trig in enumerate(triggers[:2] if mode in ("silence", "garbage") else triggers[:3]):
        fuzzlib.check_fake_board(mode, trig, k, tally)


def test_cli_random_argv(corpus):
    tally = fuzzlib.Tally(strict=True)

    @settings(FAST, max_examples=120)
    @given(fuzzlib.argv_strategy(corpus))
    def run(argv):
        fuzzlib.check_cli(argv, tally)

    fuzzlib.warm_up_twin()
    with fuzzlib.stubbed_work():
        run()
    assert tally.cases >= 60


def test_kill_resume_and_concurrent_writer_lose_nothing(tmp_path):
    tally = fuzzlib.Tally(strict=True)
    for seed in range(2):
        fuzzlib.check_kill_resume(tmp_path, seed, tally)
    assert tally.data_lost == 0
