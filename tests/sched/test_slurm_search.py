"""On the real single-node SLURM: an ASHA search of 27 trials to budget 27 (reduction 3) run by 9
worker array tasks, with no process of ours left outside SLURM once `submit` returns; one worker
preempted mid-rung (scontrol requeue) and one SIGKILLed; `resume` ends the search with every
decision taken once and right (checked against a re-computation from the journal) and no step
trained twice.

    sudo bash env/slurm/start.sh && .venv/bin/python -m pytest -q tests/sched/test_slurm_search.py
"""
import json
import os
import signal
import subprocess

import psutil
import pytest

from jobs.store import SweepDir, atomic
from tests.sched.slurmkit import cli, job_ids, squeue_states, wait_for
from tests.sched.test_search import finished_search, search_spec
from tests.search import journal_check

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]


def outside_slurm(sweep_dir) -> list:
    """Processes of this sweep (its dir on their command line) that no SLURM job step started."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if str(sweep_dir) not in " ".join(p.info["cmdline"] or []):
                continue
            if not any(a.name().startswith("slurmstepd") for a in p.parents()):
                out.append((p.pid, " ".join(p.info["cmdline"])[:200]))
        except psutil.Error:
            continue
    return out


def open_claims(sdir, name):
    journal = sdir.search_journal(name)
    events = journal_check.read(journal) if journal.exists() else []
    ended = {(e["trial"], e["rung"]) for e in events if e["event"] in ("result", "failed")}
    return [e for e in events if e["event"] == "claim" and (e["trial"], e["rung"]) not in ended]


def test_asha_on_slurm_survives_a_requeue_and_a_sigkill(tmp_path):
    spec = search_spec(tmp_path, "slurm_asha", trials=27, parallel=9, sleep_s=0.3)
    root = tmp_path / "res"
    p = cli("submit", spec, "--root", root, "--executor", "slurm")
    assert p.returncode == 0, p.stdout + p.stderr
    sdir = SweepDir(root / "slurm_asha")
    assert outside_slurm(sdir.path) == []                 # no driver: the jobs decide

    def training(rung_at_least, besides=()):
        for c in open_claims(sdir, "slurm_asha"):
            holder = atomic.read_json(sdir.run(c["run_id"]).holder, None)
            if c["rung"] >= rung_at_least and holder and c["job"] not in besides and c["job"] == holder.get("job_id"):
                return c, holder
        return None

    claim, _ = wait_for(lambda: training(1), 240, "a promoted trial training")
    assert outside_slurm(sdir.path) == []
    subprocess.run(["scontrol", "requeue", claim["job"]], check=True)          # preempted mid-rung
    victim, holder = wait_for(lambda: training(0, besides={claim["job"]}), 240, "another worker training")
    os.kill(holder["pid"], signal.SIGKILL)                                     # a deciding job dies at once
    wait_for(lambda: not any(squeue_states(j) for j in job_ids(sdir.path)), 300, "every worker job left the queue")
    wait_for(lambda: not set(json.loads(cli("status", spec, "--root", root, "--json").stdout)["counts"])
             & {"in flight", "queued", "running", "requeued"}, 120, "accounting says every worker ended")
    assert outside_slurm(sdir.path) == []
    # the killed worker's claim is still open: the search is not finished until resume
    p = cli("resume", spec, "--root", root, "--executor", "slurm", "--wait", timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    sweep, engine, counts = finished_search(spec, root)
    assert counts["results"] == [27, counts["promoted"][0], counts["promoted"][1], counts["promoted"][2]]
    # the requeued worker took its own claim up again: a second attempt of that trial in the same job
    again = [a for a in sdir.run(claim["run_id"]).starts() if a.get("job_id") == claim["job"]]
    assert len(again) >= 2, again
    killed_run = sdir.run(victim["run_id"]).read_attempts()
    assert any(a.get("event") == "start" and a.get("job_id") != victim["job"] for a in killed_run), \
        "the killed worker's trial was taken up by the resumed worker"
