"""The fuzz campaign of issue 15, run for a while: hostile files, replies, argv, boards and kills.

The same checks as ``tests/test_fuzz.py`` (:mod:`tests.fuzzlib`), drawn by hypothesis with fresh
random seeds, round after round until ``--minutes`` have passed (at least one full round):

* loaders: good parameter files (HDF5, JSON), calibration records and run logs, truncated,
  bit-flipped, spliced, zeroed or replaced by random bytes, read with ``load_params``,
  ``calibration.load``, ``read_log`` and ``RunLog.reopen``; parameter JSON of any content;
* SCPI replies: error-queue lines and binary blocks from arbitrary bytes, through the bounded reader;
* the CLI: ``tc_hw.cli.main`` with random argv (hostile numbers and paths) in-process, the long
  work functions replaced by stubs that check what reached them; ``emulate`` in its own process;
* the fake board (:mod:`tests.fake_board`) in every misbehaving mode with random triggers, the
  driver writing random (partly unsafe) channel voltages;
* kill/resume: a run-log writer SIGKILLed at random moments and resumed, a second writer tried
  while the first lives.

Printed (``--json``: one object): ``cases`` (calls made), ``tracebacks`` (an exception outside
the documented failure classes, an exit code outside {0, 2, 3}, or "Traceback" printed),
``hangs`` (a case over its time bound: 10 s for a file, 20 s for a fake-board session, 60 s
for a CLI call or a kill/resume trial), ``data_lost`` (committed generations missing after a
kill/resume, or a second writer let in), ``unsafe_writes`` (DAC writes outside the map or
+-10 V received by the fake board), ``seconds``, ``per_check`` and the first failure ``examples``.

Usage: ``python benchmarks/fuzz.py [--json] [--minutes 10]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _round(corpus, tally, rng, per_check):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests import fuzzlib
    from tests.fake_board import MODES

    def batch(name, strategy, check, n):
        before = tally.cases

        @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(strategy)
        def run(case):
            check(case)

        run()
        per_check[name] = per_check.get(name, 0) + tally.cases - before

    for loader in sorted(fuzzlib.LOADERS):
        batch(f"loader:{loader}", fuzzlib.mutation_strategy(),
              lambda m, loader=loader: fuzzlib.check_loader(corpus, loader, m, tally), 40)
    batch("params_json", fuzzlib.json_strategy(), lambda c: fuzzlib.check_params_json(corpus, c, tally), 60)
    batch("scpi:error_line", st.binary(max_size=80), lambda b: fuzzlib.check_scpi_line(b, tally), 100)
    batch("scpi:block", st.tuples(st.binary(max_size=64), st.integers(0, 64)),
          lambda c: fuzzlib.check_block(c[0], c[1], tally), 100)
    with fuzzlib.stubbed_work():
        batch("cli", fuzzlib.argv_strategy(corpus), lambda a: fuzzlib.check_cli(a, tally), 40)
    triggers = [None, "*IDN?", "BOARD:MAP?", "DAC:BLOCK?", "SYST:ERR?", "OUTP?", "BOARD:NODES?"]
    before = tally.cases
    for mode in sorted(MODES):
        fuzzlib.check_fake_board(mode, rng.choice(triggers), rng.randrange(1 << 30), tally)
    per_check["fake_board"] = per_check.get("fake_board", 0) + tally.cases - before
    before = tally.cases
    fuzzlib.check_kill_resume(corpus.folder, rng.randrange(1 << 30), tally)
    per_check["kill_resume"] = per_check.get("kill_resume", 0) + tally.cases - before


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="run for about this long (default: 10)")
    ap.add_argument("--seed", type=int, help="seed of the board/kill choices (default: random)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if not args.minutes > 0:
        ap.error("--minutes must be > 0")
    import logging

    logging.getLogger("tc_hw.drivers").setLevel(logging.CRITICAL)  # recoveries are expected here
    from tests import fuzzlib

    t0 = time.monotonic()
    rng = random.Random(args.seed)
    per_check: dict = {}
    rounds = 0
    with tempfile.TemporaryDirectory(prefix="tc-hw-fuzz-") as tmp:
        os.environ["TC_HW_LOCK_DIR"] = str(Path(tmp) / "locks")
        corpus = fuzzlib.Corpus(Path(tmp) / "corpus")
        fuzzlib.warm_up_twin()
        tally = fuzzlib.Tally(strict=False)
        while True:
            _round(corpus, tally, rng, per_check)
            rounds += 1
            if time.monotonic() - t0 > 60 * args.minutes:
                break
    out = {**tally.summary(), "seconds": round(time.monotonic() - t0, 1), "rounds": rounds,
           "per_check": per_check, "examples": tally.examples}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{out['cases']} cases in {out['seconds']} s ({rounds} rounds): tracebacks {out['tracebacks']}, "
              f"hangs {out['hangs']}, data_lost {out['data_lost']}, unsafe_writes {out['unsafe_writes']}")
        for k, v in per_check.items():
            print(f"  {k}: {v}")
        for e in tally.examples:
            print("  " + e.splitlines()[0])
    bad = out["tracebacks"] + out["hangs"] + out["data_lost"] + out["unsafe_writes"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
