"""The benchmark suite: one sub-package per pipeline stage, the data flowing one way.

files → :mod:`benchmark.data` (``Case``, synthetic data, preprocessing, the saved split) →
:mod:`benchmark.training` (the training loop, the Optuna search) → :mod:`benchmark.evaluation`
(segmentation metrics, robustness, latency, clinical rules) → :mod:`benchmark.reporting` (the
leaderboard read back from MLflow, its figures and the HTML/Markdown report).
:mod:`benchmark.stages` holds one plain function per stage that the command line
(:mod:`mlproject`) calls; :mod:`benchmark.perf` times the pieces. Shared at the bottom:
:mod:`benchmark.errors` (the exceptions a user can cause), :mod:`benchmark.atomic` (writes that
leave nothing half-written) and :mod:`benchmark.figures` (the PNG overlays people look at).
The layering is declared as import-linter contracts in ``pyproject.toml``.
"""

REFERENCE_STUDY = ("Tjoa et al., Enhancing the Extraction of Interpretable Information for Ischemic Stroke Imaging "
                   "from Deep Neural Networks, arXiv:1911.08136 (code: etjoa003/medical_imaging, isles2017)")
"""The published study strokelens reproduces; "the study" in every docstring means this one."""
