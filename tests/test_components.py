"""The real components CI must exercise on every run (fast enough for ``make test``).

* PostgreSQL: a throw-away cluster from Debian's ``postgresql`` (``tracking.services.LocalPostgres``)
  holds an Optuna study and an MLflow backend store;
* the MLflow tracking server: ``mlflow server`` on it with proxied artifacts, written to and read
  back over HTTP only;
* the browser: Debian's headless Chromium renders an HTML page written by the project.

``.ci/run`` installs ``postgresql`` and ``chromium`` where they are missing. Each test skips with
one line only where the component cannot be installed on this machine (a user's clone without root).
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tracking.errors import TrackingError
from tracking.services import LocalPostgres, TrackingServer

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def postgres():
    try:
        with LocalPostgres() as pg:
            yield pg
    except TrackingError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no PostgreSQL here: {exc}")


def test_optuna_study_on_real_postgresql(postgres):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="pg", storage=postgres.url("optuna"), direction="maximize")
    study.optimize(lambda t: -(t.suggest_float("x", -1, 1) ** 2), n_trials=3)
    again = optuna.load_study(study_name="pg", storage=postgres.url("optuna"))
    assert len(again.trials) == 3 and again.best_value == study.best_value


def test_tracking_server_on_postgresql_with_proxied_artifacts(postgres, tmp_path):
    from mlflow.tracking import MlflowClient

    with TrackingServer(postgres.url("mlflow"), tmp_path / "artifacts") as server:
        client = MlflowClient(server.url)
        experiment = client.create_experiment("components")
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "val_dice", 0.5, step=1)
        note = tmp_path / "note.txt"
        note.write_text("through the server")
        client.log_artifact(run.info.run_id, str(note))
        client.set_terminated(run.info.run_id)
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")
        back = MlflowClient(server.url).get_run(run.info.run_id)
        assert back.data.metrics["val_dice"] == 0.5 and back.info.status == "FINISHED"
        fetched = client.download_artifacts(run.info.run_id, "note.txt", str(tmp_path / "down"))
        assert Path(fetched).read_text() == "through the server"
    assert list((tmp_path / "artifacts").rglob("note.txt"))  # stored by the server, not by the client


def test_headless_chromium_renders_a_page(tmp_path):
    browser = shutil.which("chromium")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("Debian's chromium is missing: .ci/run installs it (apt-get install chromium)")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    page = tmp_path / "page.html"
    page.write_text("<html><body><table><tbody><tr><td>1</td></tr></tbody></table><script>"
                    "document.body.insertAdjacentHTML('beforeend', '<pre id=probe>' + JSON.stringify("
                    "{rows: document.querySelectorAll('tbody tr').length}) + '</pre>')</script></body></html>")
    shown = subprocess.run([browser, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                           capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', shown.stdout, re.S)
    assert found, shown.stderr[-2000:]
    assert json.loads(found.group(1)) == {"rows": 1}


def test_team_server_command_serves_until_sigterm():
    import signal
    import sys
    import tempfile
    import time

    from mlflow.tracking import MlflowClient

    from tracking.services import free_port

    if shutil.which("runuser") is None and os.geteuid() == 0 or not _postgres_available():
        pytest.skip("no PostgreSQL here (apt-get install postgresql)")
    port = free_port()
    root = Path(__file__).resolve().parents[1]
    tmp_path = Path(tempfile.mkdtemp(prefix="strokelens-team-"))  # as root, postgres must enter it
    tmp_path.chmod(0o755)
    server = subprocess.Popen([sys.executable, "-m", "mlproject.server", "--folder", str(tmp_path / "team"),
                               "--port", str(port)], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(root)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 120
        while not any("serving until" in line for line in lines) and time.monotonic() < deadline:
            line = server.stdout.readline()
            assert line or server.poll() is None, server.stderr.read()[-2000:]
            lines.append(line)
        assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{port}" in "".join(lines)
        storage = next(line.split("--storage ")[1].split()[0] for line in lines if "--storage" in line)
        assert storage.startswith("postgresql://") and storage.endswith("/optuna")
        assert MlflowClient(f"http://127.0.0.1:{port}").search_experiments()
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    assert code == 0
    assert (tmp_path / "team" / "postgres" / "data" / "PG_VERSION").is_file()  # the cluster is kept for next time
    assert not (tmp_path / "team" / "postgres" / "data" / "postmaster.pid").exists()  # and it was stopped
    shutil.rmtree(tmp_path, ignore_errors=True)


def _postgres_available() -> bool:
    from tracking.services import postgres_binary

    try:
        postgres_binary("initdb")
        return True
    except TrackingError:
        return False
