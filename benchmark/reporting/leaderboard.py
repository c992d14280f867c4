"""The leaderboard tables of a study, built from its MLflow runs, and the rules that rank them.

Architectures (and the clinical threshold rules beside them) are ranked by validation Dice
(mean over cases, higher first); ties go to the lower HD95, then to fewer parameters.

Explanations (method × filter) are ranked by their mean rank over the key metrics
:func:`key_metrics` (evidence mass accuracy when the data has ground-truth evidence, relevance
mass accuracy, relevance rank accuracy, the study's lesion coverage bLRPtoOT; rank 1 is best, tied
values share their average rank); ties go to the higher primary metric (the first key), then to
the faster method. The ``random`` method's unfiltered primary metric is the floor: a row at or
below it explains no better than chance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.evaluation.statistics import ALPHA, bootstrap_ci, holm, paired_test
from tracking import runs as tracking
from tracking.records import RunRecord, Store, best_trial_per_architecture

ARCHITECTURE_METRICS = ("dice", "hd95", "assd", "lesion_f1", "volume_diff_ml", "dice_noise", "dice_zero_half")
EXPLANATION_METRICS = ("evidence_mass_accuracy", "relevance_mass_accuracy", "relevance_rank_accuracy", "blrp_to_ot",
                       "blrp_to_bx", "pointing_game", "modality_attribution_accuracy", "sparseness", "faithfulness",
                       "randomisation_spearman", "conservation_error", "seconds_per_volume")
FLOOR_METHOD = "random"
LRP_FILTER_KINDS = ("pass", "clamp")


@dataclass
class StudyRuns:
    """Everything the report reads of one study, with what was not found.

    Attributes:
        searches: the study's search runs, newest first.
        trials: its trial runs.
        evaluations, clinical_rules: the nested runs of the newest ``evaluate`` run.
        cases: per-case tables of evaluation, clinical-rule and explain runs, by run id.
        explain: the explain runs whose explanations are shown (newest first, one model).
        explanations: one run per method × filter (the newest).
        missing: plain sentences saying what is missing and why.
    """

    experiment: str
    study: str
    searches: list[RunRecord] = field(default_factory=list)
    trials: list[RunRecord] = field(default_factory=list)
    evaluations: list[RunRecord] = field(default_factory=list)
    clinical_rules: list[RunRecord] = field(default_factory=list)
    cases: dict[str, pd.DataFrame] = field(default_factory=dict)
    explain: list[RunRecord] = field(default_factory=list)
    explanations: list[RunRecord] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """Nothing to report: no trial with a result and no explanation."""
        return not any(not math.isnan(t.metric("best_val_dice")) for t in self.trials) and not self.explanations

    def explanation_cases(self) -> pd.DataFrame | None:
        """Per-case explanation metrics of the shown explanation runs (``run_id`` column), or None."""
        kept = {r.run_id for r in self.explanations}
        tables = [t[t["run_id"].isin(kept)] for r in self.explain if (t := self.cases.get(r.run_id)) is not None]
        return pd.concat(tables, ignore_index=True) if tables else None


def collect(store: Store, study: str, workdir: Path) -> StudyRuns:
    """Read a study's runs (``workdir`` receives downloaded tables); what is absent goes to ``missing``."""
    runs = StudyRuns(store.experiment, study)
    if store.experiment_id is None:
        runs.missing.append(f"MLflow experiment '{store.experiment}' does not exist in {tracking.tracking_uri()}: "
                            "run the search (mlflow run . -e train) or pass --experiment")
        return runs
    runs.searches = store.runs("search", study)
    runs.trials = store.runs("trial", study)
    if not runs.searches and not runs.trials:
        known = ", ".join(store.studies()) or "none"
        runs.missing.append(f"study '{study}' has no search in experiment '{store.experiment}' (studies there: "
                            f"{known}): run mlflow run . -e train -P study={study} or pass --study")
    elif not any(t.state == tracking.STATE_COMPLETE for t in runs.trials):
        runs.missing.append(f"no trial of study '{study}' finished (states: "
                            f"{', '.join(sorted({t.state or 'running' for t in runs.trials})) or 'no trials'}); "
                            "pruned trials are shown where they reported a validation Dice")
    evaluate = [r for r in store.runs("evaluate", study) if r.status == "FINISHED"]
    if evaluate:
        runs.evaluations = store.children(evaluate[0], "evaluation")
        runs.clinical_rules = store.children(evaluate[0], "clinical_rule")
        for r in runs.evaluations + runs.clinical_rules:
            table = store.cases_table(r.run_id, workdir)
            if table is not None:
                runs.cases[r.run_id] = table
    elif runs.trials:
        runs.missing.append("no evaluation of this study: the architecture table shows each trial's validation "
                            "metrics at its best epoch, without sd, robustness, latency or clinical baselines; "
                            f"run mlflow run . -e evaluate -P study={study}")
    _collect_explanations(store, runs, workdir)
    return runs


def _collect_explanations(store: Store, runs: StudyRuns, workdir: Path) -> None:
    trial_ids = {t.run_id for t in runs.trials}
    parents = [r for r in store.runs("explain")
               if r.status == "FINISHED" and (r.model_run in trial_ids or r.tags.get(tracking.TAG_STUDY) == runs.study)]
    if not parents:
        runs.missing.append("no finished explain run for a model of this study: the explanation leaderboard is "
                            "empty; run mlflow run . -e explain")
        return
    model_run = parents[0].model_run
    runs.explain = [p for p in parents if p.model_run == model_run]
    seen: set[tuple[str, str]] = set()
    for parent in runs.explain:
        for child in store.children(parent, "explanation"):
            key = (child.params.get("method", ""), child.params.get("filter", ""))
            if key not in seen:
                seen.add(key)
                runs.explanations.append(child)
        table = store.cases_table(parent.run_id, workdir)
        if table is not None:
            runs.cases[parent.run_id] = table
    if runs.explanation_cases() is None:
        runs.missing.append("the explain runs logged no per-case table: best and worst cases and sd are not shown "
                            "(explain again with this version)")
    if not any(k[0] == FLOOR_METHOD for k in seen):
        runs.missing.append(f"the method '{FLOOR_METHOD}' was not explained: there is no random floor; add it to "
                            "--methods")


def _trial_counts(trials: list[RunRecord], architecture: str) -> dict[str, int]:
    own = [t for t in trials if t.architecture == architecture]
    return {"trials": len(own), "pruned": sum(t.state == tracking.STATE_PRUNED for t in own),
            "failed": sum(t.state == tracking.STATE_FAILED for t in own)}


def architecture_table(runs: StudyRuns) -> pd.DataFrame:
    """One row per architecture (its best trial) and per clinical rule, ranked (module docstring).

    Columns: rank, name, kind (network / clinical rule), ``<metric>_mean`` and ``<metric>_sd`` of
    :data:`ARCHITECTURE_METRICS`, params, epochs and train_s (the budget of the row's trial: epochs trained and
    their seconds), latency_torch_s, latency_onnx_s, trials,
    pruned, failed, source (evaluation / trial) and run_id (the run the numbers come from).
    """
    rows = []
    by_run = {t.run_id: t for t in runs.trials}
    evaluated = {e.architecture: e for e in runs.evaluations}
    for architecture, best in best_trial_per_architecture(runs.trials).items():
        evaluation = evaluated.get(architecture)
        trial = by_run.get(evaluation.model_run, best) if evaluation else best
        row = {"name": architecture, "kind": "network", **_trial_counts(runs.trials, architecture),
               "params": trial.metric("param_count"),
               "epochs": trial.metric("epochs_run"),
               "train_s": trial.metric("seconds_per_epoch") * trial.metric("epochs_run"),
               "trial_run": trial.run_id}
        if evaluation is not None:
            row.update(_means(evaluation))
            row.update(latency_torch_s=evaluation.metric("latency_torch_s"),
                       latency_onnx_s=evaluation.metric("latency_onnx_s"), source="evaluation",
                       run_id=evaluation.run_id)
        else:
            at_best = tracking.best_epoch_metrics(trial.run_id)
            row.update({f"{k}_mean": at_best.get(f"val_{k}", at_best.get(k, math.nan)) for k in ARCHITECTURE_METRICS},
                       source="trial (best epoch)", run_id=trial.run_id)
        rows.append(row)
    for rule in runs.clinical_rules:
        rows.append({"name": rule.architecture, "kind": "clinical rule", **_means(rule), "source": "evaluation",
                     "run_id": rule.run_id})
    columns = ["name", "kind", *[f"{k}_{s}" for k in ARCHITECTURE_METRICS for s in ("mean", "sd")], "params",
               "epochs", "train_s", "latency_torch_s", "latency_onnx_s", "trials", "pruned", "failed", "source",
               "run_id", "trial_run"]
    table = pd.DataFrame(rows).reindex(columns=columns)
    if table.empty:
        return table.assign(rank=pd.Series(dtype=int))[["rank", *columns]]
    table = table.sort_values(["dice_mean", "hd95_mean", "params"], ascending=[False, True, True],
                              na_position="last", kind="stable").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return compare_with_best(table, runs.cases)


def compare_with_best(table: pd.DataFrame, cases: dict[str, pd.DataFrame], metric: str = "dice") -> pd.DataFrame:
    """Add the 95 % bootstrap interval of each row's mean ``metric`` and its paired test against the best row.

    Columns added: ``<metric>_ci_low``, ``<metric>_ci_high``, ``n_cases`` (the per-case table of the
    row's run), ``p_vs_best`` (Wilcoxon signed-rank over the cases both rows scored, Holm-corrected
    over the other rows; :mod:`benchmark.evaluation.statistics`) and ``tied_with_best`` (p ≥
    :data:`~benchmark.evaluation.statistics.ALPHA`: the data cannot tell the row from the best). The
    best row is the first; rows without a per-case table (a trial's best epoch only) get NaN.
    """
    per_case = [_per_case(cases.get(run_id), metric) for run_id in table.get("run_id", [])]
    intervals = [bootstrap_ci(v.to_numpy()) if v is not None else None for v in per_case]
    table = table.assign(**{f"{metric}_ci_low": [i.low if i else math.nan for i in intervals],
                            f"{metric}_ci_high": [i.high if i else math.nan for i in intervals],
                            "n_cases": [i.n if i else math.nan for i in intervals]})
    best = per_case[0] if per_case else None
    raw = {}
    for index, values in enumerate(per_case[1:], start=1):
        if best is not None and values is not None:
            common = best.index.intersection(values.index)
            if len(common):
                raw[index] = paired_test(best[common].to_numpy(), values[common].to_numpy())
    adjusted = dict(zip(raw, holm(list(raw.values()))))
    p = [adjusted.get(i, math.nan) for i in range(len(table))]
    tied = [math.nan if not math.isfinite(v) else float(v >= ALPHA) for v in p]
    if best is not None and len(tied):
        tied[0] = math.nan
    return table.assign(p_vs_best=p, tied_with_best=tied)


def _per_case(frame: pd.DataFrame | None, metric: str) -> pd.Series | None:
    """A per-case table's ``metric`` indexed by case, or None when the table lacks it."""
    if frame is None or metric not in frame or "case" not in frame:
        return None
    return frame.set_index(frame["case"].astype(str))[metric].astype(float)


def _means(run: RunRecord) -> dict[str, float]:
    return {f"{k}_{s}": run.metric(f"{k}_{s}") for k in ARCHITECTURE_METRICS for s in ("mean", "sd")}


def key_metrics(columns) -> list[str]:
    """The explanation metrics that rank, primary first (module docstring)."""
    keys = ["relevance_mass_accuracy", "relevance_rank_accuracy", "blrp_to_ot"]
    if "evidence_mass_accuracy" in columns:
        keys.insert(0, "evidence_mass_accuracy")
    return [k for k in keys if k in columns]


def filter_mode(params: dict) -> str:
    """``raw``, ``layer`` or ``post`` for an explanation run's parameters."""
    return "raw" if params.get("filter_kind", "raw") == "raw" else params.get("filter_mode", "layer")


def explanation_table(runs: StudyRuns) -> pd.DataFrame:
    """One row per method × filter, ranked (module docstring).

    Columns: rank, method, filter, mode (raw / layer / post), kind (LRP / baseline / floor),
    rank_score (mean rank over the key metrics), the means of :data:`EXPLANATION_METRICS`,
    ``<primary>_sd`` over cases, above_floor and run_id.
    """
    from explain.attribution import is_lrp

    rows = []
    for r in runs.explanations:
        method = r.params.get("method", "")
        kind = "floor" if method == FLOOR_METHOD else "LRP" if is_lrp(method) else "baseline"
        rows.append({"method": method, "filter": r.params.get("filter", ""), "mode": filter_mode(r.params),
                     "kind": kind, **{k: r.metric(k) for k in EXPLANATION_METRICS}, "run_id": r.run_id})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table = table.dropna(axis=1, how="all")
    keys = key_metrics(table.columns)
    primary = keys[0]
    per_case = runs.explanation_cases()
    if per_case is not None and primary in per_case:
        spread = per_case.groupby("run_id")[primary].std(ddof=1)
        table[f"{primary}_sd"] = table["run_id"].map(spread)
    ranks = table[keys].rank(ascending=False, method="average")
    table.insert(4, "rank_score", ranks.mean(axis=1))
    floor = floor_value(table, primary)
    table["above_floor"] = table[primary] > floor if math.isfinite(floor) else np.nan
    sort_by = ["rank_score", primary] + (["seconds_per_volume"] if "seconds_per_volume" in table else [])
    table = table.sort_values(sort_by, ascending=[True, False] + [True] * (len(sort_by) - 2),
                              kind="stable").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table


def floor_value(table: pd.DataFrame, metric: str = "") -> float:
    """The random floor of a metric (default the primary one): the unfiltered random row's value, or NaN."""
    if table.empty:
        return math.nan
    metric = metric or key_metrics(table.columns)[0]
    floor = table[(table["method"] == FLOOR_METHOD) & (table["mode"] == "raw")][metric]
    return float(floor.iloc[0]) if len(floor) else math.nan


def case_extremes(runs: StudyRuns, table: pd.DataFrame) -> list[tuple[str, str, str, float]]:
    """(label, method, case, primary value) for the best and worst case of the best-ranked method's raw run."""
    per_case = runs.explanation_cases()
    if table.empty or per_case is None:
        return []
    primary = key_metrics(table.columns)[0]
    candidates = table[(table["method"] != FLOOR_METHOD)]
    if candidates.empty:
        return []
    method = candidates.iloc[0]["method"]
    raw = per_case[(per_case["method"] == method) & (per_case["filter"] == "raw")]
    if raw.empty or primary not in raw:
        return []
    ordered = raw.sort_values(primary, ascending=False, kind="stable")
    best, worst = ordered.iloc[0], ordered.iloc[-1]
    out = [("best", method, str(best["case"]), float(best[primary]))]
    if worst["case"] != best["case"]:
        out.append(("worst", method, str(worst["case"]), float(worst[primary])))
    return out


def modality_table(runs: StudyRuns, metric: str = "blrp_to_ot") -> pd.DataFrame:
    """Per method (unfiltered), a per-modality metric (``<metric>_<modality>``): which map's relevance does what.

    Rows are methods in the order of ``runs.explanations``, columns the modalities in logged order.
    """
    rows = {}
    for r in runs.explanations:
        if filter_mode(r.params) != "raw":
            continue
        values = {k[len(metric) + 1:]: v for k, v in r.metrics.items() if k.startswith(f"{metric}_")}
        if values:
            rows[r.params.get("method", "")] = values
    return pd.DataFrame.from_dict(rows, orient="index")
