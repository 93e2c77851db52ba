"""The command line as a newcomer meets it: overrides, run selection, errors that say what to do."""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from jobs.runtime.context import RunContext
from jobs.sched import submit as sched
from jobs.spec import Resources, load_sweep
from jobs.store import SweepDir

REPO = Path(__file__).resolve().parents[1]
BEHAVE = REPO / "tests" / "fixtures" / "tasks" / "behave.py"


def cli(*args, cwd=REPO, timeout=300):
    return subprocess.run([sys.executable, str(REPO / "main.py"), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def spec(tmp_path, name, body):
    shutil.copy(BEHAVE, tmp_path / "behave.py")
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps({"name": name, "task": "behave.py:train", **body}))
    return path


def test_set_overrides_the_spec_and_only_matches_pairs_in_any_order(tmp_path):
    path = spec(tmp_path, "over", {"grid": {"act": ["ok", "nan"]}, "seeds": [1, 2]})
    out = cli("plan", path, "--json", "--set", "base.steps=7", "--set", "seeds=[3]", "--root", tmp_path)
    plan = json.loads(out.stdout)
    assert plan["count"] == 2 and {r["config"]["steps"] for r in plan["runs"]} == {7}
    assert {r["config"]["seed"] for r in plan["runs"]} == {3}
    bad = cli("plan", path, "--set", "base.stpes=7", "--root", tmp_path)
    assert bad.returncode == 2 and "--set base.stpes" in bad.stderr and "did you mean 'steps'" in bad.stderr
    run = cli("run", path, "--only", "seed=2,act=ok", "--root", tmp_path / "root")      # the label's order reversed
    assert run.returncode == 0 and run.stdout.startswith("act=ok,seed=2: done"), run.stdout + run.stderr


def test_a_one_run_spec_needs_no_only_and_a_failing_run_shows_its_error(tmp_path):
    path = spec(tmp_path, "one", {"base": {"act": "raise"}})
    out = cli("run", path, "--root", tmp_path / "root")
    assert out.returncode == 1
    assert "TypeError: train() got an unexpected keyword argument 'lr'" in out.stderr     # the traceback's tail
    assert ": failed (" in out.stdout


def test_hints_carry_every_flag_the_user_gave(tmp_path):
    path = spec(tmp_path, "hints", {"grid": {"act": ["raise"]}})
    root = tmp_path / "my root"
    cli("submit", path, "--root", root, "--executor", "debug", "--set", "base.steps=3")
    status = cli("status", path, "--root", root, "--set", "base.steps=3")
    assert f"resume {path} --root '{root}' --set base.steps=3 --retry-failed" in status.stdout, status.stdout
    again = cli("resume", path, "--root", root, "--executor", "debug", "--set", "base.steps=3")
    assert "nothing to submit" in again.stdout and "--retry-failed" in again.stdout
    assert cli("status", path, "--root", root, "--cluster", "local", "--set", "base.steps=3").returncode == 0


def test_wait_waits_for_runs_an_earlier_submit_started(tmp_path):
    path = spec(tmp_path, "waiting", {"base": {"act": "slow", "steps": 30, "sleep_s": 0.1}})
    root = tmp_path / "root"
    assert cli("submit", path, "--root", root, "--executor", "local").returncode == 0
    started = time.time()
    out = cli("resume", path, "--root", root, "--executor", "local", "--wait")
    assert "nothing to submit" in out.stdout and out.returncode == 0, out.stdout + out.stderr
    sweep = load_sweep(path)
    sweep_dir = SweepDir.under(root, sweep.name)
    assert sweep_dir.run(sweep.runs[0].run_id).result.exists() and time.time() - started > 1.0


def test_provenance_records_untracked_files_and_the_task_file(tmp_path):
    untracked = REPO / "models" / "_untracked_probe.py"
    untracked.write_text("# a file git does not know yet\nPROBE = 1\n")
    try:
        version, diff = sched.code_version()
    finally:
        untracked.unlink()
    assert version["dirty"] and "_untracked_probe.py" in diff and "PROBE = 1" in diff
    path = spec(tmp_path, "prov", {"base": {"steps": 2}})
    sweep = load_sweep(path)
    sweep_dir = SweepDir.under(tmp_path / "root", sweep.name)
    sched.prepare(sweep, sweep_dir, "s1")
    recorded = json.loads(sweep_dir.code_version("s1").read_text())["tasks"]
    assert list(recorded.values())[0]["file"] == str(tmp_path / "behave.py")
    snapshot = list(recorded.values())[0]["snapshot"]
    assert (sweep_dir.code / snapshot).read_text() == BEHAVE.read_text()
    assert snapshot.endswith("/behave.py") and snapshot.startswith("s1/")


def test_a_numpy_generator_is_restored_with_the_checkpoint(tmp_path):
    def run(stop_after):
        ctx = RunContext(tmp_path, {}, checkpoint={"every_min": None, "every_steps": 1, "keep_last": 1})
        rng = ctx.numpy_rng(7)
        state = ctx.restore()
        start = 0 if state is None else state["i"]
        draws = []
        for i in range(start, 6):
            draws.append(float(rng.random()))
            if i + 1 == stop_after:
                ctx.save(i + 1, {"i": i + 1})
                return draws
        return draws
    uninterrupted = [float(x) for x in np.random.default_rng(7).random(6)]
    assert run(3) + run(None) == uninterrupted


def test_max_parallel_defaults_to_what_the_machine_allows():
    import os
    cores = len(os.sched_getaffinity(0))
    assert Resources().parallel_jobs("local") == cores
    assert Resources(cpus=2).parallel_jobs("local") == max(1, cores // 2)
    assert Resources(max_parallel=3).parallel_jobs("local") == 3


def test_a_symlink_loop_under_the_root_is_named_as_such_not_blamed_on_free_space(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    path = spec(tmp_path, "loop", {"seeds": [1]})
    out = cli("submit", path, "--root", tmp_path / "a" / "results", "--executor", "debug")
    assert out.returncode == 1 and "points back at itself" in out.stderr, out.stderr
    assert "free space" not in out.stderr and "Traceback" not in out.stderr


def test_every_command_takes_the_same_flags_and_a_sweep_dir(tmp_path):
    """One set of flags (--only/--stage/--root/--cluster/--profiles/--set) on every command that reads
    a sweep; the sweep dir works wherever the spec does; --force takes one run per flag."""
    path = spec(tmp_path, "flags", {"grid": {"act": ["ok", "raise"]}, "seeds": [1, 2]})
    root = tmp_path / "root"
    assert cli("submit", path, "--root", root, "--executor", "debug", "--only", "act=ok").returncode == 0
    sweep_dir = root / "flags"
    status = cli("status", sweep_dir, "--only", "seed=2,act=ok", "--cluster", "local")     # a sweep dir, not a spec
    assert status.returncode == 0 and "flags: 1 runs (of 4): 1 done" in status.stdout, status.stdout + status.stderr
    assert "act=ok,seed=1" not in status.stdout
    every = cli("status", sweep_dir)
    assert "flags: 4 runs: 2 done, 2 pending" in every.stdout, every.stdout     # --only submitted those alone
    # --force takes one value: the spec after it stays the spec
    forced = cli("submit", "--force", "seed=1,act=ok", path, "--root", root, "--executor", "debug")
    assert forced.returncode == 0 and "submitted 3 runs" in forced.stdout, forced.stdout + forced.stderr
    agg = cli("aggregate", sweep_dir, "--only", "act=ok", "--format", "csv")
    assert agg.returncode == 0, agg.stderr
    rows = (sweep_dir / "analysis" / "runs.csv").read_text().splitlines()
    assert len(rows) == 3 and all("ok" in r for r in rows[1:]), rows
    for command in ("plan", "status", "cancel", "run", "export", "aggregate", "resume"):
        bad = cli(command, path, "--root", root, "--only", "act=nope", *(["--name", "x"] if command == "export" else []))
        assert bad.returncode == 2 and "--only act=nope: no run of flags matches" in bad.stderr, (command, bad.stderr)
        unknown = cli(command, path, "--bogus")
        assert unknown.returncode == 2 and f"usage: python main.py {command} " in unknown.stderr, (command, unknown.stderr)
    nodir = cli("status", tmp_path)
    assert nodir.returncode == 2 and "not a sweep dir" in nodir.stderr


FAILS = '''
CONFIG = {"x": 3}


def train(cfg, ctx):
    some_local = cfg["x"] * 14
    raise ValueError(f"boom {some_local - 42}")
'''


def test_run_pdb_stops_in_the_failing_frame_at_a_terminal(tmp_path):
    import os
    import pty
    import select
    (tmp_path / "fails.py").write_text(FAILS)
    path = tmp_path / "fails.yaml"
    path.write_text(json.dumps({"name": "fails", "task": "fails.py:train"}))
    master, worker = pty.openpty()
    proc = subprocess.Popen([sys.executable, str(REPO / "main.py"), "run", str(path), "--root", str(tmp_path / "root"),
                             "--pdb"], cwd=REPO, stdin=worker, stdout=worker, stderr=worker)
    os.close(worker)
    seen = b""

    def until(text, timeout=60):
        nonlocal seen
        end = time.time() + timeout
        while text not in seen and time.time() < end and proc.poll() is None:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
        return text in seen
    assert until(b"(Pdb)"), seen.decode(errors="replace")
    os.write(master, b"p some_local\n")
    assert until(b"42\r\n(Pdb)"), seen.decode(errors="replace")      # the task's own frame, its local
    os.write(master, b"q\n")
    assert proc.wait(timeout=60) == 1
    os.close(master)
    assert b"boom 0" in seen


def test_logs_metrics_prints_the_runs_metric_lines(tmp_path):
    path = spec(tmp_path, "logged", {"base": {"steps": 3}, "seeds": [1, 2]})
    root = tmp_path / "root"
    assert cli("submit", path, "--root", root, "--executor", "debug").returncode == 0
    sweep = load_sweep(path)
    run = next(r for r in sweep.runs if r.config["seed"] == 2)
    out = cli("logs", path, "--root", root, "--only", "seed=2", "--metrics", "--follow")     # a run that ended: returns
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == SweepDir.under(root, sweep.name).run(run.run_id).metrics.read_text().splitlines()
    assert len(out.stdout.splitlines()) >= 3


def test_cancel_only_on_the_local_executor_stops_exactly_those_runs(tmp_path):
    # one run at a time: seed 1 runs while 2 and 3 wait in the driver's queue
    path = spec(tmp_path, "localcancel", {"base": {"steps": 200, "sleep_s": 0.05}, "seeds": [1, 2, 3],
                                          "resources": {"max_parallel": 1}})
    root = tmp_path / "root"
    assert "submitted 3 runs" in cli("submit", path, "--root", root, "--executor", "local").stdout
    sweep = load_sweep(path)
    sweep_dir = SweepDir.under(root, sweep.name)
    first, second, third = sweep.runs
    deadline = time.time() + 120
    while len(sweep_dir.run(first.run_id).read_attempts()) < 1 or not sweep_dir.run(first.run_id).metrics.exists():
        assert time.time() < deadline, "the first run never started"
        time.sleep(0.2)
    out = cli("cancel", path, "--root", root, "--only", "seed=1", "--only", "seed=2")
    assert out.returncode == 0 and "cancelled 2 runs of the local executor" in out.stdout, out.stdout + out.stderr
    states = sched.states(sweep, sweep_dir)
    assert states[second.run_id] != "in flight"                    # taken out of the queue at once
    while not sweep_dir.run(third.run_id).result.exists():       # the other run goes on, on its own
        assert time.time() < deadline + 120, "the third run never finished"
        time.sleep(0.2)
    ends = [a for a in sweep_dir.run(first.run_id).read_attempts() if a["event"] == "end"]
    assert [a["outcome"] for a in ends] == ["interrupted"]          # checkpointed, resumable
    assert not sweep_dir.run(second.run_id).read_attempts()         # never started
    states = sched.states(sweep, sweep_dir)
    assert [states[r.run_id] for r in sweep.runs] == ["pending", "pending", "done"], states
    out = cli("resume", path, "--root", root, "--executor", "local", "--wait", timeout=600)
    assert out.returncode == 0 and "submitted 2 runs" in out.stdout, out.stdout + out.stderr
