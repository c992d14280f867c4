"""The training stage: the training loop and the search over it.

The training loop (:mod:`~benchmark.training.loop`: losses, augmentation,
epochs, checkpoints) and the Optuna search over it (:mod:`~benchmark.training.search`, the only
module that imports Optuna; its profiles in :mod:`~benchmark.training.profiles`).
"""
