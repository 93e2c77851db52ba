"""On a real 2-node SLURM (two slurmd, each in its own network namespace with its own host name, on a
bridge: `sudo HPCSWEEP_SLURM_NODES=2 bash env/slurm/start.sh`): distributed runs whose ranks are on
two nodes, meet over the bridge (gloo), are preempted and resume bit-identically, and survive a rank
lost with its node.

    sudo HPCSWEEP_SLURM_NODES=2 bash env/slurm/start.sh
    .venv/bin/python -m pytest -q tests/sched/test_slurm_nodes.py

Without that cluster these tests skip (saying how to start it); with HPCSWEEP_REQUIRE_SLURM_NODES=1
(CI) the skip is a failure. The cluster's SLURM_CONF is set for this module (tests/conftest.py), so
the CLI, submitit and the sbatch/scontrol calls below all talk to it.
"""
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from jobs.spec import load_sweep
from jobs.store import SweepDir, atomic
from tests.sched.slurmkit import REPO, SMALL, cli, job_ids, model_metrics, squeue_states, wait_for

pytestmark = [pytest.mark.slurm_nodes, pytest.mark.usefixtures("slurm_nodes")]
NODES = {"node1", "node2"}


def spec(where, name, epochs, tasks_per_node):
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"{name}.yaml"
    path.write_text(json.dumps({
        "name": name, "task": "resmlp", "base": {**SMALL, "epochs": epochs, "method": "bp"},
        "resources": {"nodes": 2, "tasks_per_node": tasks_per_node, "cpus": 1, "mem_gb": 1, "time_min": 20},
        "checkpoint": {"every_min": None, "every_steps": 5, "keep_last": 1}}))
    return path


def lines(sweep_dir, run):
    return [{k: v for k, v in m.items() if k != "time"} for m in atomic.read_jsonl(sweep_dir.run(run.run_id).metrics)]


def reference(tmp_path, name, epochs, tasks_per_node):
    """The same run uninterrupted on this machine (`main.py run` spawns the ranks on 127.0.0.1)."""
    path = spec(tmp_path / "ref", name, epochs, tasks_per_node)
    return path, subprocess.Popen([os.sys.executable, "main.py", "run", str(path), "--root", str(tmp_path / "ref"),
                                   "--only", ""], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def reference_dir(tmp_path, proc, sweep):
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return SweepDir.under(tmp_path / "ref", sweep.name)


def submit(tmp_path, path):
    sweep = load_sweep(path)
    sweep_dir = SweepDir.under(tmp_path / "root", sweep.name)
    out = cli("submit", path, "--executor", "slurm", "--cluster", "local", "--root", tmp_path / "root")
    assert "submitted 1 runs" in out.stdout, out.stdout + out.stderr
    return sweep, sweep.runs[0], sweep_dir, job_ids(sweep_dir.path)[0]


def node_addr(name):
    """`name`'s address, from the cluster's own configuration."""
    out = subprocess.run(["scontrol", "show", "node", name], capture_output=True, text=True, check=True).stdout
    return next(w.split("=", 1)[1] for w in out.split() if w.startswith("NodeAddr="))


def test_ranks_on_two_nodes_meet_over_the_bridge_and_rank_0_alone_writes(tmp_path):
    ref_path, ref = reference(tmp_path, "twobytwo", epochs=3, tasks_per_node=2)
    sweep, run, sweep_dir, job = submit(tmp_path, spec(tmp_path, "twobytwo", epochs=3, tasks_per_node=2))
    wait_for(lambda: sweep_dir.run(run.run_id).result.exists() or not squeue_states(job), 240, "the 4-rank run ended")
    assert sweep_dir.run(run.run_id).result.exists(), [p.read_text()[-3000:] for p in (sweep_dir.logs / job).glob("*")]
    start = sweep_dir.run(run.run_id).starts()[-1]
    # ranks 0, 1 on the first node, 2, 3 on the second: srun's block distribution, two host names
    assert [(p["host"], p["local_rank"]) for p in start["ranks"]] == [
        ("node1", 0), ("node1", 1), ("node2", 0), ("node2", 1)], start["ranks"]
    assert start["host"] == "node1"                                        # rank 0 wrote the start line
    # the rendezvous: the first node of the allocation, resolved to its address on the bridge
    assert start["rendezvous"].split(":")[0] == node_addr("node1") != "127.0.0.1"
    result = json.loads(sweep_dir.run(run.run_id).result.read_text())
    assert result["world_size"] == 4
    assert sorted(p.name for p in sweep_dir.run(run.run_id).path.iterdir()) == [
        "attempts.jsonl", "checkpoints", "config.yaml", "metrics.jsonl", "result.json", "run.lock"]
    ref_dir = reference_dir(tmp_path, ref, sweep)
    assert model_metrics(sweep_dir.path, run) == model_metrics(ref_dir.path, run)   # gloo over the bridge: same sums
    assert lines(sweep_dir, run) == lines(ref_dir, run)


def test_a_two_node_run_preempted_twice_ends_as_the_uninterrupted_one(tmp_path):
    _, ref = reference(tmp_path, "twonode", epochs=12, tasks_per_node=1)
    sweep, run, sweep_dir, job = submit(tmp_path, spec(tmp_path, "twonode", epochs=12, tasks_per_node=1))
    # preempted twice, by the pre-timeout signal and by an admin's requeue, at different moments
    for n, interrupt in ((3, ["scancel", "--signal=USR2", job]), (8, ["scontrol", "requeue", job])):
        wait_for(lambda: len(lines(sweep_dir, run)) >= n, 180, f"{n} epochs logged")
        subprocess.run(interrupt, check=True, capture_output=True)
        wait_for(lambda: any(a.get("outcome") == "interrupted" and a["event"] == "end"
                             for a in sweep_dir.run(run.run_id).read_attempts()[-2:]), 120, "the run checkpointed")
    wait_for(lambda: sweep_dir.run(run.run_id).result.exists(), 300, "the run done after two preemptions")
    starts = sweep_dir.run(run.run_id).starts()
    assert len(starts) == 3 and {s["job_id"] for s in starts} == {job}                  # requeued in place
    assert all({p["host"] for p in s["ranks"]} == NODES for s in starts)                # on both nodes each time
    ends = [a for a in sweep_dir.run(run.run_id).read_attempts() if a["event"] == "end"]
    assert [e["outcome"] for e in ends] == ["interrupted", "interrupted", "done"]
    ref_dir = reference_dir(tmp_path, ref, sweep)
    assert model_metrics(sweep_dir.path, run) == model_metrics(ref_dir.path, run)
    assert lines(sweep_dir, run) == lines(ref_dir, run)        # every line, none twice: both ranks stopped together


def test_a_rank_lost_with_its_node_ends_the_job_and_resume_finishes_the_run(tmp_path):
    _, ref = reference(tmp_path, "nodeloss", epochs=10, tasks_per_node=1)
    path = spec(tmp_path, "nodeloss", epochs=10, tasks_per_node=1)
    sweep, run, sweep_dir, job = submit(tmp_path, path)
    wait_for(lambda: len(lines(sweep_dir, run)) >= 2, 180, "training under way")
    ranks = sweep_dir.run(run.run_id).starts()[-1]["ranks"]
    lost = next(r for r, p in enumerate(ranks) if p["host"] == "node2")
    os.kill(ranks[lost]["pid"], signal.SIGKILL)     # the processes of every node are on this machine
    wait_for(lambda: not squeue_states(job), 60, "the job gone within a minute of losing node2's rank")
    assert not sweep_dir.run(run.run_id).result.exists()
    status = cli("status", path, "--root", tmp_path / "root").stdout
    assert "1 runs: 1 failed" in status, status
    error = sweep_dir.run(run.run_id).error.read_text().splitlines()
    # the rank that was killed wrote nothing; the one whose collective failed names it, last (status shows it)
    assert error[-1].startswith(f"rank {1 - lost} lost its connection to rank {lost} on node2 "), error[-3:]
    assert error[-1] in status
    # a failed run is rerun only when asked (the task itself may be at fault); it goes on from its checkpoint
    out = cli("resume", path, "--executor", "slurm", "--cluster", "local", "--root", tmp_path / "root",
              "--retry-failed", "--wait", timeout=400)
    assert out.returncode == 0, out.stdout + out.stderr
    starts = sweep_dir.run(run.run_id).starts()
    assert len(starts) == 2 and all({p["host"] for p in s["ranks"]} == NODES for s in starts)
    ref_dir = reference_dir(tmp_path, ref, sweep)
    assert model_metrics(sweep_dir.path, run) == model_metrics(ref_dir.path, run)
    assert lines(sweep_dir, run) == lines(ref_dir, run)


def test_a_node_that_dies_fails_the_job_which_requeues_and_resumes_when_the_node_is_back(tmp_path, slurm_nodes):
    # node2 dies as a crashed machine does: its processes freeze (SIGSTOP: its peers get no reset, they
    # hang in the next all-reduce) and its slurmd falls silent (SIGKILL). slurmctld hears nothing from it
    # for SlurmdTimeout, marks it DOWN and ends the job NODE_FAIL; the job (--requeue) waits for two
    # nodes, runs again once node2 is back, and the run goes on from its last checkpoint to exactly the
    # uninterrupted run's metrics
    _, ref = reference(tmp_path, "nodefail", epochs=12, tasks_per_node=1)
    sweep, run, sweep_dir, job = submit(tmp_path, spec(tmp_path, "nodefail", epochs=12, tasks_per_node=1))
    wait_for(lambda: len(lines(sweep_dir, run)) >= 2, 180, "training under way")
    ranks = sweep_dir.run(run.run_id).starts()[-1]["ranks"]
    slurmd = Path(slurm_nodes).parent / "slurmd-node2.pid"        # env/slurm/multinode.sh records it there
    os.kill(next(p["pid"] for p in ranks if p["host"] == "node2"), signal.SIGSTOP)
    os.kill(int(slurmd.read_text()), signal.SIGKILL)
    frozen_at = len(lines(sweep_dir, run))
    try:
        wait_for(lambda: "NODE_FAIL" in sacct_states(job), 60, "sacct: the job ended NODE_FAIL within a minute")
        wait_for(lambda: squeue_states(job) == {"PENDING"}, 30, "the job requeued, waiting for its nodes")
    finally:      # node2 back (start.sh starts only what is not running)
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n", "-E"]
        up = subprocess.run([*sudo, "bash", "env/slurm/start.sh"], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "HPCSWEEP_SLURM_NODES": "2"})
        assert up.returncode == 0, up.stdout + up.stderr
    assert len(lines(sweep_dir, run)) <= frozen_at + 1           # nothing went on without node2
    wait_for(lambda: sweep_dir.run(run.run_id).result.exists(), 300, "the run done on the requeued job")
    starts = sweep_dir.run(run.run_id).starts()
    assert len(starts) == 2 and {s["job_id"] for s in starts} == {job}
    assert all({p["host"] for p in s["ranks"]} == NODES for s in starts)
    ref_dir = reference_dir(tmp_path, ref, sweep)
    assert model_metrics(sweep_dir.path, run) == model_metrics(ref_dir.path, run)
    assert lines(sweep_dir, run) == lines(ref_dir, run)


def sacct_states(job) -> set:
    """Every attempt's state of `job` (-D: the requeued ones too)."""
    out = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-o", "State", "-j", str(job)], capture_output=True,
                         text=True).stdout
    return set(out.split())
