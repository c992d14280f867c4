"""The evaluation stage: how good a segmentation is.

Segmentation metrics on the native grid (:mod:`~benchmark.evaluation.segmentation`), a model's
lesion probability (:mod:`~benchmark.evaluation.inference`), robustness to noise and zeroing and
latency (:mod:`~benchmark.evaluation.robustness`), the clinical threshold rules that every model
must beat (:mod:`~benchmark.evaluation.clinical_rules`) and how hard a data set's label is
(:mod:`~benchmark.evaluation.dataset_summary`).
"""
