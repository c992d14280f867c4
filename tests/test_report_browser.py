"""The report in a real browser: headless Chromium renders every table and image, with no script error.

Slow: runs the pipeline on small data, then Debian's ``chromium`` (installed here when missing).
A copy of ``leaderboard.html`` gets a probe script as the first element of its head: it records
every error event (a failing script, an image that does not load) and, on load, writes the
count of tables, rows and images, and the images that did not decode, into the DOM, which
``--dump-dom`` prints.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.data.synthetic import write_dataset

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(
  e.message || ('failed to load ' + (e.target.src || '').slice(0, 40))), true);
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({
    images: images.length,
    broken: images.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt),
    tables: document.querySelectorAll('table').length,
    rows: document.querySelectorAll('tbody tr').length,
    errors: window.__errors});
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str:
    """The path of Debian's chromium, installed with apt-get when missing."""
    found = shutil.which("chromium")
    if found:
        return found
    for command in (["apt-get", "install", "-y", "-q", "chromium"],
                    ["sh", "-c", "apt-get update -q && apt-get install -y -q chromium"]):
        subprocess.run(command, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        found = shutil.which("chromium")
        if found:
            return found
    pytest.fail("Debian's chromium is not installed and apt-get could not install it: run "
                "apt-get install chromium as root")


def test_report_renders_in_headless_chromium(tmp_path):
    browser = chromium()
    data = write_dataset(tmp_path / "data", 8, seed=5, shapes=[(48, 48, 10)], test_cases=0, progress=False)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    result = subprocess.run([sys.executable, "-m", "mlproject.main", "--data", str(data), "--study", "web",
                             "--trials", "1", "--epochs", "2", "--architectures", "unet3d", "--widths", "0.125",
                             "--explain-methods", "lrp_zplus_zbox,random", "--explain-filters", "raw,pass_0_0.2",
                             "--explain-cases", "2"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    page = tmp_path / "reports" / "web" / "leaderboard.html"
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text(encoding="utf-8").replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    shown = subprocess.run([browser, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
                            "--enable-logging=stderr", "--v=0", "--dump-dom", probed.as_uri()],
                           capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', shown.stdout, re.S)
    assert found, shown.stderr[-2000:]
    probe = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    figures = list((page.parent / "figures").glob("*.png"))
    assert probe["errors"] == [] and probe["broken"] == []
    assert probe["images"] == len(figures) >= 4
    assert probe["tables"] >= 2 and probe["rows"] >= 4
    assert "Uncaught" not in shown.stderr
    screenshot = tmp_path / "report.png"
    subprocess.run([browser, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars",
                    "--window-size=1280,1600", f"--screenshot={screenshot}", page.as_uri()],
                   capture_output=True, timeout=120)
    assert screenshot.is_file() and screenshot.stat().st_size > 20_000  # a page with content, not a blank one
