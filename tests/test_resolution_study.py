"""The resolution study: small-lesion counting, the summary's statistics, and the stage end to end."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from benchmark.data.cases import MODALITIES
from benchmark.data.planning import Plan
from benchmark.errors import DataError, ParameterError
from benchmark.evaluation.resolution import case_rows, small_lesions, summarize
from benchmark.evaluation.statistics import bootstrap_ci, paired_test
from benchmark.reporting.resolution import resolution_section
from benchmark.stages.resolution import run_resolution_study
from benchmark.training.resolution import StudyTraining, parse_grid, settings
from tracking.records import Store
from tracking.runs import default_experiment

ROOT = Path(__file__).resolve().parents[1]



def test_small_lesions_are_counted_per_component_and_found_by_any_overlap():
    truth = np.zeros((10, 20, 20), bool)
    truth[1:3, 1:3, 1:3] = True  # 8 voxels: 0.008 ml at 1 mm³, small
    truth[5:10, 5:20, 5:20] = True  # 1125 voxels of 8 mm³ = 9 ml: not small
    prediction = np.zeros_like(truth)
    prediction[2, 2, 2] = True  # touches the small lesion by one voxel
    assert small_lesions(prediction, truth, voxel_ml=0.008) == (1, 1)
    assert small_lesions(np.zeros_like(truth), truth, voxel_ml=0.008) == (1, 0)
    assert small_lesions(prediction, np.zeros_like(truth), voxel_ml=0.008) == (0, 0)


def _rows(dice, lesion_ml):
    return [{"case": f"c{i}", "lesion_ml": v, "dice": d, "hd95": 10 * (1 - d), "lesion_f1": d,
             "small_lesions": int(v < 5), "small_found": int(v < 5 and d > 0.5)}
            for i, (d, v) in enumerate(zip(dice, lesion_ml, strict=True))]


def test_summaries_hold_intervals_over_all_and_small_cases_and_paired_tests_against_the_first():
    volumes = [1.0, 2.0, 3.0, 20.0, 30.0, 40.0]
    seed = _rows([0.1, 0.2, 0.3, 0.8, 0.8, 0.9], volumes)
    native = _rows([0.5, 0.6, 0.4, 0.8, 0.85, 0.9], volumes)
    first, second = summarize({"48x48x19": seed, "native": native})
    assert first["small_cases"] == 3 and first["p_small_dice"] == 1.0
    assert second["small_dice"] == bootstrap_ci([0.5, 0.6, 0.4])
    assert second["dice"].mean == pytest.approx(np.mean([0.5, 0.6, 0.4, 0.8, 0.85, 0.9]))
    assert second["p_small_dice"] == paired_test([0.5, 0.6, 0.4], [0.1, 0.2, 0.3])
    assert first["small_lesion_recall"] == 0.0
    assert second["small_lesion_recall"] == pytest.approx(1 / 3)  # only the case of Dice 0.6 > 0.5 counts as found
    with pytest.raises(DataError, match="same cases"):
        summarize({"a": seed, "b": native[:-1]})


def test_settings_share_normalisation_and_modalities_and_bad_grids_are_refused():
    plan = Plan(spacing=(5.0, 5.0, 12.0), patch=(24, 24, 8), batch_size=2, median_shape=(44, 44, 10),
                normalization={m: "robust" for m in MODALITIES})
    chosen = settings([(96, 96, 19), (48, 48, 19)], plan.preprocess())
    assert [s.name for s in chosen] == ["48x48x19", "96x96x19", "native"]
    assert {s.preprocess.normalization for s in chosen} == {"robust"}
    assert chosen[-1].preprocess.window() is not None and chosen[0].preprocess.window() is None
    assert parse_grid("96x96x19") == (96, 96, 19)
    with pytest.raises(ParameterError, match="grid '96x96'"):
        parse_grid("96x96")
    with pytest.raises(ParameterError, match="at least one grid"):
        settings([], None)


def test_the_study_trains_every_setting_scores_the_same_cases_and_logs_runs_and_report_tables(isles_dir, workdir):
    plan = Plan(spacing=(5.0, 5.0, 12.0), patch=(24, 24, 8), batch_size=2, median_shape=(44, 44, 10),
                normalization={m: "robust" for m in MODALITIES})
    plan_path = plan.save(workdir / "plan.json")
    training = StudyTraining(width=0.0625, epochs=2, device="cpu")
    result = run_resolution_study(isles_dir, "res", grids=[(16, 16, 8)], plan=plan_path, training=training,
                                  checkpoints=workdir / "checkpoints", progress=False)
    assert list(result.runs) == ["16x16x8", "native"]
    assert [r["setting"] for r in result.rows] == ["16x16x8", "native"]
    assert all(r["cases"] == result.rows[0]["cases"] >= 1 for r in result.rows)
    assert "native" in result.verdict
    client = MlflowClient()
    parent = client.get_run(result.run_id)
    assert parent.data.tags["strokelens.kind"] == "resolution" and parent.data.params["native_patch"] == "24x24x8"
    names = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"resolution.csv", "resolution.png", "plan.json"} <= names
    for setting, run_id in result.runs.items():
        run = client.get_run(run_id)
        assert run.data.tags["strokelens.setting"] == setting
        assert [m.step for m in client.get_metric_history(run_id, "val_dice")] == [0, 1]
        assert all(math.isfinite(v) for v in run.data.metrics.values())
    table = pd.read_csv(client.download_artifacts(result.run_id, "resolution.csv", str(workdir)))
    assert list(table["setting"]) == ["16x16x8", "native"]
    (workdir / "figures").mkdir()
    section = resolution_section(Store(default_experiment()), "res", workdir / "figures", workdir / "work")
    assert section.run_id == result.run_id and [row[1][0] for row in section.tables[0].rows] == ["16x16x8", "native"]
    assert section.figures[0].path.is_file() and result.verdict in section.text
    again = run_resolution_study(isles_dir, "res", grids=[(16, 16, 8)], plan=plan_path, training=training,
                                 checkpoints=workdir / "checkpoints", progress=False)
    retrained = [client.get_run(r).data.metrics["retrained"] for r in again.runs.values()]
    assert retrained == [0.0, 0.0]  # the trained settings are reused, not trained again
    assert again.rows == result.rows


def test_case_rows_refuse_an_unlabelled_case(isles_dir):
    from torch import nn

    from benchmark.data.cases import discover, read_case
    from benchmark.data.preprocessing import PreprocessConfig, prepare

    case = prepare(read_case(discover(isles_dir, split="train")[0]), PreprocessConfig(grid=(16, 16, 8)))
    case.native_label = None
    with pytest.raises(DataError, match="no ground truth"):
        case_rows(nn.Conv3d(6, 2, 1), [case], None)


def test_the_command_line_refuses_a_bad_grid_in_one_line(workdir):
    done = subprocess.run([sys.executable, "-m", "mlproject.resolution_study", "--grids", "96x96"], cwd=workdir,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "96x96" in done.stderr
