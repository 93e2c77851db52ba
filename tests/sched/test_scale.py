"""Watching a sweep costs less as it finishes: the incremental view (progress.Watch) says what a full read
says while reading only the runs that changed, a slice of the rest, and never a run seen done; the scale
bench runs end to end and prints its figures (speed targets live in bench/scale.py, not here)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from jobs.runtime.runner import PackJob
from jobs.sched import progress
from jobs.sched import submit as sched
from jobs.spec import load_sweep
from jobs.store import RunState, SweepDir

REPO = Path(__file__).resolve().parents[2]
BEHAVE = REPO / "tests" / "fixtures" / "tasks" / "behave.py"


def settled(sweep_dir, sweep):
    """Every run dir's mtime a minute back: what a watcher sees of dirs nothing touched since its last look."""
    past = time.time() - 60
    for r in sweep.runs:
        os.utime(sweep_dir.run(r.run_id).path, (past, past))


def test_the_watch_reads_what_changed_and_agrees_with_a_full_read(tmp_path):
    (tmp_path / "behave.py").write_bytes(BEHAVE.read_bytes())
    spec = tmp_path / "w.yaml"
    spec.write_text(json.dumps({"name": "w", "task": "behave.py:train", "grid": {"act": ["ok", "raise"]},
                                "seeds": list(range(20)), "base": {"steps": 1}, "checkpoint": {"every_min": None},
                                "resources": {"fail_fast": 0}}))
    sweep = load_sweep(spec)
    sweep_dir = SweepDir.under(tmp_path / "root", sweep.name)
    sched.prepare(sweep, sweep_dir, "setup")
    settled(sweep_dir, sweep)
    asked = []

    def read_states(part, where):
        asked.append({r.run_id for r in part.runs})
        return sched.states(part, where)

    watch = progress.Watch(sweep, sweep_dir, read_states, turn=10)
    assert watch.refresh() == sched.states(sweep, sweep_dir) and len(asked[-1]) == 40     # the first look: all
    watch.refresh()
    assert len(asked[-1]) == 4                   # nothing changed: a tenth of the unfinished runs, in turn

    ran = [r.run_id for r in sweep.runs if r.config["seed"] < 3]          # 3 that end done, 3 failed
    PackJob(str(sweep_dir.path), ran)()
    assert watch.refresh() == sched.states(sweep, sweep_dir)
    assert set(ran) <= asked[-1] and len(asked[-1]) <= 6 + 4
    done = {rid for rid, state in watch.states.items() if state == RunState.DONE}
    assert len(done) == 3

    settled(sweep_dir, sweep)
    for _ in range(12):
        watch.refresh()
        assert not asked[-1] & done              # a run seen done is not read again
    # what changes outside the run dirs (a live driver now holds the runs) reaches every run within `turn` looks
    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "sub-live"])
    try:
        sweep_dir.append_journal({"event": "submit", "submission": "sub-live", "executor": "local",
                                  "host": os.uname().nodename, "driver_pid": driver.pid,
                                  "runs": [r.run_id for r in sweep.runs]})
        for _ in range(10):
            states = watch.refresh()
        assert states == sched.states(sweep, sweep_dir)
        assert sum(s == RunState.IN_FLIGHT for s in states.values()) == 40 - 3
    finally:
        driver.kill()
        driver.wait()
    assert watch.full() == sched.states(sweep, sweep_dir)


def test_the_scale_bench_prints_its_figures(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "bench" / "scale.py"), "--sizes", "8,20", "--pack", "10",
                          "--executors", "local", "--timeout", "240"], cwd=REPO, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "HPCSWEEP_BENCH_TMP": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0] == "local, packs of 10:" and "in-pack ms/run" in lines[1] and "watcher %" in lines[1]
    rows = [line.split() for line in lines[2:]]
    assert [r[:2] for r in rows] == [["8", "8"], ["20", "20"]]          # every run done, at both sizes
    assert rows[0][3] == "1.00x" and all(float(r[2]) > 0 for r in rows)
