"""report.html: self-contained, and rendered by a real headless Chromium with the expected elements.

    .venv/bin/python -m pytest -q tests/analysis/test_report.py

The browser test skips where no Chromium is installed, unless HPCSWEEP_REQUIRE_SLURM is set (CI,
which installs the distribution's chromium): there a missing browser is a failure.
"""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.store import SweepDir, atomic
from tests.sched.slurmkit import cli

TASK = '''
CONFIG = {"seed": 0, "lr": 0.1, "steps": 4}


def train(cfg, ctx):
    state = ctx.restore() or {"step": 0}
    for step in range(state["step"], cfg["steps"]):
        ctx.log(step, loss=cfg["lr"] / (step + 1))
    if cfg["lr"] > 0.5:
        raise ValueError("diverged")
    return {"loss": cfg["lr"] / cfg["steps"]}
'''
GREEN = (0x2E, 0x7D, 0x32)          # a `done` attempt's bar
RED = (0xC6, 0x28, 0x28)            # a failed one's


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A small sweep run in-process (two done runs, one failed), aggregated: (sweep dir, report.html)."""
    where = tmp_path_factory.mktemp("report")
    (where / "toy.py").write_text(TASK)
    spec = where / "toy.yaml"
    spec.write_text(json.dumps({"name": "toy", "task": "toy.py:train", "grid": {"lr": [0.1, 0.2, 0.9]},
                                "analysis": {"figures": [{"name": "loss", "kind": "curves", "y": "loss"}]}}))
    out = cli("submit", spec, "--executor", "debug", "--root", where / "root")
    assert "pack 3/3: failed" in out.stdout, out.stdout + out.stderr
    out = cli("aggregate", spec, "--root", where / "root")
    assert out.returncode == 0, out.stderr
    sweep_dir = SweepDir(where / "root" / "toy")
    return sweep_dir, sweep_dir.analysis / "report.html"


def attempts(sweep_dir) -> int:
    return sum(1 for rid in sweep_dir.run_dirs() for a in sweep_dir.run(rid).read_attempts() if a["event"] == "start")


def test_the_report_is_one_self_contained_page(report):
    sweep_dir, page = report
    text = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*['"]?\s*(https?:)?//""", text)       # nothing fetched
    assert "<script" not in text and "@import" not in text
    assert text.count("class='attempt'") == attempts(sweep_dir) == 3
    assert "data:image/png;base64," in text and "class=\"dataframe summary\"" in text
    assert "<h2 id='usage'>" in text and "<h2 id='provenance'>" in text
    again = cli("aggregate", sweep_dir.path)
    assert again.returncode == 0 and "report.html" not in again.stdout.split("unchanged")[0].split("wrote")[-1]
    assert cli("aggregate", sweep_dir.path, "--format", "csv").returncode == 0


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found and not os.environ.get("HPCSWEEP_REQUIRE_SLURM"):
        pytest.skip("no Chromium here (apt-get install chromium)")
    assert found, "HPCSWEEP_REQUIRE_SLURM is set: Chromium must be installed (apt-get install chromium)"
    return found


def headless(browser, *args, tmp_path):
    out = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          "--disable-background-networking", f"--user-data-dir={tmp_path / 'profile'}", *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_chromium_renders_the_table_a_figure_and_a_bar_per_attempt(report, tmp_path):
    browser = chromium()
    sweep_dir, page = report
    dom = headless(browser, "--dump-dom", page.as_uri(), tmp_path=tmp_path)
    assert len(re.findall(r'<rect class="attempt"', dom)) == attempts(sweep_dir)
    assert re.search(r'<table[^>]*class="dataframe summary"', dom) and "<img" in dom
    shot = tmp_path / "report.png"
    headless(browser, f"--screenshot={shot}", "--window-size=1280,1600", page.as_uri(), tmp_path=tmp_path)
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    count = lambda colour: int((np.abs(pixels.astype(int) - colour).sum(axis=1) < 12).sum())
    assert count(GREEN) > 500 and count(RED) > 100            # the done bars and the failed one are drawn
    assert count((0xD5, 0x5E, 0x00)) > 100                   # the figure is drawn: its second curve's colour
