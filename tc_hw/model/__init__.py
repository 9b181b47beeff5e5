"""The base layer of tc-hw: what a program is and how it is kept.

Network topology and parameter values (one sign convention), the ``Device`` protocol and its
capability protocols, tasks and data loaders, parameter files, run logs, provenance, safe file
I/O and figures.  Nothing here imports ``sim_backend``, ``calibration``, ``drivers`` or the
application modules of ``tc_hw`` (training, refinement, the demo, the command line); they import
this.  ``tests/test_layers.py`` keeps it so.
"""

__version__ = "0.1.0"  #: the package version (also in pyproject.toml)
