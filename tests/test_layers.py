"""The import contract: one direction of dependency between the three layers.

    application   tc_hw (everything outside tc_hw.model): training, refinement, demo, CLI, ...
    backends      sim_backend | calibration | drivers       (each imports only the base)
    base          tc_hw.model                               (imports none of the above)

Every import statement is checked, at module top and inside functions, by reading the source
(``ast``), so a violation is found whether or not the code path runs.  ``test_checker_finds_*``
show that the check fails on a base module that imports a backend.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("sim_backend", "calibration", "drivers")
BASE = "tc_hw.model"


def module_name(path: Path) -> str:
    """``tc_hw/model/params.py`` -> ``tc_hw.model.params`` (``__init__`` -> the package)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """Absolute names of every module ``source`` imports (relative imports resolved)."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{a.name}" for a in node.names)  # `from pkg import module`
    return found


def layer_of(name: str) -> str | None:
    """``base``, ``backend:<package>``, ``app`` or None (a third-party or standard module)."""
    top = name.split(".")[0]
    if top in BACKENDS:
        return f"backend:{top}"
    if name == BASE or name.startswith(BASE + "."):
        return "base"
    if top == "tc_hw":
        return None if name == "tc_hw" else "app"  # the root package only re-exports the base
    return None


def violations(module: str, imports: set[str]) -> list[str]:
    """What ``module`` may not import: the base imports only the base; a backend imports only
    the base and itself; the application imports anything."""
    own = layer_of(module)
    if own is None:  # the root package: see test_the_root_package_imports_only_the_base
        return []
    bad = []
    for name in sorted(imports):
        other = layer_of(name)
        if other is None or own == "app" or other == own:
            continue
        if own == "base" or (own.startswith("backend") and other != "base"):
            bad.append(f"{module} imports {name} ({own} -> {other})")
    return bad


def tree_violations() -> list[str]:
    bad = []
    for pkg in ("tc_hw", *BACKENDS):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            module = module_name(path)
            imports = imported_modules(path.read_text(), module, path.name == "__init__.py")
            bad += violations(module, imports)
    return bad


def test_the_tree_keeps_the_layers():
    assert tree_violations() == []


def test_the_root_package_imports_only_the_base():
    imports = imported_modules((ROOT / "tc_hw/__init__.py").read_text(), "tc_hw", True)
    assert {layer_of(n) for n in imports} <= {None, "base"}


def test_checker_finds_a_base_module_that_imports_a_backend():
    src = "import numpy as np\n\ndef f():\n    from sim_backend.twin import sample_reset\n"
    assert violations("tc_hw.model.params", imported_modules(src, "tc_hw.model.params", False))
    rel = "from ..refine import refine\n"  # an application module, reached relatively
    assert violations("tc_hw.model.files", imported_modules(rel, "tc_hw.model.files", False))


def test_checker_finds_a_backend_that_imports_another_or_the_application():
    src = "from calibration.record import load\nfrom tc_hw.train.cos import twin_cos_loss\n"
    bad = " ".join(violations("drivers.board", imported_modules(src, "drivers.board", False)))
    assert "(backend:drivers -> backend:calibration)" in bad and "(backend:drivers -> app)" in bad
    ok = "from tc_hw.model.params import Params\nfrom .scpi import Session\n"
    assert violations("drivers.board", imported_modules(ok, "drivers.board", False)) == []
