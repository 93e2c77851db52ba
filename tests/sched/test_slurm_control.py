"""On the real single-node SLURM: acting on one run of a running array, and status saying where each
run is (queued and why, running where, with its job id).

    sudo bash env/slurm/start.sh && .venv/bin/python -m pytest -q tests/sched/test_slurm_control.py
"""
import json
import os
import pty
import re
import select
import signal
import subprocess
import time

import pytest

from jobs.spec import load_sweep
from tests.sched.slurmkit import cli, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

FIT = '''
import time

CONFIG = {"seed": 0, "steps": 400, "sleep_s": 0.05}


def train(cfg, ctx):
    state = ctx.restore()
    step = 0 if state is None else state["step"]
    while step < cfg["steps"]:
        step += 1
        ctx.log(step, loss=1.0 / step, total_steps=cfg["steps"])
        time.sleep(cfg["sleep_s"])
        if ctx.should_checkpoint(step):
            ctx.save(step, {"step": step})
    ctx.save(step, {"step": step})
    return {"steps": step}
'''

SCORE = '''
CONFIG = {}


def train(cfg, ctx):
    return {"step": ctx.upstream["train"].checkpoint()["step"]}
'''


def status(spec, root, *more):
    out = cli("status", spec, "--json", "--cluster", "local", "--root", root, *more)
    assert out.returncode == 0, out.stderr
    return {r["run_id"]: r for r in json.loads(out.stdout)["runs"]}


def test_cancel_only_one_run_of_a_running_array_then_resume_brings_it_back(tmp_path):
    (tmp_path / "fit.py").write_text(FIT)
    (tmp_path / "score.py").write_text(SCORE)
    spec = tmp_path / "ctl.yaml"
    spec.write_text(json.dumps({"name": "ctl", "resources": {"time_min": 10, "mem_gb": 1}, "stages": [
        {"name": "train", "task": "fit.py:train", "grid": {"seed": [1, 2, 3]},
         "checkpoint": {"every_min": None, "every_steps": 20}},
        {"name": "eval", "after": "train", "task": "score.py:train"}]}))
    sweep, root = load_sweep(spec), tmp_path / "root"
    out = cli("submit", spec, "--executor", "slurm", "--cluster", "local", "--root", root)
    assert out.returncode == 0, out.stdout + out.stderr
    train = [r.run_id for r in sweep.runs if r.stage == "train"]

    def all_running():
        rows = status(spec, root)
        return rows if all(rows[t]["where"] == "running" and rows[t]["step"] for t in train) else None
    rows = wait_for(all_running, 120, "the three train runs running and logging")
    for t in train:      # running: on a node, with its array task's id, a rate and an ETA from its own lines
        assert rows[t]["job_id"].count("_") == 1 and rows[t]["node"], rows[t]
    evals = [label for label in rows if label not in train]
    assert evals and all(rows[e]["where"] == "queued" and rows[e]["reason"] == "Dependency" for e in evals), rows
    wait_for(lambda: (r := status(spec, root)[train[0]])["steps_per_s"] and r["eta_s"], 60, "a rate and an ETA")

    target = train[1]
    stopped = rows[target]["job_id"]
    out = cli("cancel", spec, "--only", "seed=2", "--stage", "train", "--cluster", "local", "--root", root)
    assert out.returncode == 0 and f"cancelled 1 SLURM jobs: {stopped}" in out.stdout, out.stdout + out.stderr

    def cancelled_alone():
        rows = status(spec, root)
        return rows if rows[target]["state"] == "pending" else None
    rows = wait_for(cancelled_alone, 60, "the cancelled run pending (resumable)")
    others = [t for t in train if t != target]
    assert all(rows[t]["where"] == "running" and rows[t]["job_id"] != stopped for t in others), rows
    text = cli("status", spec, "--cluster", "local", "--root", root).stdout
    assert "running (" in text and rows[others[0]]["job_id"] in text, text

    out = cli("resume", spec, "--executor", "slurm", "--cluster", "local", "--root", root, "--only", target)   # by run id
    assert out.returncode == 0 and "submitted 2 runs" in out.stdout, out.stdout + out.stderr   # and its eval
    wait_for(lambda: all(r["state"] == "done" for r in status(spec, root).values()), 240, "every run done")
    final = status(spec, root)
    assert final[target]["job_id"] != stopped and final[target]["attempts"] == 2, final[target]


TICK = '''
import time

CONFIG = {"ticks": 30}


def train(cfg, ctx):
    for i in range(cfg["ticks"]):
        print(f"tick {i}", flush=True)
        ctx.log(i + 1, total_steps=cfg["ticks"])
        time.sleep(0.3)
    return {"ticks": cfg["ticks"]}
'''


def test_logs_follow_prints_lines_as_they_come_and_returns_when_the_run_ends(tmp_path):
    from jobs.store import SweepDir
    from tests.sched.slurmkit import PY, REPO
    (tmp_path / "tick.py").write_text(TICK)
    spec = tmp_path / "tick.yaml"
    spec.write_text(json.dumps({"name": "tick", "task": "tick.py:train", "resources": {"time_min": 10, "mem_gb": 1}}))
    root = tmp_path / "root"
    assert cli("submit", spec, "--executor", "slurm", "--cluster", "local", "--root", root).returncode == 0
    result = SweepDir(root / "tick").run(load_sweep(spec).runs[0].run_id).result
    wait_for(lambda: status(spec, root) and next(iter(status(spec, root).values()))["where"] == "running", 60,
             "the run running")
    follow = subprocess.Popen([PY, str(REPO / "main.py"), "logs", spec, "--root", root, "--follow"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in follow.stdout:              # read as they come: the first tick while the run still runs
        lines.append(line)
        if line.startswith("tick"):
            assert not result.exists(), "the first tick came only after the run ended"
            break
    rest, err = follow.communicate(timeout=90)          # returns by itself once the run has ended
    assert follow.returncode == 0, err
    assert result.exists() and "tick 29" in rest, rest[-500:]
    assert cli("logs", spec, "--root", root, "--err").returncode == 0


def test_watch_renders_in_a_terminal_asks_the_scheduler_once_per_refresh_and_leaves_on_ctrl_c(tmp_path):
    from tests.sched.slurmkit import PY, REPO, calls, shims
    (tmp_path / "fit.py").write_text(FIT)
    spec = tmp_path / "watched.yaml"
    spec.write_text(json.dumps({"name": "watched", "task": "fit.py:train", "grid": {"seed": [1, 2]},
                                "resources": {"time_min": 10, "mem_gb": 1}}))
    profiles = tmp_path / "clusters.yaml"        # the refresh period comes from the cluster profile
    profiles.write_text("local:\n  partition: debug\n  max_time_min: 60\n  watch_every_s: 1\n")
    root = tmp_path / "root"
    flags = ["--cluster", "local", "--profiles", profiles, "--root", root]
    assert cli("submit", spec, "--executor", "slurm", *flags).returncode == 0
    wait_for(lambda: any(r["where"] == "running" for r in status(spec, root, "--profiles", profiles).values()), 60,
             "a run running")
    path, count = shims(tmp_path, "squeue", "sacct")
    master, worker = pty.openpty()
    proc = subprocess.Popen([PY, str(REPO / "main.py"), "watch", spec, *map(str, flags)], cwd=REPO, stdin=worker,
                            stdout=worker, stderr=worker, env={**os.environ, "PATH": path, "TERM": "xterm",
                                                               "COLUMNS": "120", "LINES": "40"},
                            start_new_session=True)
    os.close(worker)
    screen = b""

    def read(until, timeout=60):
        nonlocal screen
        end = time.time() + timeout
        while until not in screen and time.time() < end:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    screen += os.read(master, 65536)
                except OSError:
                    break
        return until in screen
    assert read(b"refresh 4,"), screen.decode(errors="replace")[-2000:]
    text = screen.decode(errors="replace")
    assert "running" in text and "steps/s" in text and "watched: 2 runs" in text, text[-2000:]
    os.killpg(proc.pid, signal.SIGINT)            # what Ctrl-C at the terminal sends
    read(b"left the view", 30)
    assert proc.wait(timeout=30) == 0 and b"Traceback" not in screen, screen.decode(errors="replace")[-2000:]
    refreshes = max(int(n) for n in re.findall(rb"refresh (\d+),", screen))
    # one squeue and one sacct call per refresh (a refresh begun as Ctrl-C came may have asked too)
    assert refreshes <= calls(count, "squeue") <= refreshes + 1, (refreshes, calls(count, "squeue"))
    assert refreshes <= calls(count, "sacct") <= refreshes + 1, (refreshes, calls(count, "sacct"))
    os.close(master)
    cli("cancel", spec, *flags)
