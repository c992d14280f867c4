"""``export --lrp-onnx``: relevance graphs registered beside the segmenter, shipped in the served model."""

import json

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

import models
from benchmark.data.cases import discover
from benchmark.data.preprocessing import PreprocessConfig
from benchmark.data.splits import make_split
from benchmark.serving import encode_file
from benchmark.stages.export import RELEVANCE_METHODS, export_model, export_relevance
from benchmark.training.loop import save_checkpoint
from tracking import model_registry
from tracking import runs as tracking
from tracking.runs import TAG_ARCHITECTURE, TAG_KIND, TAG_STUDY

CONFIG = PreprocessConfig(grid=(16, 16, 8))


def test_a_method_without_a_relevance_graph_is_skipped_with_its_reason(tmp_path):
    torch.manual_seed(0)
    model = models.build("unet3d", 6, width=0.0625).eval()
    result = export_relevance(model, tmp_path, CONFIG, methods=("alpha2beta1", "gradient"))
    assert result.reports == {} and set(result.skipped) == {"alpha2beta1", "gradient"}
    assert all("\n" not in why and len(why) <= 300 for why in result.skipped.values())
    assert "AlphaBeta" in result.skipped["alpha2beta1"] and "has no exported" in result.skipped["gradient"]
    assert not list(tmp_path.iterdir())  # nothing half-written


@pytest.mark.slow
def test_export_registers_relevance_beside_the_champion_and_serves_it(tmp_path, monkeypatch, isles_dir):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "w" / "best.pt", models.build("unet3d", 6, width=0.125), None, 0, [])
    (checkpoint.parent / "preprocess.json").write_text(json.dumps(CONFIG.to_dict()))
    tracking.setup("relevance-test")
    with mlflow.start_run(run_name="search"):
        mlflow.set_tags({TAG_KIND: "search", TAG_STUDY: "rel"})
        with mlflow.start_run(run_name="trial", nested=True) as trial:
            mlflow.set_tags({TAG_KIND: "trial", TAG_STUDY: "rel", TAG_ARCHITECTURE: "unet3d"})
            mlflow.log_metric("best_val_dice", 0.5)
            tracking.log_checkpoint(checkpoint, CONFIG.to_dict())
    split = make_split(isles_dir, val_fraction=0.25, seed=0)
    result = export_model(trial.info.run_id, "relevance-test", split=split, lrp_onnx=True)
    assert result.champion and set(result.relevance) == set(RELEVANCE_METHODS) and not result.relevance_skipped
    assert all(v <= 1e-4 for v in result.relevance_parity.values())
    assert "relevance lrp_zplus: models:/strokelens-relevance-lrp_zplus/1" in result.line()
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    segmenter = client.get_model_version(model_registry.REGISTERED_MODEL, result.version)
    assert segmenter.tags["relevance_methods"] == ",".join(RELEVANCE_METHODS)
    for method in RELEVANCE_METHODS:
        name = model_registry.relevance_model_name(method)
        version = client.get_model_version_by_alias(name, model_registry.CHAMPION_ALIAS)
        assert version.tags["segmenter_version"] == result.version and version.tags["method"] == method
        assert version.tags["architecture"] == "unet3d" and float(version.tags["parity_relative_l1"]) <= 1e-4
        assert version.run_id == result.run_id and "Relative L1" in version.description
        graph = mlflow.onnx.load_model(f"models:/{name}@champion")  # the ONNX graph itself, no PyTorch
        assert [o.name for o in graph.graph.output] == ["relevance", "logits", "target"]
    run = client.get_run(result.run_id)
    assert {"lrp_onnx_export_s", "lrp_onnx_relative_l1_lrp_zplus"} <= set(run.data.metrics)
    served = mlflow.pyfunc.load_model(f"models:/{model_registry.REGISTERED_MODEL}@champion")
    ref = next(r for r in discover(isles_dir, CONFIG.modalities, split="train"))
    answer = served.predict({m: encode_file(p) for m, p in ref.images.items()} | {"relevance": "lrp_zplus"})
    assert answer["relevance_method"] == "lrp_zplus" and set(answer["relevance"]) == set(CONFIG.modalities)
    assert np.isfinite(list(answer["relevance_share"].values())).all()
