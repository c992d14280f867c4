"""The MLflow UI in a real browser after a smoke run: what a user sees is what the project logged.

Slow: runs ``mlproject.main --profile smoke`` on six tiny synthetic cases with three trials, starts
``mlflow server`` on 127.0.0.1 (:class:`tracking.services.TrackingServer`) over the run's SQLite
store, and drives Debian's headless ``chromium`` through the DevTools protocol (aiohttp's websocket
client; no browser is downloaded). The MLflow UI is a React app, so each page is polled until its
rendered text holds what is asserted. Run ids come from MLflow's REST API. With
``STROKELENS_SCREENSHOTS=<folder>`` the screenshots are also copied there (``docs/`` for the README).
"""

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from benchmark.data.synthetic import write_dataset
from tests.test_report_browser import FLAGS, chromium
from tracking.services import TrackingServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "strokelens-smoke"
MODEL = "strokelens-segmenter"
WIDTH, HEIGHT = 1440, 810
CLOSED_ASSISTANT = {"mlflow.assistant.panelOpen_v1": "false", "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true"}
"""localStorage entries that keep MLflow's assistant panel closed (it would cover a third of each page)."""


class Page:
    """One headless Chromium tab driven over the DevTools protocol."""

    def __init__(self, websocket):
        self.websocket, self.next_id = websocket, 0

    async def send(self, method: str, **params) -> dict:
        self.next_id += 1
        await self.websocket.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            message = await self.websocket.receive_json(timeout=60)
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    async def evaluate(self, expression: str):
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    async def open(self, url: str, *expected: str, timeout: float = 90, reload: bool = False) -> str:
        """Navigate to ``url`` and wait until the page's text holds every ``expected`` string (regex); its text."""
        if reload:  # a hash change alone keeps the React app and its state: load the page afresh
            await self.send("Page.navigate", url="about:blank")
            await asyncio.sleep(1)
        await self.send("Page.navigate", url=url)
        deadline, text = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            await asyncio.sleep(1)
            text = await self.evaluate("document.body ? document.body.innerText : ''") or ""
            if all(re.search(e, text) for e in expected):
                await asyncio.sleep(1.5)  # let charts and images finish drawing
                return await self.evaluate("document.body.innerText") or text
        missing = [e for e in expected if not re.search(e, text)]
        raise AssertionError(f"{url} never showed {missing}; it showed: {text[:1500]!r}")

    async def screenshot(self, path: Path) -> Path:
        shot = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


async def _with_browser(browser: str, profile: Path, visit):
    """Start headless Chromium with a DevTools port, open one tab and call ``visit(page)``."""
    import aiohttp

    (profile / "DevToolsActivePort").unlink(missing_ok=True)  # a stale one names a closed port
    process = subprocess.Popen([browser, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                f"--window-size={WIDTH},{HEIGHT}", "--hide-scrollbars", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            assert time.monotonic() < deadline and process.poll() is None, "chromium did not open its DevTools port"
            await asyncio.sleep(0.2)
        port = port_file.read_text().split()[0]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                tab = next(t for t in await response.json() if t["type"] == "page")
            async with session.ws_connect(tab["webSocketDebuggerUrl"], max_msg_size=0) as websocket:
                page = Page(websocket)
                await page.send("Page.enable")
                await page.send("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT,
                                deviceScaleFactor=1, mobile=False)
                return await visit(page)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _api(server: str, path: str, body: dict | None = None) -> dict:
    """One call of MLflow's REST API (GET with query parameters, or POST with a JSON body)."""
    if body is None:
        request = urllib.request.Request(f"{server}/api/2.0/mlflow/{path}")
    else:
        request = urllib.request.Request(f"{server}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _runs(server: str, experiment_id: str, kind: str) -> list[dict]:
    found = _api(server, "runs/search", {"experiment_ids": [experiment_id], "max_results": 500,
                                         "filter": f"tags.`strokelens.kind` = '{kind}'",
                                         "order_by": ["attributes.start_time ASC"]})
    return found.get("runs", [])


def _tags(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def _q(value) -> str:
    return urllib.parse.quote(json.dumps(value, separators=(",", ":")))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """``mlproject.main --profile smoke`` with three trials on six small cases, in its own store."""
    workdir = tmp_path_factory.mktemp("ui")
    data = write_dataset(workdir / "data", 6, seed=5, shapes=[(48, 48, 10)], test_cases=0, progress=False)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db"}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "mlproject.main", "--profile", "smoke", "--data", str(data),
                             "--trials", "3", "--epochs", "2"], cwd=workdir, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(f"smoke run: {time.monotonic() - started:.0f} s")
    return workdir


def test_the_mlflow_ui_shows_what_the_project_logged(smoke, tmp_path):
    shots = tmp_path / "shots"
    shots.mkdir()
    seen, version = check_ui(smoke, shots, tmp_path / "profile")
    assert {"architecture", "best_val_dice"} <= set(seen["trials_header"]), seen["trials_header"]
    for name in seen["trial_names"]:  # each trial's row shows its architecture and a validation Dice
        (row,) = [r for r in seen["trials_rows"] if name in r]
        assert name.rsplit("-", 1)[-1] in row.split(name, 1)[1] and re.search(r"0\.\d+", row.split(name, 1)[1])
    assert len(seen["trial_names"]) == 3 and all(name in seen["compare"] for name in seen["trial_names"])
    assert EXPERIMENT in seen["experiments"] and f"{EXPERIMENT}-evaluation" in seen["experiments"]
    assert seen["chart_points"] >= 2  # one point per epoch
    assert seen["images"], "the relevance PNG did not render"
    assert "champion" in seen["version"] and version["tags"]
    for shot in shots.iterdir():
        assert shot.stat().st_size > 10_000, shot  # a rendered page, not a blank one
    target = os.environ.get("STROKELENS_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for shot in sorted(shots.iterdir()):
            shutil.copy(shot, Path(target) / shot.name)


def check_ui(store: Path, shots: Path, profile: Path, experiment: str = EXPERIMENT) -> tuple[dict, dict]:
    """Serve ``store``'s ``mlflow.db``, visit the pages in headless Chromium; (page texts and probes, champion)."""
    browser = chromium()
    with TrackingServer(f"sqlite:///{store}/mlflow.db", store / "served-artifacts") as server:
        url = server.url
        experiments = {e["name"]: e for e in _api(url, "experiments/search", {"max_results": 100})["experiments"]}
        assert {experiment, f"{experiment}-evaluation", f"{experiment}-explanations", f"{experiment}-report"} <= \
            set(experiments)
        training = experiments[experiment]["experiment_id"]
        explanations = experiments[f"{experiment}-explanations"]["experiment_id"]
        descriptions = {name: {t["key"]: t["value"] for t in e.get("tags", [])}["mlflow.note.content"]
                        for name, e in experiments.items() if name.startswith(experiment)}
        trials = _runs(url, training, "trial")
        assert len(trials) >= 2
        seen_trials = [r["info"]["run_name"] for r in trials]
        trial = next(r for r in trials if _tags(r).get("strokelens.state") == "complete")
        history = _api(url, "metrics/get-history?" + urllib.parse.urlencode(
            {"run_id": trial["info"]["run_id"], "metric_key": "val_dice"}))["metrics"]
        assert sorted(m["step"] for m in history) == [0, 1]  # one value per epoch
        explained = _runs(url, explanations, "explanation")
        lrp = next(r for r in explained if _tags(r)["strokelens.method"].startswith("lrp"))
        pngs = [f["path"] for f in _api(url, "artifacts/list?" + urllib.parse.urlencode(
            {"run_id": lrp["info"]["run_id"], "path": "relevance"})).get("files", []) if f["path"].endswith(".png")]
        assert pngs, "the explanation run logged no relevance PNG"
        version = _api(url, f"registered-models/alias?name={MODEL}&alias=champion")["model_version"]

        async def visit(page: Page) -> dict:
            seen = {}
            await page.open(f"{url}/#/experiments", "Experiments")
            await page.evaluate(";".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)})"
                                         for k, v in CLOSED_ASSISTANT.items()))
            # the experiments, each with its description
            seen["experiments"] = await page.open(f"{url}/#/experiments", re.escape(f"{experiment}-explanations"))
            await page.screenshot(shots / "mlflow_experiments.png")
            for name in (experiment, f"{experiment}-explanations"):
                experiment_id = experiments[name]["experiment_id"]
                first_words = re.escape(descriptions[name][:40])
                seen[name] = await page.open(f"{url}/#/experiments/{experiment_id}/runs", first_words)
            # the trials table with the architecture and validation Dice columns: the runs table keeps its
            # columns and expanded rows in the browser's localStorage (the UI's own state), set here as a user's
            # clicks would, then the page is loaded again
            search_id = _runs(url, training, "search")[0]["info"]["run_id"]
            script = f"""(() => {{
                const key = Object.keys(localStorage).find(
                    k => k.endsWith('ExperimentPage-["{training}"]-ReactComponentState'));
                if (!key) return false;
                const state = JSON.parse(localStorage.getItem(key));
                state.selectedColumns = ['params.`architecture`', 'metrics.`best_val_dice`', 'attributes.`Dataset`'];
                state.runsExpanded = {{"{search_id}": true}};
                localStorage.setItem(key, JSON.stringify(state));
                const rows = Object.keys(localStorage).find(k => k.endsWith('ExperimentView-{training}-expandRows'));
                if (rows) localStorage.setItem(rows, 'true');
                return true; }})()"""
            deadline = time.monotonic() + 30
            while not await page.evaluate(script):  # the UI saves its state a moment after it renders
                assert time.monotonic() < deadline, "the MLflow UI keeps no runs-table state for the experiment"
                await asyncio.sleep(1)
            seen["trials"] = await page.open(f"{url}/#/experiments/{training}/runs",
                                             *[re.escape(r["info"]["run_name"]) for r in trials], "architecture",
                                             "best_val_dice", reload=True)
            seen["trials_header"] = await page.evaluate(
                "Array.from(document.querySelectorAll('[role=columnheader]')).map(h => h.innerText.trim())")
            seen["trials_rows"] = await page.evaluate(  # the grid draws a row in a pinned and a scrolled part
                "Object.values(Array.from(document.querySelectorAll('[role=row][row-index]')).reduce((rows, r) => "
                "{const i = r.getAttribute('row-index'); rows[i] = (rows[i] || '') + ' ' + r.innerText; return rows;}, "
                "{})).map(t => t.replace(/\\s+/g, ' '))")
            await page.screenshot(shots / "mlflow_trials.png")
            # a trial's metric chart, per epoch
            run_id = trial["info"]["run_id"]
            seen["chart"] = await page.open(
                f"{url}/#/metric?runs={_q([run_id])}&metric={_q('val_dice')}&experiments={_q([training])}"
                f"&plot_metric_keys={_q(['val_dice'])}&plot_layout={_q({})}&x_axis=step&y_axis_scale=linear"
                "&line_smoothness=1&show_point=true&deselected_curves=[]&last_linear_y_axis_range=[]",
                "X-axis", "Step", r"val_dice\s+\S+ \(step=1\)")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # plotly draws the markers after the text is there
                seen["chart_points"] = await page.evaluate(
                    "document.querySelectorAll('.js-plotly-plot .scatterlayer .point').length")
                if seen["chart_points"] >= 2:
                    break
                await asyncio.sleep(1)
            await page.screenshot(shots / "mlflow_metric_chart.png")
            # the compare page of the three trials
            ids = [r["info"]["run_id"] for r in trials]
            seen["compare"] = await page.open(f"{url}/#/compare-runs?runs={_q(ids)}&experiments={_q([training])}",
                                              *[re.escape(r["info"]["run_name"]) for r in trials], "architecture",
                                              "best_val_dice")
            await page.screenshot(shots / "mlflow_compare.png")
            # the registered model, its alias and the version's tags
            seen["model"] = await page.open(f"{url}/#/models/{MODEL}", "champion", f"Version {version['version']}")
            seen["version"] = await page.open(f"{url}/#/models/{MODEL}/versions/{version['version']}",
                                              "champion", "architecture", "val_dice", "split")
            await page.screenshot(shots / "mlflow_model_version.png")
            # a relevance PNG among the explanation run's artifacts
            lrp_id = lrp["info"]["run_id"]
            seen["artifact"] = await page.open(f"{url}/#/experiments/{explanations}/runs/{lrp_id}/artifacts/"
                                               f"{urllib.parse.quote(pngs[0])}", re.escape(Path(pngs[0]).name))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                seen["images"] = await page.evaluate(
                    "Array.from(document.images).filter(i => i.complete && i.naturalWidth > 32 && "
                    "(i.src.includes('get-artifact') || i.src.startsWith('blob:') || i.src.startsWith('data:')))"
                    ".map(i => i.naturalWidth + 'x' + i.naturalHeight)")
                if seen["images"]:
                    break
                await asyncio.sleep(1)
            await page.screenshot(shots / "mlflow_relevance_artifact.png")
            seen["trial_names"] = seen_trials
            return seen

        started = time.monotonic()
        seen = asyncio.run(_with_browser(browser, profile, visit))
        print(f"browser: {time.monotonic() - started:.0f} s")
    return seen, version
