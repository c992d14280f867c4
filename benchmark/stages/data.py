"""The data stage: the folder a pipeline works on, and the saved split a later stage reads.

:func:`prepare_data` returns the user's folder or the synthetic default (generated once, then
reused) with its summary. :func:`model_split` finds the split of the search that trained a model
(what explanation and int8 calibration use); a study's split is
:func:`benchmark.training.search.study_split`. Neither ever splits again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from benchmark.data.defaults import DEFAULT_CASES, DEFAULT_DATA, DEFAULT_SEED, default_case_count, ensure_default_data
from benchmark.data.splits import SPLIT_FILE, Split
from benchmark.errors import ParameterError
from benchmark.evaluation.dataset_summary import summarize_dataset
from benchmark.training.search import DEFAULT_CHECKPOINTS, logged_split, split_file
from tracking import runs as tracking
from tracking.records import search_run_of


@dataclass
class DataResult:
    """The data folder of a pipeline and what its summary says.

    Attributes:
        folder: the data folder.
        generated: for the synthetic default, whether it was generated now (else reused); None
            for a folder the user gave.
        summary: the summary lines (cases, grids, lesion volumes).
    """

    folder: Path
    generated: bool | None
    summary: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """What the command line prints."""
        made = [] if self.generated is None else [
            f"{'generated' if self.generated else 'reusing'} synthetic data in {self.folder}"]
        return made + self.summary


def prepare_data(data: str | Path = "", cases: int | None = None, seed: int = DEFAULT_SEED,
                 summary: bool = True) -> DataResult:
    """The user's data folder, or the synthetic default (``data/synthetic``) generated once.

    Args:
        data: a data folder; empty (or the default's path): the synthetic default.
        cases: training cases of the synthetic default when it is generated (None: the default's
            count); a count that disagrees with an existing default is an error, never a silent reuse.
        seed: random seed of the synthetic default when it is generated.
        summary: describe the data (without the threshold rules, which read every voxel).

    Raises:
        DataError: the folder holds no usable case.
        ParameterError: ``cases`` disagrees with the synthetic default already on disk.
    """
    if not data or Path(data) == DEFAULT_DATA:
        held = default_case_count(DEFAULT_DATA)
        if cases is not None and held and held != cases:
            raise ParameterError(f"{DEFAULT_DATA} already holds {held} training cases but --cases asks for {cases}: "
                                 f"drop --cases (or pass {held}) to use them, or delete {DEFAULT_DATA} to generate "
                                 f"{cases}")
        folder, made = ensure_default_data(DEFAULT_DATA, DEFAULT_CASES if cases is None else cases, seed)
        generated: bool | None = made
    else:
        folder, generated = Path(data), None
    lines = summarize_dataset(folder, with_rules=False)[1] if summary else []
    return DataResult(folder, generated, lines)


def model_split(model_run: str | None, checkpoint: Path | None = None,
                checkpoints: str | Path = DEFAULT_CHECKPOINTS) -> Split | None:
    """The split of the search that trained a model, or None for a model no search trained.

    Looked up in MLflow first (the split its search run logged; an export run leads to its trial,
    a trial to its search), else on disk: ``split.json`` beside the study's checkpoints, found from
    a checkpoint path ``<checkpoints>/<study>/trial_NNNN/best.pt`` or the run's study tag.

    Raises:
        DataError: a split file that cannot be read or was edited.
    """
    search = search_run_of(model_run)
    if search:
        split = logged_split(search)
        if split is not None:
            return split
    if checkpoint is not None and Path(checkpoint).parent.name.startswith("trial_"):
        beside = Path(checkpoint).parent.parent / SPLIT_FILE
        if beside.is_file():
            return Split.load(beside)
    study = tracking.study_of(model_run)
    if study and split_file(checkpoints, study).is_file():
        return Split.load(split_file(checkpoints, study))
    return None
