"""Distributed runs on this machine: 2 real processes with gloo, spawned as the local executor and
`main.py run` do. The same run on the real SLURM (srun ranks) is in tests/sched/test_slurm_stages.py,
and on two nodes in tests/sched/test_slurm_nodes.py."""
import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from jobs.store import SweepDir, atomic

REPO = Path(__file__).resolve().parents[2]
BASE = {"d_hidden": 32, "num_blocks": 2, "k": 2, "dataset": "digits", "method": "bp"}


def write_spec(tmp_path, name, epochs, every_steps=5):
    spec = {"name": name, "task": "resmlp", "base": {**BASE, "epochs": epochs},
            "resources": {"tasks_per_node": 2, "time_min": 10},
            "checkpoint": {"every_min": None, "every_steps": every_steps, "keep_last": 1}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(spec))
    return path


def start(path, root):
    return subprocess.Popen([sys.executable, "main.py", "run", str(path), "--root", str(root), "--only", ""],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def outcome(stdout):
    """main.py run's last line: `<label>: <outcome> (<run dir>)`."""
    return stdout.strip().splitlines()[-1].split(": ", 1)[1].split(" ", 1)[0]


def run_dir_of(root, name):
    runs = list(SweepDir(root / name).runs.iterdir())
    assert len(runs) == 1
    return SweepDir(root / name).run(runs[0].name)


def metrics(run):
    return [{k: v for k, v in row.items() if k != "time"} for row in atomic.read_jsonl(run.metrics)]


def final(run):
    return {k: v for k, v in json.loads(run.result.read_text())["metrics"].items() if k != "train_time_s"}


def wait_lines(run, n, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if run.metrics.exists() and len(atomic.read_jsonl(run.metrics)) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"the run never logged {n} lines")


def test_two_ranks_train_and_only_rank_0_writes(tmp_path):
    path = write_spec(tmp_path, "two", epochs=3)
    out = subprocess.run([sys.executable, "main.py", "run", str(path), "--root", str(tmp_path), "--only", ""],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "rank 0 of 2" in out.stderr and "rank 1 of 2" in out.stderr       # both ranks ran
    run = run_dir_of(tmp_path, "two")
    result = json.loads(run.result.read_text())
    assert result["world_size"] == 2
    start_line = run.starts()[0]
    assert [p["pid"] for p in start_line["ranks"]] != [start_line["pid"]] * 2     # two processes
    files = sorted(p.name for p in run.path.iterdir())
    assert files == ["attempts.jsonl", "checkpoints", "config.yaml", "metrics.jsonl", "result.json", "run.lock"]
    ckpt = torch.load(next(run.checkpoints.glob("*.pt")), weights_only=True)
    assert len(ckpt["ranks"]) == 2                                            # every rank's RNG, kept by rank 0
    assert len(metrics(run)) == 3                                             # one line per epoch, not per rank


def test_a_stop_signal_reaches_both_ranks_and_the_resumed_run_is_bit_identical(tmp_path):
    (tmp_path / "ref").mkdir()
    reference = write_spec(tmp_path / "ref", "ddp", epochs=30)
    out = subprocess.run([sys.executable, "main.py", "run", str(reference), "--root", str(tmp_path / "ref"),
                          "--only", ""], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    expected = run_dir_of(tmp_path / "ref", "ddp")

    path = write_spec(tmp_path, "ddp", epochs=30)
    root = tmp_path / "root"
    run = SweepDir(root / "ddp").run(expected.run_id)
    for attempt, more in ((1, 2), (2, 5)):          # stop twice, at different moments
        proc = start(path, root)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline and len(run.starts()) < attempt:
            time.sleep(0.02)                       # this attempt has started: its stop handlers are in place
        before = len(atomic.read_jsonl(run.metrics))
        while proc.poll() is None and time.time() < deadline and len(atomic.read_jsonl(run.metrics)) < before + more:
            time.sleep(0.02)
        proc.send_signal(signal.SIGUSR2)           # as submitit / SLURM send it before the time limit
        stdout, stderr = proc.communicate(timeout=120)
        assert stdout.strip() and outcome(stdout) == "interrupted", stdout + stderr
    proc = start(path, root)
    stdout, stderr = proc.communicate(timeout=300)
    assert outcome(stdout) == "done", stderr
    assert [e["outcome"] for e in run.read_attempts() if e["event"] == "end"] == ["interrupted", "interrupted", "done"]
    assert final(run) == final(expected)
    assert metrics(run) == metrics(expected)


def test_a_killed_rank_fails_the_run_within_seconds(tmp_path):
    path = write_spec(tmp_path, "kill", epochs=400, every_steps=1000)
    proc = start(path, tmp_path)
    run = None
    deadline = time.time() + 120
    while time.time() < deadline and run is None:
        try:
            run = run_dir_of(tmp_path, "kill")
            if not run.starts():
                run = None
        except (AssertionError, FileNotFoundError):
            pass
        time.sleep(0.05)
    wait_lines(run, 1, proc)
    rank1 = run.starts()[0]["ranks"][1]["pid"]
    os.kill(rank1, signal.SIGKILL)
    killed = time.monotonic()
    stdout, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - killed < 30
    assert outcome(stdout) == "failed"
    assert "rank 1" in run.error.read_text() and not run.result.exists()
    assert [e["outcome"] for e in run.read_attempts() if e["event"] == "end"] == ["failed"]


RANKS_PRINT = '''
import sys, time
sys.path.insert(0, {repo!r})
from jobs.runtime import distributed

def target(ranks):
    end, i = time.time() + 1.0, 0
    while time.time() < end:
        print(f"rank {{ranks.rank}} line {{i}} " + "x" * 40)
        i += 1
        if i % 20 == 0:
            time.sleep(0.001)

if __name__ == "__main__":
    sys.exit(max(distributed.spawn(2, target, (), ok_codes={{0}})[0]))
'''


def test_ranks_sharing_a_log_write_whole_lines(tmp_path):
    script = tmp_path / "ranks_print.py"
    script.write_text(RANKS_PRINT.format(repo=str(REPO)))
    log = tmp_path / "job.log"
    with open(log, "wb") as f:          # as a job's log: one file both ranks inherit, unbuffered Python (-u)
        subprocess.run([sys.executable, "-u", str(script)], stdout=f, check=True, timeout=120)
    lines = log.read_text().splitlines()
    bad = [line for line in lines if not re.fullmatch(r"rank [01] line \d+ x{40}", line)]
    assert len(lines) > 1000 and not bad, bad[:3]


def test_a_rank_whose_collective_broke_names_the_peer_that_went_away():
    from jobs.runtime.distributed import gone_peers
    places = [{"host": "localhost"}, {"host": "localhost"}, {"host": "no-such-host.invalid"}]
    gloo = "RuntimeError: [pair.cc:537] Read error [127.0.0.1]:25779: Connection reset by peer."
    assert gone_peers(gloo, places, 0) == ("rank 0 lost its connection to rank 1 on localhost (127.0.0.1): that "
                                            "peer went away first (killed, or its node failed); its job log says why")
    assert gone_peers(gloo.replace("127.0.0.1", "127.0.0.12"), places, 0) == ""     # another address
    assert gone_peers("ValueError: the task's own bug", places, 0) == ""
