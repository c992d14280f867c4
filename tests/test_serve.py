"""Slow: the registered champion served by ``python -m mlproject.serve`` takes a burst of real cases, no error."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_serve_the_champion_under_a_burst(tmp_path, isles_dir):
    import mlflow.pyfunc

    import models
    from benchmark.data.cases import discover
    from benchmark.data.preprocessing import PreprocessConfig
    from benchmark.perf import post, serving
    from benchmark.serving import decode_volume, encode_file
    from benchmark.training.loop import save_checkpoint

    save_checkpoint(tmp_path / "best.pt", models.build("unet3d", 6, width=0.0625), None, 0, [])
    config = PreprocessConfig(grid=(16, 16, 8))
    (tmp_path / "preprocess.json").write_text(json.dumps(config.to_dict()))
    store = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "PYTHONPATH": str(ROOT)}
    exported = subprocess.run([sys.executable, "-m", "mlproject.export", "--model", str(tmp_path / "best.pt")],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert exported.returncode == 0, exported.stderr
    mlflow.set_tracking_uri(store)
    registered = mlflow.pyfunc.load_model("models:/strokelens-segmenter@champion")
    assert registered.metadata.flavors["python_function"]["config"]["predictor"] == "benchmark.serving:load_predictor"

    refs = discover(isles_dir, config.modalities, split="train")
    bodies = [json.dumps({"inputs": {m: encode_file(p) for m, p in ref.images.items()}}).encode() for ref in refs]
    expected = [registered.predict(json.loads(body)["inputs"]) for body in bodies]
    with serving("models:/strokelens-segmenter@champion", env={"MLFLOW_TRACKING_URI": store}) as (url, _), \
            ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda k: (k % len(bodies), post(url, bodies[k % len(bodies)])), range(40)))
    assert [status for _, (status, _, _) in answers] == [200] * 40
    for k, (_, body, _) in answers:
        got = json.loads(body)["predictions"]
        assert got["lesion_ml"] == expected[k]["lesion_ml"]
        np.testing.assert_array_equal(decode_volume(got["mask"]), decode_volume(expected[k]["mask"]))
