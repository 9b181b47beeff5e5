"""Board emulator: a process that implements the board manual (``/work/shared/BOARD_MANUAL.md``)
over TCP on loopback and over a pseudo-terminal, with the numerical twin as its physics.

Modules
-------
:mod:`.board`       board file (TOML) schema and loading, channel layout, DAC quantisation,
                    :class:`~.board.Board` (description + hidden truth -> ``Params``)
:mod:`.nonideal`    sizes, seeded draw and evaluation of every hidden non-ideality
:mod:`.scpi`        byte-stream scanner (definite-length blocks), header matching, error queue
:mod:`.instrument`  the firmware: command handlers and acquisition state machine
:mod:`.acquire`     one acquisition (twin + ADC model) and the background worker
:mod:`.faults`      seeded fault injection on replies
:mod:`.server`      TCP (loopback only) and pty transports
:mod:`.truth`       the truth dump (JSON) and functions to evaluate it
:mod:`.cli`         ``main(argv)``: the ``tc-hw emulate`` command

Start it with ``python -m sim_backend.emulator --port 0 --pty`` and wait for the ``READY {json}``
line on stdout.
"""

from .cli import main

__all__ = ["main"]
