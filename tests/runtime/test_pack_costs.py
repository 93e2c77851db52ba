"""What a run costs inside a pack does not grow with its sweep: it reads its own files and one small
file of its submission (fail fast), never the journal, the plan or another run's files; it forces to
disk only what must survive a crash. Alike errors of one submission stop the rest of it; other errors
and other submissions' failures do not count."""
import json
import os
import sys
from pathlib import Path

import pytest

from jobs.runtime.runner import PackJob, failing_fast
from jobs.sched import submit as sched
from jobs.spec import load_sweep
from jobs.store import Outcome, SweepDir

REPO = Path(__file__).resolve().parents[2]
BEHAVE = REPO / "tests" / "fixtures" / "tasks" / "behave.py"

# every file or folder this process opens or lists while `SEEN` is a list (an audit hook stays for
# the process's life: it records nothing otherwise)
SEEN = None


def _audit(event, args):
    if SEEN is not None and event in ("open", "os.listdir", "os.scandir") and args and args[0] is not None:
        SEEN.append(os.fsdecode(args[0]) if isinstance(args[0], (str, bytes, os.PathLike)) else str(args[0]))


sys.addaudithook(_audit)


def sweep_of(where: Path, name, acts, seeds, fail_fast=3):
    where.mkdir(parents=True, exist_ok=True)
    (where / "behave.py").write_bytes(BEHAVE.read_bytes())
    path = where / f"{name}.yaml"
    path.write_text(json.dumps({"name": name, "task": "behave.py:train", "grid": {"act": acts}, "seeds": seeds,
                                "base": {"steps": 1}, "max_runs": 100_000,
                                "resources": {"fail_fast": fail_fast, "pack": 1000},
                                "checkpoint": {"every_min": None}}))
    sweep = load_sweep(path)
    sweep_dir = SweepDir.under(where / "root", sweep.name)
    return sweep, sweep_dir


def submitted(sweep, sweep_dir, submission):
    """The sweep dir as `submit` leaves it for a job: configs, plan, and the journal's submit entry."""
    sched.prepare(sweep, sweep_dir, submission)
    ids = [r.run_id for r in sweep.runs]
    sweep_dir.append_journal({"event": "submit", "submission": submission, "executor": "local",
                              "runs": ids, "packs": [ids]})
    return ids


def opened_by_one_run(sweep, sweep_dir, submission, run_id):
    global SEEN
    SEEN = []
    try:
        PackJob(str(sweep_dir.path), [run_id], submission=submission, fail_fast=3)()
    finally:
        seen, SEEN = SEEN, None
    return seen


def test_a_packs_run_opens_its_own_files_only_whatever_the_sweeps_size(tmp_path):
    counts = {}
    for n in (5, 200):
        sweep, sweep_dir = sweep_of(tmp_path / f"n{n}", f"s{n}", ["ok"], list(range(n)))
        ids = submitted(sweep, sweep_dir, "sub")
        PackJob(str(sweep_dir.path), ids[:1], submission="sub", fail_fast=3)()     # imports, task module: once
        seen = opened_by_one_run(sweep, sweep_dir, "sub", ids[1])
        mine = str(sweep_dir.run(ids[1]).path)
        others = [p for p in seen if str(sweep_dir.runs) in p and not p.startswith(mine)]
        assert not others, others[:5]
        assert not [p for p in seen if p in (str(sweep_dir.journal), str(sweep_dir.plan))]
        counts[n] = len([p for p in seen if str(sweep_dir.path) in p])
        assert sweep_dir.run(ids[1]).read_result() is not None
    assert counts[5] == counts[200], counts


def test_alike_errors_stop_their_submission_only(tmp_path):
    sweep, sweep_dir = sweep_of(tmp_path, "bug", ["raise", "exit1", "ok"], [1, 2, 3], fail_fast=2)
    by_act = {}
    for r in sweep.runs:
        by_act.setdefault(r.config["act"], []).append(r.run_id)
    submitted(sweep, sweep_dir, "first")
    # two different errors, one each: nothing alike yet
    out = PackJob(str(sweep_dir.path), [by_act["raise"][0], by_act["exit1"][0], by_act["ok"][0]],
                  submission="first", fail_fast=2)()
    assert list(out["outcomes"].values()) == [Outcome.FAILED, Outcome.EXITED, Outcome.DONE]
    assert failing_fast(sweep_dir, "first", 2) == ""
    # a second alike error: the rest of the submission is not started
    out = PackJob(str(sweep_dir.path), [by_act["raise"][1], by_act["ok"][1], by_act["exit1"][1]],
                  submission="first", fail_fast=2)()
    assert list(out["outcomes"].values()) == [Outcome.FAILED, Outcome.SKIPPED, Outcome.SKIPPED]
    why = failing_fast(sweep_dir, "first", 2)
    assert "2 runs of submission first failed with the same error" in why and "TypeError" in why
    skipped = sweep_dir.run(by_act["ok"][1]).read_attempts()[-1]
    assert skipped["event"] == "skipped" and skipped["reason"] == why
    # another submission (a retry) starts from nothing: the first one's failures do not count
    assert failing_fast(sweep_dir, "second", 2) == ""
    out = PackJob(str(sweep_dir.path), [by_act["raise"][2], by_act["ok"][1]], submission="second", fail_fast=2)()
    assert list(out["outcomes"].values()) == [Outcome.FAILED, Outcome.DONE]
    # fail_fast 0: never stops, even where the submission was stopped
    out = PackJob(str(sweep_dir.path), [by_act["ok"][2]], submission="first", fail_fast=0)()
    assert list(out["outcomes"].values()) == [Outcome.DONE]


@pytest.mark.parametrize("threshold", [1, 3])
def test_the_count_is_of_runs_not_attempts(tmp_path, threshold):
    """A run that fails again in the same submission (run again by hand) is still one run."""
    sweep, sweep_dir = sweep_of(tmp_path, "again", ["raise"], [1, 2, 3], fail_fast=threshold)
    ids = submitted(sweep, sweep_dir, "sub")
    for _ in range(3):
        PackJob(str(sweep_dir.path), ids[:1], submission="sub", fail_fast=threshold)()
    assert bool(failing_fast(sweep_dir, "sub", threshold)) == (threshold == 1)


def test_a_run_forces_to_disk_what_must_survive_a_crash_and_no_more(tmp_path, monkeypatch):
    sweep, sweep_dir = sweep_of(tmp_path, "durable", ["ok"], [1, 2])
    ids = submitted(sweep, sweep_dir, "sub")
    PackJob(str(sweep_dir.path), ids[:1], submission="sub", fail_fast=3)()
    synced, real = [], os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    PackJob(str(sweep_dir.path), ids[1:], submission="sub", fail_fast=3)()
    run_dir = sweep_dir.run(ids[1])
    names = [Path(p).name for p in synced]
    # the result (its temp file, then the rename in the run dir) and both attempt records: durable
    assert any(n.startswith(".result.json.") for n in names) and str(run_dir.path) in synced
    assert names.count("attempts.jsonl") == 2
    # who holds the lock means nothing once its process is gone, as after a crash: written, never synced
    assert not [n for n in names if "holder" in n]
