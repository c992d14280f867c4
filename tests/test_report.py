"""The leaderboard: clinical rules, perturbations, ranking rules, and the whole pipeline down to the report."""

import base64
import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from benchmark.data.synthetic import write_dataset
from benchmark.errors import DataError, ParameterError
from benchmark.evaluation.clinical_rules import clinical_masks, hemispheres, lateral_axis
from benchmark.evaluation.robustness import perturb
from benchmark.reporting.leaderboard import (
    StudyRuns,
    architecture_table,
    explanation_ranks,
    explanation_table,
    floor_value,
)
from benchmark.reporting.report import MARKER, build_report
from tracking.names import base_experiment
from tracking.records import RunRecord

ROOT = Path(__file__).resolve().parents[1]
STUDY = "lb"


# --- clinical rules and perturbations ----------------------------------------------------------

def _maps(shape=(4, 6, 10)):
    """Brain everywhere; the high-W hemisphere holds a hypoperfused region with a core inside."""
    rcbf = np.full(shape, 0.5, np.float32)  # affected (high-W) hemisphere: low flow overall
    tmax = np.full(shape, 1.0, np.float32)
    rcbf[:, :, 0:5] = 1.0  # healthy (low-W) hemisphere: mean 1.0, core threshold 0.3
    tmax[1:3, 1:4, 6:9] = 9.0  # hypoperfusion in the high-W hemisphere
    rcbf[1:3, 1:4, 6:9] = 0.4  # penumbra: above 0.3
    rcbf[1:3, 2:3, 7:8] = 0.2  # core: below 0.3
    return {"rCBF": rcbf, "Tmax": tmax}


def test_clinical_rules_use_the_contralateral_hemisphere_as_reference():
    maps = _maps()
    masks = clinical_masks(maps, np.eye(4))
    expected_core = np.zeros(maps["rCBF"].shape, bool)
    expected_core[1:3, 2:3, 7:8] = True
    expected_hypo = np.zeros_like(expected_core)
    expected_hypo[1:3, 1:4, 6:9] = True
    assert (masks["core_rcbf30"] == expected_core).all()
    assert (masks["hypoperfusion_tmax6"] == expected_hypo).all()
    assert (masks["core_or_hypoperfusion"] == (expected_core | expected_hypo)).all()
    affected_mean = maps["rCBF"][:, :, 5:].mean()  # the affected side as reference would call no voxel core
    assert not (maps["rCBF"] < 0.3 * affected_mean).any()
    mirrored = clinical_masks({k: v[:, :, ::-1] for k, v in maps.items()}, np.eye(4))  # lesion on the other side
    assert (mirrored["core_rcbf30"] == expected_core[:, :, ::-1]).all()


def test_lateral_axis_follows_the_affine():
    assert lateral_axis(np.eye(4)) == 2  # NIfTI i = world x = array W
    swapped = np.array([[0, 0, 2.0, 0], [0, 1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])
    assert lateral_axis(swapped) == 0  # world x along NIfTI k = array D
    brain = np.zeros((2, 2, 8), bool)
    brain[:, :, 2:8] = True
    low, high = hemispheres(brain, 2)
    assert low.sum() == high.sum() == 12 and not (low & high).any() and ((low | high) == brain).all()


def test_perturbations_have_the_documented_size():
    rng = np.random.default_rng(0)
    image = np.ones((3, 10, 20, 20), np.float32)
    noisy = perturb(image, "noise", rng)
    assert abs(float((noisy - image).std()) - 0.15) < 0.005
    scaled = perturb(image, "noise", rng, scale=np.array([1.0, 2.0, 4.0]))
    assert abs(float((scaled[2] - 1).std()) - 0.6) < 0.02
    zeroed = perturb(image, "zero_half", rng)
    voxel_zero = (zeroed == 0).all(axis=0)
    assert abs(voxel_zero.mean() - 0.5) < 0.03 and ((zeroed == 0).any(axis=0) == voxel_zero).all()


# --- ranking rules on hand-made records --------------------------------------------------------

def _record(run_id, kind, architecture="", state="", metrics=None, params=None, model_run=""):
    tags = {"strokelens.kind": kind, "strokelens.architecture": architecture, "strokelens.state": state,
            "strokelens.model_run": model_run}
    return RunRecord(run_id, run_id, "FINISHED", 0, "", tags, params or {}, metrics or {})


def test_architecture_table_ranks_by_dice_then_hd95_and_counts_trials():
    trials = [_record("t1", "trial", "unet3d", "complete", {"best_val_dice": 0.7, "param_count": 10,
                                                            "seconds_per_epoch": 2.0, "epochs_run": 5}),
              _record("t2", "trial", "unet3d", "pruned", {"best_val_dice": 0.8}),
              _record("t3", "trial", "segresnet3d", "complete", {"best_val_dice": 0.6, "param_count": 20,
                                                                 "seconds_per_epoch": 1.0, "epochs_run": 3}),
              _record("t4", "trial", "segresnet3d", "failed")]
    evaluations = [_record("e1", "evaluation", "unet3d", metrics={"dice_mean": 0.5, "hd95_mean": 9.0},
                           model_run="t1"),
                   _record("e2", "evaluation", "segresnet3d", metrics={"dice_mean": 0.5, "hd95_mean": 4.0},
                           model_run="t3")]
    rules = [_record("b1", "clinical_rule", "core_rcbf30", metrics={"dice_mean": 0.55, "hd95_mean": 30.0})]
    table = architecture_table(StudyRuns("e", "s", trials=trials, evaluations=evaluations, clinical_rules=rules))
    assert list(table["name"]) == ["core_rcbf30", "segresnet3d", "unet3d"]  # equal Dice: lower HD95 first
    assert list(table["rank"]) == [1, 2, 3]
    unet = table[table["name"] == "unet3d"].iloc[0]
    assert (unet["trials"], unet["pruned"], unet["failed"]) == (2, 1, 0)
    assert unet["run_id"] == "e1" and unet["trial_run"] == "t1"  # the evaluated (complete) trial, not the pruned one
    assert unet["train_s"] == 10.0 and unet["params"] == 10
    assert table[table["name"] == "core_rcbf30"].iloc[0]["kind"] == "clinical rule"


def test_explanation_table_ranks_by_faithfulness_and_fair_localisation_within_each_architecture():
    def explanation(run_id, method, filter_name, faith, era, rra, mass=0.5, retained=1.0, seconds=1.0,
                    architecture="unet3d"):
        mode = "post" if filter_name.startswith("post_") else "layer"
        kind = "raw" if filter_name == "raw" else "pass"
        return _record(run_id, "explanation", architecture, params={"method": method, "filter": filter_name,
                                                                    "filter_kind": kind, "filter_mode": mode},
                       metrics={"faithfulness": faith, "evidence_rank_accuracy": era, "relevance_rank_accuracy": rra,
                                "relevance_mass_accuracy": mass, "retained_relevance": retained,
                                "seconds_per_volume": seconds})

    runs = StudyRuns("e", "s", architecture_order=["unet3d", "segresnet3d"], explanations=[
        explanation("x", "lrp_zplus", "raw", 0.1, 0.2, 0.3, architecture="segresnet3d"),
        explanation("a", "lrp_zplus", "raw", 0.5, 0.6, 0.6),
        explanation("b", "lrp_zplus", "pass_0.6_1", 0.3, 0.4, 0.3, mass=0.95, retained=0.05),  # keeps the strongest
        explanation("c", "gradient", "raw", 0.2, 0.3, 0.6, seconds=0.5),
        explanation("d", "random", "raw", 0.0, 0.05, 0.1),
        explanation("e", "prediction", "raw", 0.45, 0.3, 0.9),  # the output copied: lesion localisation loves it
    ])
    table = explanation_table(runs)
    # ranks per key (1 best, ties averaged): a (1, 1, 2.5) → 1.5; e (2, 3.5, 1) → 2.17; b (3, 2, 4) → 3;
    # c (4, 3.5, 2.5) → 3.33; d (5, 5, 5) → 5. The mass accuracy of b (0.95, the highest) does not rank.
    unet = table[table["architecture"] == "unet3d"]
    assert list(unet["run_id"]) == ["a", "e", "b", "c", "d"] and list(unet["rank"]) == [1, 2, 3, 4, 5]
    assert np.allclose(unet["rank_score"], [1.5, 13 / 6, 3.0, 10 / 3, 5.0])
    assert list(table["architecture"]) == ["unet3d"] * 5 + ["segresnet3d"]  # ranked within each architecture
    assert table.iloc[-1]["rank"] == 1
    assert floor_value(table) == 0.0
    assert list(unet["above_floor"]) == [True, True, True, True, False]
    assert list(unet["kind"]) == ["LRP", "reference", "LRP", "baseline", "floor"]
    assert list(unet["mode"]) == ["raw", "raw", "layer", "raw", "raw"]
    assert explanation_ranks(table) == {"a": {"rank": 1.0, "rank_raw": 1.0}, "e": {"rank": 2.0, "rank_raw": 2.0},
                                        "b": {"rank": 3.0}, "c": {"rank": 4.0, "rank_raw": 4.0},
                                        "d": {"rank": 5.0, "rank_raw": 5.0}, "x": {"rank": 1.0, "rank_raw": 1.0}}


def test_report_reads_method_runs_with_filter_tables_and_logs_ranks_back(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    import mlflow

    from benchmark.reporting.leaderboard import collect
    from tracking import runs as tracking
    from tracking.records import Store

    tracking.setup("e")
    with tracking.search_run("s", {}, "default"), tracking.trial_run("s", 0, "unet3d", {}) as trial:
        tracking.set_state("complete")
        tracking.log_summary({"best_val_dice": 0.8})
    with tracking.explain_run(trial.info.run_id, {}, "unet3d"):
        for method, faith in (("lrp_zplus", 0.4), ("random", 0.0)):
            with tracking.explanation_run(method, "unet3d", trial.info.run_id, {"filters": 2}):
                rows = [{"filter": "raw", "filter_kind": "raw", "filter_mode": "layer", "faithfulness": faith,
                         "relevance_rank_accuracy": faith, "blrp_to_ot": float("nan")},
                        {"filter": "post_pass_0.2_1", "filter_kind": "pass", "filter_mode": "post",
                         "faithfulness": faith / 2, "relevance_rank_accuracy": faith / 2, "blrp_to_ot": 0.3}]
                tracking.log_explanation(rows[0], rows[1]["filter"], rows[1], rows)
    runs = collect(Store("e"), "s", tmp_path / "work")
    table = explanation_table(runs)
    assert len(runs.explanations) == 2 and len(table) == 4 and set(table["architecture"]) == {"unet3d"}
    assert list(table["method"][:2]) == ["lrp_zplus", "lrp_zplus"] and table.iloc[-1]["method"] == "random"
    client = mlflow.tracking.MlflowClient()
    method_runs = {r.data.params["method"]: r for r in client.search_runs(
        [client.get_experiment_by_name("e-explanations").experiment_id], "tags.`strokelens.kind` = 'explanation'")}
    lrp = method_runs["lrp_zplus"]
    assert "blrp_to_ot" not in lrp.data.metrics and lrp.data.metrics["best_filter/blrp_to_ot"] == 0.3  # no NaN
    assert lrp.data.tags["strokelens.study"] == "s" and lrp.data.params["architecture"] == "unet3d"
    tracking.log_ranks(explanation_ranks(table))
    ranked = client.get_run(lrp.info.run_id).data.metrics
    assert ranked["rank"] == 1.0 and ranked["rank_raw"] == 1.0
    assert client.get_run(method_runs["random"].info.run_id).data.metrics["rank"] == 3.0


class _EmptyStore:
    """A store whose study has only failed trials, and no explanation."""

    experiment, experiment_id = "e", "1"

    def runs(self, kind, study=None, extra=""):
        return [_record("t", "trial", "unet3d", "failed")] if kind == "trial" else []

    def children(self, parent, kind):
        return []

    def studies(self):
        return []


def test_nothing_to_report_is_an_error_that_says_what_is_missing(tmp_path):
    with pytest.raises(DataError, match="nothing to report.*no trial of study 's' finished"):
        build_report("s", "e", tmp_path, store=_EmptyStore())
    assert not (tmp_path / "s").exists()


class _MemoryStore:
    """A finished study held in memory: a search, two trials, an evaluation with a clinical rule, an explain run."""

    experiment, experiment_id = "e", "1"

    def __init__(self, study, name="unet3d", param="data/isles", message="ok"):
        tags = {"strokelens.study": study}
        search = _record("s1", "search")
        search.tags.update(tags)
        search.params["data"] = param
        trial = _record("t1", "trial", name, "complete", {"best_val_dice": 0.7, "param_count": 10,
                                                           "seconds_per_epoch": 2.0, "epochs_run": 3})
        evaluation = _record("e1", "evaluation", name, metrics={"dice_mean": 0.6, "hd95_mean": 3.0}, model_run="t1")
        rule = _record("b1", "clinical_rule", "core_rcbf30", metrics={"dice_mean": 0.4, "hd95_mean": 9.0})
        explain = _record("x1", "explain", model_run="t1")
        explain.tags.update(tags)
        explanations = [_record(run_id, "explanation", params={"method": method, "filter": "raw"},
                                metrics={"relevance_mass_accuracy": value, "relevance_rank_accuracy": value,
                                         "blrp_to_ot": value})
                        for run_id, method, value in (("r1", f"lrp_{name}", 0.6), ("r2", "random", 0.2))]
        self.by_kind = {"search": [search], "trial": [trial], "evaluate": [_record("v1", "evaluate")],
                        "explain": [explain]}
        self.nested = {("v1", "evaluation"): [evaluation], ("v1", "clinical_rule"): [rule],
                       ("x1", "explanation"): explanations}
        self.cases = {run_id: pd.DataFrame({"case": ["c1", "c2"], "lesion_ml": [1.5, 12.0], "dice": dice})
                      for run_id, dice in (("e1", [0.5, 0.7]), ("b1", [0.3, 0.5]))}
        self.message = message

    def runs(self, kind, study=None, extra=""):
        return self.by_kind.get(kind, [])

    def children(self, parent, kind):
        return self.nested.get((parent.run_id, kind), [])

    def studies(self):
        return []

    def cases_table(self, run_id, destination):
        return self.cases.get(run_id)

    def download(self, run_id, path, destination):
        return None


def test_html_escapes_every_name_param_and_message(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    hostile = "<script>alert('x')</script>&amp"
    study = "a&b<script>"  # no "/" : the study name is a folder
    report = build_report(study, "e", tmp_path, store=_MemoryStore(study, name=hostile, param=f"data {hostile}"))
    page = (report.folder / "leaderboard.html").read_text(encoding="utf-8")
    assert "<script" not in page and "alert('x')" not in page
    escaped = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;amp"
    assert page.count(escaped) >= 3  # the architecture row, the method row, the search's data parameter
    assert "a&amp;b&lt;script&gt;" in page and "a&b<" not in page
    assert re.search(r'<tr class="rule"><td>\d+</td><td class="text">core_rcbf30</td>', page)
    assert re.search(r'<tr class="floor"><td>\d+</td><td class="text">[^<]*</td><td class="text">random</td>', page)
    assert "Tjoa et al." in page  # "the study" is named once, in the footer
    markdown = (report.folder / "leaderboard.md").read_text(encoding="utf-8")
    assert f"| {hostile} |" in markdown and f"lrp_{hostile}" in markdown  # Markdown is text: not escaped


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def test_report_refuses_to_replace_a_folder_that_is_not_a_report(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    mine = tmp_path / "out" / "s"
    (mine / "notes").mkdir(parents=True)
    (mine / "precious.txt").write_text("a week of work")
    (mine / "notes" / "todo.md").write_text("- read the paper")
    before = _tree(mine)
    with pytest.raises(ParameterError, match=r"'.*out/s' already exists and is not a report.*choose another --out or "
                                             "remove the folder"):
        build_report("s", "e", tmp_path / "out", store=_MemoryStore("s"))
    assert _tree(mine) == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s"]  # no temporary folder left
    (tmp_path / "out" / "f").write_text("a file")
    with pytest.raises(ParameterError, match="is a file"):
        build_report("f", "e", tmp_path / "out", store=_MemoryStore("f"))
    assert (tmp_path / "out" / "f").read_text() == "a file"


def test_report_replaces_its_own_earlier_report(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    (tmp_path / "s").mkdir()  # an empty folder holds nothing to lose
    first = build_report("s", "e", tmp_path, store=_MemoryStore("s"))
    assert (first.folder / MARKER).is_file() and (first.folder / "figures" / "dice_by_volume.png").is_file()
    (first.folder / "figures" / "stale.png").write_bytes(b"old")
    second = build_report("s", "e", tmp_path, store=_MemoryStore("s", name="segresnet3d"))
    assert second.folder == first.folder and (second.folder / MARKER).is_file()
    assert not (second.folder / "figures" / "stale.png").exists()
    assert "segresnet3d" in (second.folder / "leaderboard.html").read_text(encoding="utf-8")
    assert all(f.is_file() for f in second.files) and sorted(p.name for p in tmp_path.iterdir()) == ["s"]


# --- the whole pipeline -----------------------------------------------------------------------

def _env(workdir):
    return {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db"}


def _python(workdir, module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=workdir, env=_env(workdir),
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """``mlproject.main`` on 8 small synthetic cases: search → export → evaluate → explain → report."""
    workdir = tmp_path_factory.mktemp("pipeline")
    data = write_dataset(workdir / "data", 8, seed=5, shapes=[(48, 48, 10)], test_cases=0, progress=False)
    result = _python(workdir, "mlproject.main", "--data", str(data), "--study", STUDY, "--trials", "2", "--epochs", "2",
                     "--architectures", "unet3d,segresnet3d", "--widths", "0.125", "--explain-methods",
                     "lrp_zplus_zbox,gradient,random", "--explain-filters", "raw,pass_0_0.2,post_pass_0.2_1",
                     "--explain-cases", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir, result


def _mlflow(workdir):
    """The client and every run of the study's experiment ``strokelens`` and of its sections (``strokelens-…``)."""
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    ids = [e.experiment_id for e in client.search_experiments() if base_experiment(e.name) == "strokelens"]
    return client, client.search_runs(ids, max_results=5000)


def test_pipeline_writes_every_report_file(pipeline):
    workdir, result = pipeline
    folder = workdir / "reports" / STUDY
    for name in ("leaderboard.html", "leaderboard.md", "architectures.csv", "explanations.csv",
                 "architecture_cases.csv", "explanation_cases.csv"):
        assert (folder / name).is_file(), name
    figures = sorted(p.name for p in (folder / "figures").glob("*.png"))
    assert "dice_by_volume.png" in figures and "filter_sweep_faithfulness.png" in figures  # a sweep per key metric
    assert {f"heatmap_{k}.png" for k in ("faithfulness", "evidence_rank_accuracy", "retained_relevance",
                                         "evidence_mass_accuracy", "relevance_mass_accuracy",
                                         "relevance_rank_accuracy", "blrp_to_ot")} <= set(figures)
    assert "architectures_methods.png" in figures  # LRP variants across the architectures' best trials
    assert any(f.startswith("overlay_best_") for f in figures)
    assert {"modalities_blrp_to_ot.png", "modalities_evidence_mass_accuracy.png"} <= set(figures)
    assert f"report: reports/{STUDY}/leaderboard.html" in result.stdout


def test_html_is_self_contained_with_every_figure_embedded(pipeline):
    workdir, _ = pipeline
    folder = workdir / "reports" / STUDY
    page = (folder / "leaderboard.html").read_text(encoding="utf-8")
    assert "<script" not in page and not re.search(r'(src|href)="(?!data:)', page)
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == len(list((folder / "figures").glob("*.png")))
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "How the tables rank" in page and "random floor" in page
    markdown = (folder / "leaderboard.md").read_text(encoding="utf-8")
    for link in re.findall(r"\]\((figures/[^)]+)\)", markdown):
        assert (folder / link).is_file()


def test_architecture_leaderboard_has_networks_rules_and_traceable_numbers(pipeline):
    workdir, _ = pipeline
    table = pd.read_csv(workdir / "reports" / STUDY / "architectures.csv")
    assert set(table[table["kind"] == "network"]["name"]) <= {"unet3d", "segresnet3d"}
    assert set(table[table["kind"] == "clinical rule"]["name"]) == {"core_rcbf30", "hypoperfusion_tmax6",
                                                                    "core_or_hypoperfusion"}
    assert list(table["dice_mean"]) == sorted(table["dice_mean"], reverse=True)
    networks = table[table["kind"] == "network"]
    assert (networks["latency_torch_s"] > 0).all() and (networks["latency_onnx_s"] > 0).all()
    assert networks[["dice_noise_mean", "dice_zero_half_mean", "params", "train_s", "trials"]].notna().all().all()
    client, runs = _mlflow(workdir)
    by_id = {r.info.run_id: r for r in runs}
    for row in table.itertuples():
        run = by_id[row.run_id]
        assert abs(run.data.metrics["dice_mean"] - row.dice_mean) < 1e-9
    cases = pd.read_csv(workdir / "reports" / STUDY / "architecture_cases.csv")
    assert {"case", "lesion_ml", "dice", "dice_noise", "dice_zero_half", "run_id"} <= set(cases.columns)
    assert cases.groupby("name")["case"].nunique().eq(2).all()  # 8 cases → 2 validation cases each


def test_explanation_leaderboard_ranks_methods_and_filters(pipeline):
    workdir, _ = pipeline
    table = pd.read_csv(workdir / "reports" / STUDY / "explanations.csv")
    assert set(table["architecture"]) == {"unet3d", "segresnet3d"}  # every architecture's best trial
    first = table[table["architecture"] == table["architecture"].iloc[0]]
    pairs = set(zip(first["method"], first["filter"]))
    assert {("lrp_zplus_zbox", "raw"), ("lrp_zplus_zbox", "pass_0_0.2"), ("lrp_zplus_zbox", "post_pass_0.2_1"),
            ("gradient", "raw"), ("gradient", "post_pass_0.2_1"), ("random", "raw")} <= pairs
    assert ("gradient", "pass_0_0.2") not in pairs  # baselines take no layer-wise filter
    for _, own in table.groupby("architecture", sort=False):  # ranked within each explained model
        assert list(own["rank"]) == list(range(1, len(own) + 1))
        assert list(own["rank_score"]) == sorted(own["rank_score"])
    assert table.loc[table["method"] == "random", "kind"].eq("floor").all()
    assert "faithfulness_sd" in table.columns and table["retained_relevance"].notna().all()
    client, runs = _mlflow(workdir)
    kinds = {r.info.run_id: r.data.tags.get("strokelens.kind") for r in runs}
    assert all(kinds[r] == "explanation" for r in table["run_id"])
    explained = [r for r in runs if r.data.tags.get("strokelens.kind") == "explanation"]
    assert len(explained) == table["run_id"].nunique() < len(table)  # one run per architecture × method
    for run in explained:  # the report's ranks are logged back; the run names its model
        assert run.data.metrics["rank"] == table[table["run_id"] == run.info.run_id]["rank"].min()
        assert {"strokelens.architecture", "strokelens.model_run", "strokelens.study"} <= set(run.data.tags)


def test_report_run_holds_the_report_in_mlflow(pipeline):
    workdir, _ = pipeline
    client, runs = _mlflow(workdir)
    reports = [r for r in runs if r.data.tags.get("strokelens.kind") == "report"]
    assert len(reports) == 1 and reports[0].data.tags["strokelens.study"] == STUDY
    files = {a.path for a in client.list_artifacts(reports[0].info.run_id, "report")}
    assert {"report/leaderboard.html", "report/leaderboard.md", "report/architectures.csv", "report/figures"} <= files
    evaluations = [r for r in runs if r.data.tags.get("strokelens.kind") == "evaluation"]
    assert evaluations and all("cases.csv" in {a.path for a in client.list_artifacts(r.info.run_id)}
                               for r in evaluations)


def test_report_of_a_missing_study_or_experiment_fails_in_one_line(pipeline):
    workdir, _ = pipeline
    result = _python(workdir, "mlproject.report", "--study", "nope")
    assert result.returncode == 2 and not result.stdout
    assert result.stderr.strip().count("\n") == 0 and "study 'nope'" in result.stderr and STUDY in result.stderr
    result = _python(workdir, "mlproject.report", "--experiment", "absent")
    assert result.returncode == 2 and "experiment 'absent' does not exist" in result.stderr
    assert not (workdir / "reports" / "nope").exists()


def test_report_without_explanations_or_evaluation_builds_what_it_can(pipeline):
    workdir, _ = pipeline
    data = workdir / "data"
    result = _python(workdir, "mlproject.train", "--data", str(data), "--study", "bare", "--trials", "1",
                     "--epochs", "1", "--architectures", "unet3d", "--widths", "0.125", "--no-export")
    assert result.returncode == 0, result.stderr[-2000:]
    result = _python(workdir, "mlproject.report", "--study", "bare")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "missing: no finished explain run" in result.stdout and "missing: no evaluation" in result.stdout
    with open(workdir / "reports" / "bare" / "architectures.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["unet3d"] and rows[0]["source"] == "trial (best epoch)"
    page = (workdir / "reports" / "bare" / "leaderboard.html").read_text(encoding="utf-8")
    assert "No explanation has been computed" in page and "Missing" in page


def test_evaluate_refuses_an_unknown_study_or_bad_repeats(pipeline):
    workdir, _ = pipeline
    result = _python(workdir, "mlproject.evaluate", "--study", "nope")
    assert result.returncode == 2 and "study 'nope' has no search" in result.stderr and STUDY in result.stderr
    result = _python(workdir, "mlproject.evaluate", "--study", STUDY, "--repeats", "0")
    assert result.returncode == 2 and "repeats must be at least 1" in result.stderr
    result = _python(workdir, "mlproject.evaluate", "--study", STUDY, "--data", str(workdir / "absent"))
    assert result.returncode == 2 and "absent" in result.stderr and "--data" in result.stderr


def test_report_cli_leaves_a_users_folder_untouched_in_one_line(pipeline):
    workdir, _ = pipeline
    mine = workdir / "mine" / STUDY
    mine.mkdir(parents=True)
    (mine / "precious.txt").write_text("a week of work")
    result = _python(workdir, "mlproject.report", "--study", STUDY, "--out", str(workdir / "mine"))
    assert result.returncode == 2 and not result.stdout and result.stderr.strip().count("\n") == 0
    assert "is not a report" in result.stderr and "choose another --out or remove the folder" in result.stderr
    assert [p.name for p in mine.iterdir()] == ["precious.txt"] and (mine / "precious.txt").read_text() == \
        "a week of work"
    assert (workdir / "reports" / STUDY / MARKER).is_file()  # the pipeline's own report carries the marker
