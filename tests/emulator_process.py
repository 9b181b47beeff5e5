"""The emulator process for tests: :mod:`sim_backend.emulator.process` plus a pytest fixture.

Test modules get the module-scoped fixture with::

    from tests.emulator_process import emulator  # noqa: F401  (pytest fixture)

    def test_something(emulator):
        sock = socket.create_connection(("127.0.0.1", emulator.port))

The fixture runs the default board with ``--pty`` and a truth file.
"""

from __future__ import annotations

import pytest

from sim_backend.emulator.process import REPO_ROOT, EmulatorProcess, running_emulator, start_emulator

__all__ = ["EmulatorProcess", "running_emulator", "start_emulator", "emulator", "REPO_ROOT"]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """A default-board emulator with ``--pty`` and a truth file, shared by one test module."""
    with running_emulator(pty=True, truth=True, workdir=tmp_path_factory.mktemp("emulator")) as emu:
        yield emu
