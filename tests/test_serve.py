"""Slow: `mlflow models serve` answers /invocations for the registered champion."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_serve_the_champion(tmp_path):
    import models
    from benchmark.data.preprocessing import PreprocessConfig
    from benchmark.training.loop import save_checkpoint

    save_checkpoint(tmp_path / "best.pt", models.build("unet3d", 6, width=0.0625), None, 0, [])
    (tmp_path / "preprocess.json").write_text(json.dumps(PreprocessConfig(grid=(16, 16, 8)).to_dict()))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "PYTHONPATH": str(ROOT),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    exported = subprocess.run([sys.executable, "-m", "mlproject.export", "--model", str(tmp_path / "best.pt")],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert exported.returncode == 0, exported.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m",
                               "models:/strokelens-segmenter@champion", "--env-manager", "local", "-h", "127.0.0.1",
                               "-p", str(port)], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        x = np.random.default_rng(0).random((1, 6, 4, 8, 8), dtype=np.float32)
        body = json.dumps({"inputs": {"image": x.tolist()}}).encode()
        deadline = time.monotonic() + 120
        while True:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=30) as response:
                    answer = json.loads(response.read())
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(1)
        predictions = answer["predictions"]
        logits = np.asarray(predictions["logits"] if isinstance(predictions, dict) else predictions)
        assert logits.shape == (1, 2, 4, 8, 8) and np.isfinite(logits).all()
    finally:
        server.terminate()
        server.wait(timeout=30)
