"""The leaderboard tables of a study, built from its MLflow runs, and the rules that rank them.

Architectures (and the clinical threshold rules beside them) are ranked by validation Dice
(mean over cases, higher first); ties go to the lower HD95, then to fewer parameters.

Explanations (method × filter) are ranked within each explained model (one per architecture,
its best trial; architectures in the order of their best validation Dice) by their mean rank over
the key metrics :func:`key_metrics` (rank 1 is best, tied values share their average rank, a row
without a key metric takes the last rank there); ties go to the higher primary metric (the first
key), then to the faster method. The keys are chosen so that an explainer cannot win by
discarding relevance or by restating the prediction:

* ``faithfulness`` (primary): region perturbation AOPC MoRF − LeRF with per-modality regions,
  on every row at one setting (:mod:`explain.assessment`). A map that keeps one voxel leaves every
  other region tied, so MoRF and LeRF remove them in the same order and the score is near 0; a map
  copied to every modality cannot say which modality to remove first.
* ``evidence_rank_accuracy`` (data with ground-truth evidence only): localisation per modality,
  ties counted with their expected share, so zeros left by a filter score chance, and relevance
  copied to every modality scores the share of evidence among the tied modalities.
* ``relevance_rank_accuracy``: localisation on the lesion with the same fair ties.

Mass accuracies (which rise when a filter discards relevance) are shown beside
``retained_relevance`` = Σ|R_filtered| / Σ|R_raw|, the share of relevance the filter kept, and do
not rank. Two reference rows are ranked like any method: the ``random`` floor (its unfiltered
primary metric is the floor: a row at or below it explains no better than chance) and
``prediction``, the model's lesion probability copied to every modality, which any lesion
localisation rewards; a method ranked below it adds nothing to the segmentation it explains. On
data without evidence maps only ``faithfulness`` and ``relevance_rank_accuracy`` rank, and the
``prediction`` row may lead: the report says so.

Runs: an explain run (one per explained model) has one nested run per method with every filter's
means in its ``filters.json`` table (:data:`tracking.runs.FILTER_TABLE`); the report reads those
tables (and the older layout of one run per method × filter) and logs each row's rank back onto
its method run (:func:`explanation_ranks`), and each architecture row's rank onto its evaluation,
clinical-rule and trial runs (:func:`leaderboard_ranks`).
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
EXPLANATION_METRICS = ("faithfulness", "evidence_rank_accuracy", "relevance_rank_accuracy", "retained_relevance",
                       "evidence_mass_accuracy", "relevance_mass_accuracy", "blrp_to_ot", "blrp_to_bx", "pointing_game",
                       "modality_attribution_accuracy", "sparseness", "aopc_morf", "aopc_lerf",
                       "randomisation_spearman", "conservation_error", "seconds_per_volume")
RANKING_METRICS = ("faithfulness", "evidence_rank_accuracy", "relevance_rank_accuracy")
"""The key metrics, primary first, where present (module docstring)."""
FLOOR_METHOD = "random"
REFERENCE_METHOD = "prediction"
LRP_FILTER_KINDS = ("pass", "clamp")


@dataclass
class StudyRuns:
    """Everything the report reads of one study, with what was not found.

    Attributes:
        searches: the study's search runs, newest first.
        trials: its trial runs.
        evaluations, clinical_rules: the nested runs of the newest ``evaluate`` run.
        cases: per-case tables of evaluation, clinical-rule and explain runs, by run id.
        explain: the explain runs whose explanations are shown (newest first; one model per architecture).
        explanations: the method runs (or, in the older layout, method × filter runs) shown.
        explanation_rows: one row per architecture × method × filter (``architecture``, ``method``,
            ``filter``, ``filter_kind``, ``filter_mode``, the mean metrics and the method run's ``run_id``),
            or None to derive them from ``explanations`` (:func:`explanation_rows`).
        architecture_order: architectures, best validation Dice first (the order of the explanation tables).
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
    explanation_rows: pd.DataFrame | None = None
    architecture_order: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """Nothing to report: no trial with a result and no explanation."""
        return (not any(not math.isnan(t.metric("best_val_dice")) for t in self.trials) and not self.explanations
                and (self.explanation_rows is None or self.explanation_rows.empty))

    def explanation_cases(self) -> pd.DataFrame | None:
        """Per-case explanation metrics of the shown explanation runs (``run_id`` column), or None."""
        kept = {r.run_id for r in self.explanations}
        if self.explanation_rows is not None and "run_id" in self.explanation_rows:
            kept |= set(self.explanation_rows["run_id"])
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
    """Per architecture, the newest finished explain run of one of its trials, with its method runs' tables."""
    by_trial = {t.run_id: t for t in runs.trials}
    best = best_trial_per_architecture(runs.trials)
    runs.architecture_order = [a for a, _ in sorted(best.items(), key=lambda item: -item[1].metric("best_val_dice"))]
    parents = [r for r in store.runs("explain")
               if r.status == "FINISHED" and (r.model_run in by_trial or r.tags.get(tracking.TAG_STUDY) == runs.study)]
    if not parents:
        runs.missing.append("no finished explain run for a model of this study: the explanation leaderboard is "
                            "empty; run mlflow run . -e explain")
        return
    chosen: dict[str, str] = {}  # architecture → the model run shown (the newest explain run's)
    for parent in parents:
        trial = by_trial.get(parent.model_run)
        architecture = parent.architecture or (trial.architecture if trial else "") or "model"
        chosen.setdefault(architecture, parent.model_run)
        if chosen[architecture] == parent.model_run:
            runs.explain.append(parent)
    frames, seen = [], set()
    for parent in runs.explain:
        trial = by_trial.get(parent.model_run)
        architecture = parent.architecture or (trial.architecture if trial else "") or "model"
        for child in store.children(parent, "explanation"):
            rows = _method_rows(store, child, workdir)
            key = (architecture, child.params.get("method", ""), child.params.get("filter", ""))
            if rows is None or key in seen:
                continue
            seen.add(key)
            runs.explanations.append(child)
            frames.append(rows.assign(architecture=architecture, run_id=child.run_id))
        table = store.cases_table(parent.run_id, workdir)
        if table is not None:
            runs.cases[parent.run_id] = table
    runs.explanation_rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    for architecture in dict.fromkeys(a for a, _ in chosen.items()):
        if architecture not in runs.architecture_order:
            runs.architecture_order.append(architecture)
    if runs.explanation_cases() is None:
        runs.missing.append("the explain runs logged no per-case table: best and worst cases and sd are not shown "
                            "(explain again with this version)")
    methods = set(runs.explanation_rows["method"]) if len(runs.explanation_rows) else set()
    if FLOOR_METHOD not in methods:
        runs.missing.append(f"the method '{FLOOR_METHOD}' was not explained: there is no random floor; add it to "
                            "--methods")


def _method_rows(store: Store, run: RunRecord, workdir: Path) -> pd.DataFrame | None:
    """One row per filter of a method run (its ``filters.json`` table), or its own metrics (older layout)."""
    if "filter" in run.params:  # the older layout: one run per method × filter
        return pd.DataFrame([_legacy_row(run)])
    table = store.filter_table(run.run_id, workdir) if hasattr(store, "filter_table") else None
    if table is None or table.empty:
        return None
    return table.assign(method=run.params.get("method", ""))


def _legacy_row(run: RunRecord) -> dict:
    return {"method": run.params.get("method", ""), "filter": run.params.get("filter", ""),
            "filter_kind": run.params.get("filter_kind", "raw" if run.params.get("filter") == "raw" else "pass"),
            "filter_mode": run.params.get("filter_mode", "layer"), **run.metrics}


def explanation_rows(runs: StudyRuns) -> pd.DataFrame:
    """``runs.explanation_rows``, or one row per run of ``runs.explanations`` (older layout) when it is None."""
    if runs.explanation_rows is not None:
        return runs.explanation_rows
    rows = [{**_legacy_row(r), "architecture": r.architecture or "model", "run_id": r.run_id}
            for r in runs.explanations]
    return pd.DataFrame(rows)


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
    """The explanation metrics that rank, primary first (module docstring): those of :data:`RANKING_METRICS` present.

    A table of older runs without any of them ranks by relevance mass accuracy and bLRPtoOT instead.
    """
    keys = [k for k in RANKING_METRICS if k in columns]
    return keys or [k for k in ("evidence_mass_accuracy", "relevance_mass_accuracy", "blrp_to_ot") if k in columns]


def filter_mode(params: dict) -> str:
    """``raw``, ``layer`` or ``post`` for an explanation row's (or older run's) parameters."""
    return "raw" if params.get("filter_kind", "raw") == "raw" else params.get("filter_mode", "layer")


def method_kind(method: str) -> str:
    """``floor`` (random), ``reference`` (prediction), ``LRP`` or ``baseline``."""
    from explain.attribution import is_lrp

    if method == FLOOR_METHOD:
        return "floor"
    if method == REFERENCE_METHOD:
        return "reference"
    return "LRP" if is_lrp(method) else "baseline"


def rank_rows(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (rows of one model) with ``rank_score`` and ``rank``, sorted (module docstring)."""
    keys = key_metrics(table.columns)
    primary = keys[0]
    ranks = table[keys].rank(ascending=False, method="average", na_option="bottom")
    table = table.assign(rank_score=ranks.mean(axis=1))
    sort_by = ["rank_score", primary] + (["seconds_per_volume"] if "seconds_per_volume" in table else [])
    table = table.sort_values(sort_by, ascending=[True, False] + [True] * (len(sort_by) - 2),
                              kind="stable", na_position="last").reset_index(drop=True)
    return table.assign(rank=np.arange(1, len(table) + 1))


def explanation_table(runs: StudyRuns) -> pd.DataFrame:
    """One row per architecture × method × filter, ranked within each architecture (module docstring).

    Columns: rank (within the architecture), architecture, method, filter, mode (raw / layer / post),
    kind (LRP / baseline / reference / floor), rank_score (mean rank over the key metrics), the means
    of :data:`EXPLANATION_METRICS`, ``<primary>_sd`` over cases, above_floor (the primary metric above
    the architecture's random floor) and run_id (the method run). Architectures follow
    ``runs.architecture_order``.
    """
    rows = explanation_rows(runs)
    if rows.empty:
        return pd.DataFrame()
    rows = rows.assign(mode=[filter_mode({"filter_kind": k, "filter_mode": m})
                             for k, m in zip(rows.get("filter_kind", ["raw"] * len(rows)),
                                             rows.get("filter_mode", ["layer"] * len(rows)))],
                       kind=[method_kind(m) for m in rows["method"]])
    metrics = [k for k in EXPLANATION_METRICS if k in rows]
    table = rows[["architecture", "method", "filter", "mode", "kind", *metrics, "run_id"]].copy()
    table = table.dropna(axis=1, how="all")
    keys = key_metrics(table.columns)
    if not keys:
        return pd.DataFrame()
    primary = keys[0]
    per_case = runs.explanation_cases()
    if per_case is not None and primary in per_case:
        by = ["run_id", "filter"] if "filter" in per_case else ["run_id"]
        spread = per_case.groupby(by)[primary].std(ddof=1)
        index = list(zip(table["run_id"], table["filter"])) if len(by) == 2 else list(table["run_id"])
        table[f"{primary}_sd"] = [spread.get(i, math.nan) for i in index]
    order = list(dict.fromkeys([*runs.architecture_order, *table["architecture"]]))
    parts = []
    for architecture in order:
        own = table[table["architecture"] == architecture]
        if own.empty:
            continue
        ranked = rank_rows(own)
        floor = floor_value(ranked, primary)
        ranked["above_floor"] = ranked[primary] > floor if math.isfinite(floor) else np.nan
        parts.append(ranked)
    table = pd.concat(parts, ignore_index=True)
    leading = ["rank", "architecture", "method", "filter", "mode", "kind", "rank_score"]
    return table[leading + [c for c in table.columns if c not in leading]]


def floor_value(table: pd.DataFrame, metric: str = "") -> float:
    """The random floor of a metric (default the primary one) for the first architecture in ``table``, or NaN."""
    if table.empty:
        return math.nan
    metric = metric or key_metrics(table.columns)[0]
    if "architecture" in table:
        table = table[table["architecture"] == table["architecture"].iloc[0]]
    floor = table[(table["method"] == FLOOR_METHOD) & (table["mode"] == "raw")][metric]
    return float(floor.iloc[0]) if len(floor) else math.nan


def first_architecture(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of the first (best) architecture of an explanation table."""
    if table.empty or "architecture" not in table:
        return table
    return table[table["architecture"] == table["architecture"].iloc[0]]


def best_explained(table: pd.DataFrame) -> pd.Series | None:
    """The best-ranked row of the first architecture that is neither the floor nor the reference, or None."""
    candidates = first_architecture(table)
    candidates = candidates[~candidates["kind"].isin(("floor", "reference"))] if "kind" in candidates else candidates
    return None if candidates.empty else candidates.iloc[0]


def case_extremes(runs: StudyRuns, table: pd.DataFrame) -> list[tuple[str, str, str, float]]:
    """(label, method, case, primary value) for the best and worst case of the best-ranked method's raw run."""
    per_case = runs.explanation_cases()
    top = best_explained(table)
    if top is None or per_case is None:
        return []
    primary = key_metrics(table.columns)[0]
    method = top["method"]
    raw = per_case[(per_case["run_id"] == top["run_id"]) & (per_case["filter"] == "raw")]
    if raw.empty:  # the older layout: another run holds the raw row
        raw = per_case[(per_case["method"] == method) & (per_case["filter"] == "raw")]
    if raw.empty or primary not in raw:
        return []
    ordered = raw.sort_values(primary, ascending=False, kind="stable")
    best, worst = ordered.iloc[0], ordered.iloc[-1]
    out = [("best", method, str(best["case"]), float(best[primary]))]
    if worst["case"] != best["case"]:
        out.append(("worst", method, str(worst["case"]), float(worst[primary])))
    return out


def modality_table(runs: StudyRuns, metric: str = "blrp_to_ot", architecture: str = "") -> pd.DataFrame:
    """Per method (unfiltered), a per-modality metric (``<metric>_<modality>``): which map's relevance does what.

    Rows are the methods of ``architecture`` (default the first explained) in logged order, columns
    the modalities in logged order.
    """
    rows = explanation_rows(runs)
    if rows.empty:
        return pd.DataFrame()
    architecture = architecture or next((a for a in runs.architecture_order if a in set(rows["architecture"])),
                                        rows["architecture"].iloc[0])
    own = rows[(rows["architecture"] == architecture) & (rows["filter"] == "raw")]
    out = {}
    for _, row in own.iterrows():
        values = {k[len(metric) + 1:]: v for k, v in row.items()
                  if isinstance(k, str) and k.startswith(f"{metric}_") and isinstance(v, (int, float))
                  and math.isfinite(v)}
        if values:
            out[row["method"]] = values
    return pd.DataFrame.from_dict(out, orient="index")


def explanation_ranks(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per method run of ``table``: ``rank`` (its best row's rank within its architecture) and ``rank_raw``."""
    ranks: dict[str, dict[str, float]] = {}
    for run_id, own in table.groupby("run_id", sort=False):
        out = {"rank": float(own["rank"].min())}
        raw = own[own["mode"] == "raw"]["rank"]
        if len(raw):
            out["rank_raw"] = float(raw.iloc[0])
        ranks[str(run_id)] = out
    return ranks


def leaderboard_ranks(architectures: pd.DataFrame, explanations: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per run the report ranks, the ranks it logs back onto that run as metrics (so the MLflow UI sorts by them).

    * an evaluation or clinical-rule run: ``rank``, its row's place in the architecture table (1 is best);
    * a network row's trial run: ``leaderboard_rank``, the same place (the trials table then shows which
      trial of each architecture the leaderboard uses);
    * an explanation (method) run: ``rank`` and ``rank_raw`` within its model (:func:`explanation_ranks`)
      and ``architecture_rank``, its architecture's place in the architecture table, so one LRP variant
      compares across models.
    """
    ranks: dict[str, dict[str, float]] = {}
    by_architecture: dict[str, float] = {}
    for row in architectures.itertuples() if not architectures.empty else ():
        rank = float(row.rank)
        if row.source == "evaluation" and isinstance(row.run_id, str) and row.run_id:
            ranks.setdefault(row.run_id, {})["rank"] = rank
        if row.kind == "network":
            by_architecture[row.name] = rank
            if isinstance(row.trial_run, str) and row.trial_run:
                ranks.setdefault(row.trial_run, {})["leaderboard_rank"] = rank
    if not explanations.empty:
        for run_id, values in explanation_ranks(explanations).items():
            ranks.setdefault(run_id, {}).update(values)
        for run_id, architecture in zip(explanations["run_id"], explanations["architecture"]):
            if architecture in by_architecture:
                ranks.setdefault(str(run_id), {})["architecture_rank"] = by_architecture[architecture]
    return ranks
