"""The search stage: an Optuna search tracked in MLflow, then the ONNX export of its best trials.

:func:`search_and_export` runs :func:`benchmark.training.search.run_search` (which saves the study's
split, or reads it back when the study resumes) and exports the ``top_k`` best complete trials of
the study; with ``folds`` K > 1 or ``repeats`` R > 1 it first trains the remaining folds and repeats
of each architecture's best trial (:func:`benchmark.training.folds.train_folds`). The best competes
for the registry's ``champion`` alias (it takes it only when it beats the current champion on the
same split, or with ``promote``) and gets an int8 model, calibrated and measured on the study's
split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from benchmark.data.defaults import DEFAULT_DATA, ensure_default_data
from benchmark.errors import ParameterError
from benchmark.stages.export import ExportResult, export_model
from benchmark.training.folds import FoldsResult, train_folds
from benchmark.training.search import SearchResult, SearchSettings, describe, result_after_workers, run_search
from benchmark.training.workers import run_workers


@dataclass
class TrainResult:
    """The search's result and the exports of its best trials (best first)."""

    search: SearchResult
    exports: list[ExportResult] = field(default_factory=list)
    failed_workers: int = 0
    folds: FoldsResult | None = None
    """The cross-validation folds trained after the search (None with one fold and one repeat)."""

    def lines(self) -> list[str]:
        """The summary lines the command line prints."""
        folds = [self.folds.line()] if self.folds is not None else []
        return [describe(self.search)] + folds + [e.line() for e in self.exports]


def search_and_export(settings: SearchSettings, top_k: int = 1, export: bool = True,
                      say: Callable[[str], None] | None = None, promote: bool = False, workers: int = 1) -> TrainResult:
    """Run the search, then export its ``top_k`` best trials (rank 0, the best, competes for the champion alias).

    Args:
        settings: the search's settings; the synthetic default data is generated when missing.
        top_k: how many of the study's best complete trials to export.
        export: export at all.
        say: receives each summary line as soon as it is known (e.g. ``print``).
        promote: make the best trial the champion even when it does not beat the current one.
        workers: search processes on the study (:mod:`benchmark.training.workers`); the folds and the
            export follow once all have ended.

    Raises:
        ParameterError: ``top_k`` below 1, or a setting of the search.
        DataError: the data has too few cases, or changed since the study's split was saved.
    """
    if top_k < 1:
        raise ParameterError(f"top-k must be at least 1 (got {top_k}); use --no-export to export nothing")
    say = say or (lambda line: None)
    if settings.data == DEFAULT_DATA:
        ensure_default_data(DEFAULT_DATA)
    if workers > 1:
        failed = [o for o in run_workers(settings, workers, progress=settings.progress) if o.exitcode != 0]
        for outcome in failed:
            say(outcome.line())
        result = TrainResult(result_after_workers(settings), failed_workers=len(failed))
    else:
        result = TrainResult(run_search(settings))
    say(describe(result.search))
    if result.search.best_run_id and result.search.split is not None and (settings.folds > 1 or settings.repeats > 1):
        result.folds = train_folds(settings.study, result.search.experiment, result.search.split, settings.repeats,
                                   settings.data, settings.profile.patience, settings.checkpoints, settings.device,
                                   settings.cache, settings.progress)
        say(result.folds.line())
    if result.search.best_run_id and export:
        for rank, run_id in enumerate(result.search.ranked_run_ids[:top_k]):
            exported = export_model(run_id, result.search.experiment, champion=rank == 0, promote=promote and rank == 0,
                                    int8_data=settings.data if rank == 0 else "", split=result.search.split)
            result.exports.append(exported)
            say(exported.line())
    return result
