"""The shell: the command line, the report, its configuration and its figures.

The only part of the toolkit that touches files, the terminal and matplotlib; everything
here calls the numerics of :mod:`scorehamiltonian.score`, :mod:`~scorehamiltonian.spectral`,
:mod:`~scorehamiltonian.sampling` and :mod:`~scorehamiltonian.thermo`.

- ``cli``: ``scorehamiltonian report | gap | schedule | energy | audit | train``.
- ``report``: the full report of a configuration (:func:`build_report`, :func:`write_report`),
  its figures drawn by ``plots``.
- ``config``: the TOML configuration, checked against a JSON schema before any work
  (:func:`load_config`, :func:`builtin_config`).
"""

from .config import builtin_config, load_config, validate_config
from .report import Report, build_report, write_report

__all__ = ["Report", "build_report", "builtin_config", "load_config", "validate_config", "write_report"]
