"""Imports at module top: function-local imports of project modules are counted against an allow-list.

A function-local import hides a dependency from the reader and from the layer contract's reader
(tests/test_layers.py reads them too, but a reader of the module's top does not see them).  In the
layers cleaned for this (``tc_hw/cli``, ``tc_hw/model``, ``drivers``, ``sim_backend``) each one that
stays must say why on its line (``# local: <reason>``: an import cycle, a heavy optional load).
Elsewhere each file may keep at most its count below; the counts may only go down (lower them
when you lift an import; a new local import needs a reason, not a higher number).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("tc_hw", "sim_backend", "calibration", "drivers")
CLEAN = ("tc_hw/cli", "tc_hw/model", "drivers", "sim_backend")
#: path -> most function-local imports of project modules it may keep (files not listed: none)
ALLOWED = {
    "calibration/adc.py": 1,
    "calibration/record.py": 2,
    "calibration/routine.py": 2,
    "sim_backend/emulator/board.py": 1,  # zoo imports board: a cycle
    "sim_backend/twin.py": 1,  # the JAX engine: an optional dependency
    "tc_hw/backends.py": 1,
    "tc_hw/train/direct.py": 17,
    "tc_hw/train/generative.py": 11,
    "tc_hw/train/om.py": 10,
}


def local_project_imports(source: str) -> list[tuple[int, str]]:
    """``(line, source line)`` of every import of a project module inside a function body."""
    lines = source.splitlines()
    found = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom):
                project = node.level > 0 or (node.module or "").split(".")[0] in PROJECT
            elif isinstance(node, ast.Import):
                project = any(a.name.split(".")[0] in PROJECT for a in node.names)
            else:
                continue
            if project:
                found.append((node.lineno, "\n".join(lines[node.lineno - 1 : node.end_lineno])))
    return sorted(set(found))


@functools.cache
def tree_counts() -> dict[str, list[tuple[int, str]]]:
    out = {}
    for pkg in PROJECT:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            hits = local_project_imports(path.read_text())
            if hits:
                out[path.relative_to(ROOT).as_posix()] = hits
    return out


def test_no_file_keeps_more_local_imports_than_allowed():
    over = {p: [f"{n}: {s.strip()}" for n, s in hits] for p, hits in tree_counts().items() if len(hits) > ALLOWED.get(p, 0)}
    assert over == {}, "lift these imports to module top (or give the file a reason and a count in ALLOWED)"


def test_every_local_import_in_the_cleaned_layers_says_why():
    unexplained = [f"{p}:{n}: {s.strip()}" for p, hits in tree_counts().items() if p.startswith(CLEAN)
                   for n, s in hits if "# local:" not in s]
    assert unexplained == []


def test_the_counter_finds_local_imports_of_project_modules_only():
    src = ("import json\nfrom tc_hw.model import params\n\n"
           "def f():\n    import numpy\n    from ..run import read_run\n    import sim_backend.twin as t\n"
           "    def g():\n        from calibration import load  # local: a cycle\n")
    hits = local_project_imports(src)
    assert [n for n, _ in hits] == [6, 7, 9]
    assert "# local:" in hits[-1][1]
