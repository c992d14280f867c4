"""The study's experiments: dilution, defects, amplitude by channel, the stage end to end and its report section."""

from __future__ import annotations

import math
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from benchmark.data.cases import discover, read_case
from benchmark.data.defects import EFFECT, STRENGTH, draw_defect, grow_defect
from benchmark.data.preprocessing import PreprocessConfig, brain_mask, prepare, to_native
from benchmark.errors import ParameterError
from benchmark.evaluation.dilution import dilute, dilution_rows, summarize_levels
from benchmark.evaluation.inference import predict_probability
from benchmark.evaluation.relevance import normalized_mean_by_channel, region_relevance
from benchmark.evaluation.segmentation import dice
from mlproject._cli import run
from models.registry import build

ROOT = Path(__file__).resolve().parents[1]
GRID = (16, 16, 8)


@pytest.fixture(scope="module")
def cases(isles_dir):
    config = PreprocessConfig(grid=GRID)
    return [prepare(read_case(r), config) for r in discover(isles_dir, split="train", with_evidence=True)[:2]]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build("unet3d", 6, width=0.0625).eval()


def _native(model, image, case):
    with torch.no_grad():
        p = predict_probability(model, torch.from_numpy(image[None]), torch.device("cpu"))
    return to_native(p, case.native_shape)[0] > 0.5


# --- dilution ------------------------------------------------------------------------------------

def test_level_zero_of_every_kind_gives_dice_one_against_the_clean_prediction(model, cases):
    levels = {"noise": (0.0,), "study_noise": (0.0,), "zero": (0.0,), "smooth": (0,)}
    rows = dilution_rows(model, cases, levels, draws=3, progress=False)
    assert len(rows) == len(cases) * (3 + 3 + 3 + 1)  # smoothing is deterministic: one draw
    assert all(r["dice_clean"] == 1.0 and r["diff"] == 0.0 for r in rows)
    for case in cases:
        truth_dice = dice(_native(model, case.image, case), case.native_label > 0)
        assert all(r["dice_truth"] == pytest.approx(truth_dice) for r in rows if r["case"] == case.case_id)


def test_zeroing_everything_scores_the_prediction_on_an_all_zero_input(model, cases):
    case = cases[0]
    rng = np.random.default_rng(0)
    assert not dilute(case.image, "zero", 1.0, rng).any()
    rows = dilution_rows(model, [case], {"zero": (1.0,)}, draws=2, progress=False)
    expected = dice(_native(model, np.zeros_like(case.image), case), _native(model, case.image, case))
    assert [r["dice_clean"] for r in rows] == pytest.approx([expected, expected])
    assert rows[0]["diff"] == pytest.approx(float(np.abs(case.image).mean()), rel=1e-6)


def test_dilutions_have_the_documented_size(cases):
    image = np.random.default_rng(1).uniform(size=(2, 8, 12, 12)).astype(np.float32) + 1.0
    rng = np.random.default_rng(2)
    zeroed = dilute(image, "zero", 0.25, rng)
    assert (zeroed == 0).mean() == pytest.approx(0.25, abs=0.03)
    assert np.std(dilute(image, "noise", 0.2, rng) - image) == pytest.approx(0.2, rel=0.05)
    assert (dilute(image, "study_noise", 0.2, rng) - image).min() >= 0  # the study's noise only adds
    # one smoothing = the study's FilterConv3D('average'): Conv3d, 3×3×3 weights 1/27, zero padding 1
    conv = torch.nn.functional.conv3d(torch.from_numpy(image)[:, None], torch.full((1, 1, 3, 3, 3), 1 / 27), padding=1)
    assert dilute(image, "smooth", 1, rng) == pytest.approx(conv[:, 0].numpy(), abs=1e-6)
    twice = torch.nn.functional.conv3d(conv, torch.full((1, 1, 3, 3, 3), 1 / 27), padding=1)
    assert dilute(image, "smooth", 2, rng) == pytest.approx(twice[:, 0].numpy(), abs=1e-6)


def test_level_summary_has_mean_and_spread():
    rows = [{"kind": "noise", "level": 0.1, "draw": i, "diff": 0.1, "dice_clean": v, "dice_truth": 0.5}
            for i, v in enumerate((0.6, 0.8, 1.0))]
    (summary,) = summarize_levels(rows)
    assert summary["n"] == 3 and summary["dice_clean_mean"] == pytest.approx(0.8)
    assert summary["dice_clean_sd"] == pytest.approx(0.2) and summary["dice_truth_sd"] == 0.0
    assert (summary["dice_clean_q25"], summary["dice_clean_q75"]) == pytest.approx((0.7, 0.9))


def test_bad_dilution_settings_are_refused(model, cases):
    with pytest.raises(ParameterError, match="kind 'blur'"):
        dilution_rows(model, cases, {"blur": (1,)}, progress=False)
    with pytest.raises(ParameterError, match="zero.*<= 1"):
        dilution_rows(model, cases, {"zero": (1.5,)}, progress=False)
    with pytest.raises(ParameterError, match="draws"):
        dilution_rows(model, cases, {"noise": (0.1,)}, draws=0, progress=False)


# --- defects -------------------------------------------------------------------------------------

@pytest.mark.parametrize("voxels", [1, 40, 250])
def test_defects_lie_inside_the_brain_outside_the_lesion_with_the_requested_size(cases, voxels):
    case = cases[0]
    brain, lesion = brain_mask(case.image), case.label > 0.5
    for seed in range(3):
        mask = grow_defect(brain, voxels, np.random.default_rng(seed), avoid=lesion)
        assert mask.sum() == voxels
        assert not (mask & ~brain).any() and not (mask & lesion).any()
    again = grow_defect(brain, voxels, np.random.default_rng(2), avoid=lesion)
    assert np.array_equal(again, mask)  # the same draws give the same defect


def test_a_defect_changes_the_input_only_inside_it_within_the_studys_ranges(cases):
    case = cases[0]
    defect = draw_defect(case.image, brain_mask(case.image), 60, np.random.default_rng(4), avoid=case.label > 0.5)
    change = defect.apply(case.image) - case.image
    assert not change[:, ~defect.mask].any()
    inside = np.abs(change[:, defect.mask])
    assert STRENGTH[0] * EFFECT[0] - 1e-6 <= inside.min() and inside.max() <= STRENGTH[1] * EFFECT[1] + 1e-6
    assert np.all(np.sign(change[:, defect.mask]) == defect.signs[:, None])
    assert np.array_equal(defect.label(case.label) > 0, (case.label > 0.5) | defect.mask)


def test_a_defect_larger_than_the_brain_is_refused(cases):
    brain = brain_mask(cases[0].image)
    with pytest.raises(ParameterError, match="does not fit"):
        grow_defect(brain, int(brain.sum()) + 1, np.random.default_rng(0))


# --- relevance summaries -------------------------------------------------------------------------

def test_normalised_mean_amplitude_matches_a_hand_computation():
    relevance = np.array([[[[1.0, -2.0, 3.0]]], [[[0.5, 0.5, -4.0]]]])  # (C=2, 1, 1, 3)
    values, peak = normalized_mean_by_channel(relevance)
    assert peak == 4.0
    assert values == pytest.approx([(1 - 2 + 3) / (4 * 3), (0.5 + 0.5 - 4) / (4 * 3)])
    assert values.sum() == pytest.approx(relevance.sum() / (peak * 3))  # Σ_c a_c = Σ R / (m·V)
    assert np.abs(values).max() <= 1
    zeros, zero_peak = normalized_mean_by_channel(np.zeros((3, 2, 2, 2)))
    assert zero_peak == 0.0 and not zeros.any()


def test_region_relevance_matches_a_hand_computation():
    relevance = np.zeros((2, 1, 2, 2))
    relevance[0, 0, 0, 0], relevance[1, 0, 0, 0] = 3.0, -1.0   # region voxel: |R| = 4, R⁺ = 3
    relevance[0, 0, 1, 1] = 2.0                                 # elsewhere: |R| = 2, R⁺ = 2
    region = np.zeros((1, 2, 2), bool)
    region[0, 0, 0] = True
    brain = np.ones((1, 2, 2), bool)
    out = region_relevance(relevance, region, brain)
    assert out == pytest.approx({"mass_share": 4 / 6, "positive_share": 3 / 5, "volume_share": 1 / 4,
                                 "density_ratio": (4 / 1) / (2 / 3)})


# --- the stage and its report section ------------------------------------------------------------


@pytest.mark.slow
def test_the_stage_logs_one_run_per_experiment_and_the_report_shows_them(isles_dir, workdir):
    from benchmark.reporting.report import build_report
    from benchmark.stages.experiments import EXPERIMENTS, ExperimentSettings, run_experiments
    from benchmark.training.profiles import Profile
    from benchmark.training.search import SearchSettings, run_search

    profile = Profile(name="tiny", trials=1, epochs=1, architectures=("unet3d",), widths=(0.0625,), grid=GRID,
                      batch_size=2, patience=0, warmup=0,
                      first={"architecture": "unet3d", "width": 0.0625, "lr": 3e-3, "weight_decay": 1e-5,
                             "loss": "dice_ce", "augment": 0.0})
    found = run_search(SearchSettings(data=isles_dir, trials=1, epochs=1, study="s", experiment="e",
                                      storage=f"sqlite:///{workdir}/optuna.db", seed=0, device="cpu", profile=profile,
                                      checkpoints=workdir / "ckpt", cache=None, progress=False))
    settings = ExperimentSettings(draws=2, levels={"noise": (0, 0.2), "zero": (0, 1.0), "smooth": (0, 1)},
                                  defect_ml=(1.0,), defects_per_size=1, defect_epochs=1,
                                  methods=["lrp_zplus"], sweep_methods=["lrp_epsilon"],
                                  filters=("pass_0.2_1", "clamp_0_0.2"))
    result = run_experiments(study="s", experiment="e", cases=2, settings=settings, progress=False)
    assert result.model_run == found.best_run_id and list(result.runs) == list(EXPERIMENTS)
    assert result.cases == found.split.val_ids[:2] + found.split.train_ids[:max(0, 2 - len(found.split.val_ids))]

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("e-reproduction").experiment_id], max_results=500)
    parent = next(r for r in runs if r.info.run_id == result.run_id)
    assert parent.data.tags["strokelens.kind"] == "experiments" and parent.data.params["split"] == found.split.digest
    for name, run_id in result.runs.items():
        child = client.get_run(run_id)
        assert child.info.status == "FINISHED" and child.data.tags["mlflow.parentRunId"] == result.run_id
        assert child.data.tags["strokelens.kind"] == "experiment"
        assert child.data.tags["strokelens.experiment"] == name and child.data.tags["strokelens.study"] == "s"
        assert child.data.tags["strokelens.architecture"] == "unet3d"
        assert child.data.tags["strokelens.model_run"] == found.best_run_id
        assert child.data.metrics and all(math.isfinite(v) for v in child.data.metrics.values())
        files = {a.path for a in client.list_artifacts(run_id)}
        assert any(f.endswith(".png") for f in files) and any(f.endswith(".csv") for f in files), name
    dilution = client.get_run(result.runs["dilution"]).data.metrics
    assert dilution["dice_clean_mean_noise_0"] == 1.0 and dilution["dice_clean_mean_zero_0"] == 1.0
    assert "defect-trained_defect_detected_mean" in client.get_run(result.runs["defects"]).data.metrics

    report = build_report("s", "e", workdir / "reports")
    page = (report.folder / "leaderboard.html").read_text(encoding="utf-8")
    markdown = (report.folder / "leaderboard.md").read_text(encoding="utf-8")
    assert '<section id="experiments">' in page and "The study's experiments" in markdown
    for name in EXPERIMENTS:
        assert f'id="experiment-{name}"' in page and result.runs[name] in page
    figures = sorted(p.name for p in (report.folder / "figures").glob("experiment_*.png"))
    assert {"experiment_dilution_dilution_curves.png", "experiment_defects_defect_effects.png",
            "experiment_amplitude_amplitude_by_channel.png", "experiment_filters_filter_boxplots_lrp_epsilon.png",
            "experiment_overlays_overlay_raw_vs_filtered.png"} <= set(figures)
    assert all(report.folder / "figures" / f in report.files for f in figures)
    assert page.count("data:image/png;base64,") >= len(figures)
    assert "Dice vs clean prediction" in markdown and "lrp_zplus" in markdown


def test_a_report_without_experiments_says_how_to_run_them(tmp_path):
    from benchmark.reporting.experiments import experiment_sections

    class NoRuns:
        def runs(self, kind, study=None, extra=""):
            return []

    sections, source = experiment_sections(NoRuns(), "s", tmp_path, tmp_path)
    assert sections == [] and "mlflow run . -e experiments -P study=s" in source


def test_the_mlproject_entry_point_matches_the_command_line(workdir, capsys):
    from mlproject.experiments import main

    entry = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]["experiments"]
    defaults = {k: str(v.get("default", "")) for k, v in entry["parameters"].items()}
    defaults["draws"], defaults["defects_per_size"], defaults["defect_epochs"], defaults["seed"] = "5", "2", "2", "0"
    argv = shlex.split(entry["command"].format(**{k: shlex.quote(v) for k, v in defaults.items()}))[3:]
    assert run(main, [*argv, "--experiments", "nope"]) == 2  # parsed every flag, then refused the experiment
    assert "experiment 'nope' is unknown" in capsys.readouterr().err
    assert run(main, [*argv, "--zero-levels", "0,2"]) == 2
    assert "levels of 'zero' must be >= 0 and <= 1" in capsys.readouterr().err
    assert not (workdir / "mlflow.db").exists()  # refused before any run was made


def test_the_pipeline_refuses_bad_experiment_settings_before_the_search(tmp_path):
    from benchmark.stages.experiments import ExperimentSettings
    from benchmark.stages.pipeline import run_pipeline
    from benchmark.training.profiles import PROFILES
    from benchmark.training.search import SearchSettings

    settings = SearchSettings(data=tmp_path / "nothing", trials=1, epochs=1, study="s", experiment="e", seed=0,
                              storage=f"sqlite:///{tmp_path}/optuna.db", device="cpu", profile=PROFILES["default"])
    with pytest.raises(ParameterError, match="draws must be at least 1"):
        run_pipeline(settings, experiments=True, experiment_settings=ExperimentSettings(draws=0))
    assert not (tmp_path / "nothing").exists() and not (tmp_path / "optuna.db").exists()


def test_methods_are_chosen_for_the_model(model):
    from benchmark.stages.experiments import ExperimentSettings

    chosen = ExperimentSettings().resolved(model)  # a project network: the study's rules, no reference_lrp
    assert chosen.sweep_methods == ["study_published"] and "reference_lrp" not in chosen.methods
    assert {"lrp_epsilon", "study_published"} <= set(chosen.methods)
    with pytest.raises(ParameterError, match="'reference_lrp' cannot explain this model"):
        ExperimentSettings(sweep_methods=["reference_lrp"]).resolved(model)
    with pytest.raises(ParameterError, match="'gradient' is not an LRP method"):
        ExperimentSettings(methods=["gradient"]).check()
