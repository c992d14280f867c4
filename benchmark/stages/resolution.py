"""The resolution study stage: the same network at the study's input grids and at native resolution.

:func:`run_resolution_study` is what ``python -m mlproject.resolution_study`` runs. It trains one
configuration per setting (:mod:`benchmark.training.resolution`: the study's 48×48×19 seed grid, its
other grids, and ``native`` mode from the data set's plan), scores every model on the same validation
cases on their native grid (:mod:`benchmark.evaluation.resolution`: Dice, HD95, lesion F1, overall and
for lesions under 5 ml, with 95 % bootstrap intervals and paired tests against the seed grid), and
logs one ``resolution-<study>`` MLflow run with a nested ``resolution-<setting>`` run per setting
(epoch curves, per-case ``cases.csv``, summary metrics) plus ``resolution.csv``, ``resolution.png``,
the split and the plan. The report shows the newest one (:mod:`benchmark.reporting.resolution`).

The split is the study's saved one when the study has one (so the numbers sit beside its leaderboard),
else a new one kept in ``<checkpoints>/resolution-<study>/split.json``; the plan is ``plan``, else the
study's, else one made from the data for this device.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from benchmark.data.defaults import DEFAULT_DATA, ensure_default_data
from benchmark.data.planning import PLAN_FILE, Plan, make_plan
from benchmark.data.preprocessing import PreprocessCache
from benchmark.data.splits import SPLIT_FILE, Split, make_split
from benchmark.evaluation.resolution import SMALL_LESION_ML, case_rows, summarize
from benchmark.paths import check_name, contained
from benchmark.reporting.resolution import FIGURE, TABLE, resolution_figure, table_rows, verdict
from benchmark.training.loop import resolve_device
from benchmark.training.profiles import experiment_of
from benchmark.training.resolution import CPU_GRIDS, STUDY_GRIDS, StudyTraining, free, settings, train_setting
from benchmark.training.search import DEFAULT_CHECKPOINTS, plan_file, split_file
from tracking import runs as tracking


@dataclass
class ResolutionResult:
    """What the stage did: the parent run, the per-setting runs and summaries, and the verdict sentence."""

    run_id: str
    study: str
    runs: dict[str, str] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    verdict: str = ""

    def lines(self) -> list[str]:
        """What the command line prints: one line per setting and the verdict."""
        out = [f"resolution study of '{self.study}': {len(self.runs)} settings under MLflow run {self.run_id}"]
        for r in self.rows:
            out.append(f"  {r['setting']:>12}: Dice {r['dice']:.3f} [{r['dice_low']:.3f}, {r['dice_high']:.3f}], "
                       f"lesions < {SMALL_LESION_ML:g} ml {r['small_dice']:.3f} (n = {r['small_cases']}), "
                       f"HD95 {r['hd95']:.1f} mm, lesion F1 {r['lesion_f1']:.3f}")
        return [*out, self.verdict]


def _split(study: str, data: Path, checkpoints: Path, folder: Path) -> Split:
    for path in (split_file(checkpoints, study), folder / SPLIT_FILE):
        if path.is_file():
            return Split.load(path)
    split = make_split(data)
    split.save(folder / SPLIT_FILE)
    return split


def _plan(plan: str | Path | None, study: str, data: Path, checkpoints: Path, folder: Path,
          training: StudyTraining, progress: bool) -> Plan:
    for path in (plan, plan_file(checkpoints, study), folder / PLAN_FILE):
        if path and Path(path).is_file():
            return Plan.load(path)
    made = make_plan(data, device=resolve_device(training.device).type, architecture=training.architecture,
                     width=training.width, progress=progress)
    made.save(folder / PLAN_FILE)
    return made


def run_resolution_study(data: str | Path = "", study: str = "strokelens", experiment: str = "",
                         grids: Sequence[tuple[int, int, int]] | None = None, native: bool = True,
                         plan: str | Path | None = None, training: StudyTraining | None = None,
                         checkpoints: str | Path = DEFAULT_CHECKPOINTS, progress: bool = True) -> ResolutionResult:
    """Train and score every setting, log them to MLflow (module docstring).

    Args:
        data: the data folder (empty: the synthetic default, generated once).
        study: the study whose split (and plan) is used when it saved one; names the runs and folders.
        experiment: the MLflow experiment (empty: the study's profile's; the runs go to its ``-resolution`` section).
        grids: seed grids (X, Y, Z); None: :data:`~benchmark.training.resolution.STUDY_GRIDS` on CUDA,
            :data:`~benchmark.training.resolution.CPU_GRIDS` on a CPU.
        native: also train the ``native`` setting.
        plan: a ``plan.json`` for the native setting (else the study's, else one made now).
        training: the configuration every setting trains with.
        checkpoints: where ``resolution-<study>/`` goes.
        progress: progress bars.

    Raises:
        ParameterError: a bad name, grid or configuration. DataError: unreadable or unlabelled data.
    """
    check_name(study, "study")
    training = training or StudyTraining()
    training.train_config()  # refuses a bad configuration before any work
    folder_data = Path(data) if data else ensure_default_data(DEFAULT_DATA)[0]
    checkpoints = Path(checkpoints)
    root = contained(checkpoints, f"resolution-{study}", "study")
    root.mkdir(parents=True, exist_ok=True)
    if grids is None:
        grids = STUDY_GRIDS if resolve_device(training.device).type == "cuda" else CPU_GRIDS
    split = _split(study, folder_data, checkpoints, root)
    chosen_plan = _plan(plan, study, folder_data, checkpoints, root, training, progress) if native else None
    chosen = settings(grids, chosen_plan.preprocess() if chosen_plan is not None else None)
    train_refs, val_refs = split.resolve(folder_data)
    tracking.setup(experiment or tracking.default_experiment(experiment_of(study)))
    params = {**asdict(training), "settings": ",".join(s.name for s in chosen),
              "data": str(folder_data), "split": split.digest, "train_cases": len(train_refs),
              "val_cases": len(val_refs), "small_lesion_ml": SMALL_LESION_ML,
              **({"native_spacing": "x".join(f"{v:g}" for v in chosen_plan.spacing),
                  "native_patch": "x".join(map(str, chosen_plan.patch))} if chosen_plan is not None else {})}
    rows_by_setting: dict[str, list[dict]] = {}
    with tracking.resolution_run(study, params) as parent:
        result = ResolutionResult(parent.info.run_id, study)
        tracking.log_split(root / SPLIT_FILE if (root / SPLIT_FILE).is_file() else split_file(checkpoints, study),
                           split.rows(), split.digest, Path(split.data).name, folder_data)
        if chosen_plan is not None:
            tracking.log_json(chosen_plan.to_dict(), PLAN_FILE)
        for setting in chosen:
            cache = PreprocessCache(setting.preprocess)
            train = [cache.get(r) for r in train_refs]
            val = [cache.get(r) for r in val_refs]
            setting_params = {"setting": setting.name, "mode": setting.preprocess.mode,
                              "grid": "x".join(map(str, setting.preprocess.grid)),
                              "normalization": setting.preprocess.normalization}
            with tracking.resolution_setting_run(study, setting.name, setting_params) as run:
                model, history, trained = train_setting(setting, train, val, training, root / setting.name,
                                                        progress)
                for row in history:
                    tracking.log_epoch(row)
                rows = case_rows(model, val, setting.preprocess.window())
                free(model)
                tracking.log_cases(rows)
                tracking.log_summary({"mean_dice": sum(r["dice"] for r in rows) / len(rows),
                                      "seconds_per_epoch": sum(r["epoch_seconds"] for r in history) / len(history),
                                      "retrained": float(trained)})
                rows_by_setting[setting.name] = rows
                result.runs[setting.name] = run.info.run_id
        result.rows = table_rows(summarize(rows_by_setting))
        with tempfile.TemporaryDirectory() as tmp:
            table = Path(tmp) / TABLE
            pd.DataFrame(result.rows).to_csv(table, index=False)
            figure = resolution_figure(result.rows, Path(tmp) / FIGURE)
            tracking.log_artifacts([table, figure], "")
        result.verdict = verdict(pd.DataFrame(result.rows))
        tracking.set_note(result.verdict)
    return result
