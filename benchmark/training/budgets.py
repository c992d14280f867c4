"""Equal budgets for the architecture families of a search: the cover phase, the family pruner, the time budget.

A search compares architectures, so its ranking must not be a ranking of training budgets:

* **Cover phase.** A new study with ``cover`` enqueues one trial per family with the same
  hyper-parameters (the profile's known-good ``first`` with the family swapped in), tagged
  ``phase = cover``. A cover trial trains exactly the profile's epochs: it is never pruned, never
  stopped early and never cut by the time budget. Every family's leaderboard row therefore rests
  on at least one trial trained with the full, identical budget.
* **Family pruner.** After the cover phase, Optuna's median rule (:class:`~optuna.pruners.MedianPruner`)
  prunes a trial only against the complete trials *of its own family* (the ``architecture``
  parameter), so a slow-starting family is not stopped for lagging another family's curve.
* **Time budget.** The profile's ``time_budget`` (seconds, wall clock of one invocation) stops
  starting new trials and epochs only once no cover trial waits; cover trials run to the end. A
  trial the budget stops before its last epoch is recorded as *pruned* (user attribute
  :data:`CUT_ATTR`: the epochs it trained), never as complete: a complete trial has trained its
  whole budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

PHASE_ATTR = "phase"
COVER = "cover"
"""Value of the ``phase`` user attribute of the trials enqueued for the cover phase."""
CUT_ATTR = "cut_by_time_budget"
"""User attribute of a trial the time budget stopped before its last epoch: the epochs it trained."""


def is_cover(trial: optuna.Trial | FrozenTrial) -> bool:
    """True for a cover-phase trial (also a retry of one: the retry callback copies user attributes)."""
    return trial.user_attrs.get(PHASE_ATTR) == COVER


def enqueue_cover(study: optuna.Study, first: dict, architectures: tuple[str, ...]) -> None:
    """Enqueue ``first`` and then one trial per other family with ``first``'s hyper-parameters."""
    study.enqueue_trial(first, user_attrs={PHASE_ATTR: COVER})
    for architecture in architectures:
        if architecture != first["architecture"]:
            study.enqueue_trial({**first, "architecture": architecture}, user_attrs={PHASE_ATTR: COVER})


def cover_waiting(study: optuna.Study) -> bool:
    """True while a cover trial of the study has not started yet."""
    return any(is_cover(t) for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


class _FamilyView:
    """The part of a study a percentile pruner reads, restricted to the trials of one family."""

    def __init__(self, study: optuna.Study, family: object):
        self._study, self._family = study, family
        self.direction = study.direction

    def get_trials(self, deepcopy: bool = True, states=None) -> list[FrozenTrial]:
        trials = self._study.get_trials(deepcopy=deepcopy, states=states)
        return [t for t in trials if t.params.get("architecture") == self._family]


class FamilyPruner(optuna.pruners.BasePruner):
    """Median pruning within a family; cover-phase trials are never pruned.

    Args:
        warmup: epochs (reported steps) before a trial may be pruned.
        startup: complete trials of the same family needed before its trials may be pruned.
    """

    def __init__(self, warmup: int, startup: int = 1):
        self._median = optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if is_cover(trial):
            return False
        return self._median.prune(_FamilyView(study, trial.params.get("architecture")), trial)


def stop_after(deadline: float | None, clock: Callable[[], float] = time.monotonic):
    """An Optuna callback that stops the search once ``deadline`` passed and no cover trial waits."""

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        if deadline is not None and clock() > deadline and not cover_waiting(study):
            study.stop()

    return callback
