"""The MLflow layout a person reads: runs grouped by kind into described experiments, linked by tags, ranks logged back.

Fast: the runs are made with :mod:`tracking.runs`' own context managers on a temporary SQLite store
(no training), then read back the way the report and the stages read them (:class:`tracking.records.Store`).
"""

import math

import pytest
from mlflow.tracking import MlflowClient

from benchmark.reporting.leaderboard import architecture_table, collect, explanation_table, leaderboard_ranks
from tracking import runs as tracking
from tracking.names import SECTIONS, base_experiment, experiment_for, section_of
from tracking.records import Store


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A study ``s`` in experiment ``e``: a search with two trials, an export, an evaluation, explanations, a report."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    tracking.setup("e")
    ids = {}
    with tracking.search_run("s", {"trials": 2}, "default") as search:
        ids["search"] = search.info.run_id
        for number, (architecture, dice) in enumerate((("unet3d", 0.8), ("segresnet3d", 0.6))):
            with tracking.trial_run("s", number, architecture, {"architecture": architecture}) as trial:
                for epoch in range(3):
                    tracking.log_epoch({"epoch": epoch, "val_dice": dice * (epoch + 1) / 3, "val_hd95": math.nan})
                tracking.log_summary({"best_val_dice": dice, "best_epoch": 2, "param_count": 1000.0 * (number + 1),
                                      "unused": math.nan, "infinite": math.inf})
                tracking.set_state("complete")
                ids[architecture] = trial.info.run_id
    with tracking.export_run(ids["unet3d"], {"opset": 18}) as export:
        ids["export"] = export.info.run_id
    with tracking.evaluate_run("s", {"split": "x"}) as evaluate:
        ids["evaluate"] = evaluate.info.run_id
        for architecture, dice in (("unet3d", 0.7), ("segresnet3d", 0.75)):
            with tracking.evaluation_run("s", architecture, ids[architecture], {"architecture": architecture}) as run:
                tracking.log_summary({"dice_mean": dice, "dice_sd": math.nan, "hd95_mean": 3.0})
                ids[f"evaluation-{architecture}"] = run.info.run_id
        with tracking.clinical_rule_run("s", "core_rcbf30", {}) as rule:
            tracking.log_summary({"dice_mean": 0.5, "hd95_mean": 9.0})
            ids["rule"] = rule.info.run_id
    for architecture in ("unet3d", "segresnet3d"):
        with tracking.explain_run(ids[architecture], {}, architecture) as explain:
            ids[f"explain-{architecture}"] = explain.info.run_id
            for method, faith in (("lrp_zplus", 0.4), ("lrp_epsilon", 0.3), ("random", 0.0)):
                with tracking.explanation_run(method, architecture, ids[architecture], {}) as run:
                    row = {"filter": "raw", "filter_kind": "raw", "filter_mode": "layer", "faithfulness": faith,
                           "relevance_rank_accuracy": faith, "blrp_to_ot": math.nan}
                    tracking.log_explanation(row, rows=[row])
                    ids[f"{architecture}-{method}"] = run.info.run_id
    return MlflowClient(tracking.tracking_uri()), ids


def test_the_naming_rule_gives_every_kind_one_experiment():
    kinds = [kind for section in SECTIONS.values() for kind in section]
    assert len(kinds) == len(set(kinds))  # a kind lives in exactly one section
    assert [experiment_for("strokelens", k) for k in ("search", "trial", "export", "fold")] == ["strokelens"] * 4
    assert experiment_for("strokelens", "evaluation") == experiment_for("strokelens", "clinical_rule") == \
        "strokelens-evaluation"
    assert experiment_for("strokelens-smoke", "explanation") == "strokelens-smoke-explanations"
    assert experiment_for("x", "report") == "x-report" and section_of("no such kind") == ""
    for kind in kinds:  # the study's experiment is found back from any section's name
        assert base_experiment(experiment_for("strokelens-smoke", kind)) == "strokelens-smoke"
    assert base_experiment("report") == "report" and base_experiment("evaluation") == "evaluation"


def test_each_kind_lands_in_its_own_described_experiment_in_the_training_view(store):
    client, ids = store
    where = {key: client.get_experiment(client.get_run(run_id).info.experiment_id).name for key, run_id in ids.items()}
    assert {where[k] for k in ("search", "unet3d", "segresnet3d", "export")} == {"e"}
    assert {where[k] for k in ("evaluate", "evaluation-unet3d", "rule")} == {"e-evaluation"}
    assert {where[k] for k in ids if k.startswith(("explain-", "unet3d-", "segresnet3d-"))} == {"e-explanations"}
    experiments = {x.name: x for x in client.search_experiments()}
    assert {"e", "e-evaluation", "e-explanations"} <= set(experiments) and "e-report" not in experiments
    for name in ("e", "e-evaluation", "e-explanations"):
        tags = experiments[name].tags
        assert tags["mlflow.experimentKind"] == "custom_model_development"  # not the GenAI view
        assert len(tags[tracking.NOTE_TAG]) > 100 and "strokelens.study" in tags[tracking.NOTE_TAG]
    assert experiments["e-evaluation"].tags[tracking.TAG_BASE_EXPERIMENT] == "e"
    assert "evaluate-STUDY" in experiments["e-evaluation"].tags[tracking.NOTE_TAG]
    # a nested run sits in its parent's experiment
    child = client.get_run(ids["unet3d-lrp_zplus"])
    assert child.data.tags["mlflow.parentRunId"] == ids["explain-unet3d"]


def test_explanation_and_evaluation_runs_name_their_architecture_trial_and_study(store):
    client, ids = store
    for key in ("evaluation-unet3d", "unet3d-lrp_zplus", "explain-unet3d"):
        tags = client.get_run(ids[key]).data.tags
        assert tags[tracking.TAG_ARCHITECTURE] == "unet3d" and tags[tracking.TAG_MODEL_RUN] == ids["unet3d"]
        assert tags[tracking.TAG_STUDY] == "s"
    params = client.get_run(ids["unet3d-lrp_zplus"]).data.params
    assert params["architecture"] == "unet3d" and params["model_run"] == ids["unet3d"] and params["study"] == "s"
    assert client.get_run(ids["evaluation-unet3d"]).data.params["architecture"] == "unet3d"


def test_no_metric_is_ever_logged_as_nan_or_inf(store):
    client, ids = store
    for run_id in ids.values():
        metrics = client.get_run(run_id).data.metrics
        assert all(math.isfinite(v) for v in metrics.values()), metrics
        for key in metrics:
            assert all(math.isfinite(m.value) for m in client.get_metric_history(run_id, key))
    trial = client.get_run(ids["unet3d"]).data.metrics
    assert "unused" not in trial and "infinite" not in trial and "val_hd95" not in trial
    assert [m.step for m in client.get_metric_history(ids["unet3d"], "val_dice")] == [0, 1, 2]
    assert "dice_sd" not in client.get_run(ids["evaluation-unet3d"]).data.metrics
    assert "blrp_to_ot" not in client.get_run(ids["unet3d-lrp_zplus"]).data.metrics


def test_readers_find_every_kind_in_its_new_home_from_any_of_the_names(store):
    _, ids = store
    for name in ("e", "e-evaluation", "e-report"):
        found = Store(name)
        assert found.experiment == "e"
        assert [r.run_id for r in found.runs("search", "s")] == [ids["search"]]
        assert {r.run_id for r in found.runs("trial", "s")} == {ids["unet3d"], ids["segresnet3d"]}
        (evaluate,) = found.runs("evaluate", "s")
        assert {r.run_id for r in found.children(evaluate, "evaluation")} == {ids["evaluation-unet3d"],
                                                                                ids["evaluation-segresnet3d"]}
        assert len(found.runs("explanation")) == 6 and len(found.runs("explain")) == 2
        assert found.studies() == ["s"]
    assert Store("absent").runs("trial") == [] and Store("absent").experiment_id is None


def test_runs_of_the_older_single_experiment_layout_are_still_read(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    client = MlflowClient(tracking.tracking_uri())
    old = client.create_experiment("old")
    evaluate = client.create_run(old, tags={tracking.TAG_KIND: "evaluate", tracking.TAG_STUDY: "s"})
    client.create_run(old, tags={tracking.TAG_KIND: "evaluation", tracking.TAG_STUDY: "s",
                                 "mlflow.parentRunId": evaluate.info.run_id})
    store = Store("old")
    (found,) = store.runs("evaluate", "s")
    assert found.run_id == evaluate.info.run_id and len(store.children(found, "evaluation")) == 1


def test_the_report_logs_its_ranks_back_onto_the_runs_it_ranks(store, tmp_path):
    client, ids = store
    runs = collect(Store("e"), "s", tmp_path / "work")
    architectures, explanations = architecture_table(runs), explanation_table(runs)
    with tracking.report_run("s", {}) as report:
        pass
    tracking.log_ranks(leaderboard_ranks(architectures, explanations), {tracking.TAG_RANKED_BY: report.info.run_id})
    assert client.get_experiment(client.get_run(report.info.run_id).info.experiment_id).name == "e-report"

    def metrics(key):
        return client.get_run(ids[key]).data.metrics

    # the architecture table: segresnet3d's evaluation (0.75) beats unet3d's (0.7), the clinical rule comes last
    assert (metrics("evaluation-segresnet3d")["rank"], metrics("evaluation-unet3d")["rank"], metrics("rule")["rank"]) \
        == (1.0, 2.0, 3.0)
    assert metrics("segresnet3d")["leaderboard_rank"] == 1.0 and metrics("unet3d")["leaderboard_rank"] == 2.0
    assert "rank" not in metrics("unet3d")  # a trial is not ranked among all trials
    # the explanation ranking within each model, and the model's place, on every method run
    for architecture, place in (("segresnet3d", 1.0), ("unet3d", 2.0)):
        ranked = [metrics(f"{architecture}-{m}") for m in ("lrp_zplus", "lrp_epsilon", "random")]
        assert [r["rank"] for r in ranked] == [1.0, 2.0, 3.0] and [r["rank_raw"] for r in ranked] == [1.0, 2.0, 3.0]
        assert {r["architecture_rank"] for r in ranked} == {place}
    tags = client.get_run(ids["unet3d-lrp_zplus"]).data.tags
    assert tags[tracking.TAG_RANKED_BY] == report.info.run_id
    # LRP variants compare across models in the UI: one search over the explanations experiment
    explanation_experiment = client.get_experiment_by_name("e-explanations").experiment_id
    lrp = client.search_runs([explanation_experiment], "params.method = 'lrp_zplus'",
                             order_by=["metrics.architecture_rank ASC"])
    assert [r.data.tags[tracking.TAG_ARCHITECTURE] for r in lrp] == ["segresnet3d", "unet3d"]
    # a newer report's rank replaces the older one
    tracking.log_ranks({ids["rule"]: {"rank": 4.0}})
    assert metrics("rule")["rank"] == 4.0
