"""Tandem's training library: export rows in, artifacts and metrics out.

Never imports Django. Submodules: ``data`` (the row contract), ``models``
(tokenizers and models without a hub), ``artifacts`` (atomic run directories,
progress), ``losses`` (ensemble aggregation, held-out pair metrics, calibration),
``reward`` (reward models and ensembles). Heavy dependencies (torch,
transformers, TRL) load only when a submodule that needs them is imported.
"""

__version__ = "0.1.0"
