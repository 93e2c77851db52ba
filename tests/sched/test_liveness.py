"""The rule of what is live (jobs/sched/liveness.py), from faked scheduler answers; the real thing is
proven on the real SLURM in tests/sched/test_slurm_state.py."""
import json
import os
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import psutil
import pytest

from jobs.sched import liveness, slurm
from jobs.store import SweepDir, atomic

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def iso(seconds_ago):
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)).isoformat(timespec="seconds")


def job(job_id="7_1", seconds_ago=300):
    return slurm.Job(job_id, ["r1"], "sub", "2026-01-01T00:00:00", iso(seconds_ago))


@pytest.mark.parametrize("queue, acct, ago, expected", [
    ({"7_1": "RUNNING"}, {}, 300, "live"),
    ({"7_1": "PENDING"}, {"7_1": "PENDING"}, 300, "live"),
    ({"7_1": "REQUEUED"}, {"7_1": "REQUEUED"}, 300, "live"),
    ({"7_1": "COMPLETING"}, {"7_1": "CANCELLED"}, 300, "ending"),       # cancelled, still completing
    ({}, {}, 300, "ended"),                                             # a scancelled pending task vanishes from both
    ({}, {"7_1": "PENDING"}, 300, "ended"),                             # accounting lags; the controller has let go
    ({}, {}, 5, "live"),                                                # just submitted: neither shows it yet
    ({"7_0": "RUNNING"}, {}, 5, "ended"),                               # its array is there, it is not: scancelled
    ({}, {"7_1": "COMPLETED"}, 5, "ended"),
    ({}, {}, -3600, "ended"),                                           # the journal's clock runs an hour ahead
])
def test_a_job_is_live_only_on_positive_evidence(queue, acct, ago, expected):
    assert liveness.verdict(job(seconds_ago=ago), queue, acct) == expected


def fake_scheduler(monkeypatch, queue, acct=None):
    monkeypatch.setattr(slurm, "queue_states", lambda jobs: {j.job_id: queue[j.job_id] for j in jobs if j.job_id in queue})
    monkeypatch.setattr(slurm, "job_states", lambda jobs: dict(acct or {}))


def hold(sweep_dir, run_id, **holder):
    run_dir = sweep_dir.run(run_id)
    run_dir.path.mkdir(parents=True)
    atomic.write_json(run_dir.holder, holder)


def test_a_lock_held_by_a_dead_job_on_another_host_holds_nothing(tmp_path, monkeypatch):
    sweep_dir = SweepDir(tmp_path)
    hold(sweep_dir, "a", pid=1, host="node-that-is-gone", job_id="41_0", scheduler="slurm")
    hold(sweep_dir, "b", pid=1, host="node-017", job_id="42_0", scheduler="slurm")
    hold(sweep_dir, "c", pid=1, host="node-018", job_id="pid1234")        # `main.py run` elsewhere: no evidence
    fake_scheduler(monkeypatch, {"42_0": "RUNNING"}, {"41_0": "NODE_FAIL"})
    view = liveness.look(sweep_dir, ["a", "b", "c"], entries=[])
    assert set(view.live) == {"b"} and not view.ending


def test_a_live_holder_here_whose_job_is_cancelled_is_ending_not_in_flight(tmp_path, monkeypatch):
    sweep_dir = SweepDir(tmp_path)
    me = psutil.Process()
    hold(sweep_dir, "a", pid=me.pid, process_started=me.create_time(), host=socket.gethostname(), job_id="43_0",
         scheduler="slurm")
    hold(sweep_dir, "b", pid=me.pid, process_started=me.create_time() - 100, host=socket.gethostname(), job_id="pid1")
    fake_scheduler(monkeypatch, {"43_0": "COMPLETING"}, {"43_0": "CANCELLED"})
    view = liveness.look(sweep_dir, ["a", "b"], entries=[])
    assert view.ending == {"a": "43_0"} and not view.live       # b: the pid was reused by another process


def test_journal_jobs_live_ending_and_vanished(tmp_path, monkeypatch):
    sweep_dir = SweepDir(tmp_path)
    entries = [{"event": "submit", "executor": "slurm", "submission": "s1", "time": iso(600), "since": "2026-01-01T00:00:00",
                "job_ids": ["50_0", "50_1", "50_2"], "packs": [["x"], ["y"], ["z"]]}]
    fake_scheduler(monkeypatch, {"50_0": "RUNNING", "50_1": "COMPLETING"})     # 50_2: scancelled while pending
    view = liveness.look(sweep_dir, ["x", "y", "z"], entries)
    assert view.live == {"x": "s1"} and view.ending == {"y": "50_1"} and view.jobs == {"x": ("50_0", "RUNNING")}


def test_without_sacct_the_state_of_a_slurm_sweep_is_an_error_not_in_flight(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(json.dumps({"name": "s", "task": "resmlp", "base": {"epochs": 1}}))
    root = tmp_path / "root"
    out = subprocess.run([sys.executable, "main.py", "plan", str(spec), "--root", str(root)], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    sweep_dir = SweepDir(root / "s")
    atomic.write_json(sweep_dir.plan, {"name": "s", "runs": []})
    sweep_dir.append_journal({"event": "submit", "executor": "slurm", "submission": "s1", "time": iso(600),
                              "since": "2026-01-01T00:00:00", "job_ids": ["50_0"], "packs": [["x"]]})
    empty = tmp_path / "bin"
    empty.mkdir()
    for command in ("status", "resume", "cancel"):
        out = subprocess.run([sys.executable, "main.py", command, str(spec), "--root", str(root)], cwd=REPO,
                             capture_output=True, text=True, env={**os.environ, "PATH": str(empty)})
        assert out.returncode == 2 and "is not on PATH" in out.stderr, (command, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr


def test_intents_without_a_submit_are_orphans_and_recovered_by_name(monkeypatch):
    entries = [{"event": "intent", "executor": "slurm", "submission": "s1", "name": "sw.s1.0", "time": iso(10),
                "since": "2026-01-01T00:00:00", "packs": [["a"], ["b"]]},
               {"event": "intent", "executor": "slurm", "submission": "s1", "name": "sw.s1.1", "time": iso(10),
                "since": "2026-01-01T00:00:00", "packs": [["c"]]},
               {"event": "intent", "executor": "slurm", "submission": "s2", "name": "sw.s2.0", "packs": [["d"]]},
               {"event": "submit", "executor": "slurm", "submission": "s2", "job_ids": ["9"], "packs": [["d"]]}]
    orphans = slurm.orphans_in(entries)
    assert [e["name"] for e in orphans] == ["sw.s1.0", "sw.s1.1"]
    answers = {"squeue": "60_1|sw.s1.0\n", "sacct": "60_0|sw.s1.0\n61|sw.s1.1\n"}
    monkeypatch.setattr(slurm, "_ask", lambda cmd: answers[cmd[0]])
    found = slurm.recover(orphans)
    assert {(j.job_id, tuple(j.runs)) for j in found} == {("60_0", ("a",)), ("60_1", ("b",)), ("61", ("c",))}
