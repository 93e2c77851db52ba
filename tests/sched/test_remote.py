"""A cluster reached over ssh, for real: an sshd on 127.0.0.1 (env/ssh/start.sh) lets a second user in,
whose home holds the cluster side (hpcsweep, its python, the sweep dirs); its jobs go to the real
single-node SLURM. The "laptop" is this checkout, run as the test's own user.

    HPCSWEEP_REQUIRE_SLURM=1 .venv/bin/python -m pytest -q tests/sched/test_remote.py
"""
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

import main
from jobs.sched import remote
from jobs.spec.settings import ClusterProfile
from tests.sched.slurmkit import REPO, cli, wait_for

pytestmark = pytest.mark.slurm

TASK = '''
import time

CONFIG = {"seed": 0, "steps": 30, "lr": 0.2, "sleep_s": 0.25}

def train(cfg, ctx):
    state = ctx.restore()
    step, w = (0, 0.0) if state is None else (state["step"], state["w"])
    while step < cfg["steps"]:
        time.sleep(cfg["sleep_s"])
        w += cfg["lr"] * (1.0 + cfg["seed"] - w)
        step += 1
        ctx.log(step, loss=(1.0 + cfg["seed"] - w) ** 2)
        if ctx.should_checkpoint(step):
            ctx.save(step, {"step": step, "w": w})
    return {"loss": (1.0 + cfg["seed"] - w) ** 2, "w": w}
'''


def _as_root(*command):
    return list(command) if os.geteuid() == 0 else ["sudo", "-n", *command]


@pytest.fixture(scope="module")
def rig(slurm_cluster):
    """The sshd of env/ssh/start.sh, stopped at the end; rig.env's values."""
    # not under pytest's own temporary folder: sshd reads the authorized keys as the second user, who may
    # not enter a folder private to this one
    state = Path(tempfile.mkdtemp(prefix="hpcsweep-sshrig-"))
    state.chmod(0o755)
    started = subprocess.run(_as_root("bash", str(REPO / "env/ssh/start.sh"), str(state), sys.executable),
                             capture_output=True, text=True, timeout=300)
    if started.returncode:
        pytest.fail(f"env/ssh/start.sh failed: {started.stderr[-2000:]}", pytrace=False)
    env = dict(line.split("=", 1) for line in (state / "rig.env").read_text().split("\n") if "=" in line)
    env["STATE"] = str(state)
    env["ROOT"] = f"{env['REMOTE_HOME']}/sweeps-{state.name}"
    profiles = []
    env["profiles"] = profiles
    yield env
    for profile in profiles:
        remote.close(profile)
    subprocess.run(_as_root("bash", str(REPO / "env/ssh/stop.sh"), str(state)), capture_output=True, timeout=60)
    subprocess.run(_as_root("rm", "-rf", "--", env["ROOT"], str(state)), capture_output=True, timeout=60)


def _project(tmp_path, rig, **extra_profiles) -> Path:
    """A laptop project: the task, its spec, and clusters.yaml with the rig's profile (and `extra_profiles`)."""
    top = tmp_path / "laptop_project"
    top.mkdir()
    (top / "slow_task.py").write_text(TASK)
    (top / "toy.yaml").write_text(json.dumps({
        "name": f"sshtoy_{tmp_path.name[-12:]}".replace("-", "_"), "task": "slow_task.py:train",
        "base": {"steps": 60}, "grid": {"lr": [0.1, 0.3]}, "seeds": [1],
        "resources": {"time_min": 10, "mem_gb": 0.5},
        "checkpoint": {"every_steps": 2, "every_min": None},
        "analysis": {"group_by": ["lr"]}}))
    cluster = {"ssh": rig["HOST"], "ssh_config": rig["SSH_CONFIG"],
               "remote_command": [rig["PYTHON"], f"{rig['REMOTE_CHECKOUT']}/main.py"],
               "partition": "debug", "max_time_min": 60, "signal_delay_s": 20, "root": rig["ROOT"]}
    profiles = {"rig": cluster, **{name: {**cluster, **more} for name, more in extra_profiles.items()}}
    (top / "clusters.yaml").write_text(json.dumps(profiles))
    for name in profiles:
        rig["profiles"].append(ClusterProfile.model_validate({**profiles[name], "name": name}))
    return top


def accepted(rig) -> int:
    """Connections sshd accepted so far (LogLevel VERBOSE: one line each)."""
    return Path(rig["SSHD_LOG"]).read_text().count("Accepted publickey")


def over_ssh(rig, top, *args, fresh=True):
    """`hpcsweep ARGS --cluster rig` from the laptop project: (the finished process, ssh connections it
    opened). fresh: the shared connection of an earlier command is closed first."""
    if fresh:
        remote.close(rig["profiles"][0])
    before = accepted(rig)
    done = cli(*args, "--cluster", "rig", cwd=top, timeout=300)
    # sshd writes its line as it accepts: the command has ended, so every line of its connections is there
    return done, accepted(rig) - before


def test_submit_preempt_cancel_resume_and_aggregate_from_a_laptop(tmp_path, rig):
    top = _project(tmp_path, rig)
    connections = {}
    done, connections["submit"] = over_ssh(rig, top, "submit", "toy.yaml")
    assert done.returncode == 0 and "submitted 2 runs" in done.stdout, done.stdout + done.stderr
    name = json.loads((top / "toy.yaml").read_text())["name"]
    sweep = Path(rig["ROOT"]) / name                      # on the cluster's side (this machine's disk)
    assert f"sweep dir: {sweep}" in done.stdout
    runs = sorted((sweep / "runs").iterdir())
    labels = {yaml.safe_load((r / "config.yaml").read_text())["label"]: r for r in runs}
    slow, other = labels["lr=0.1"], labels["lr=0.3"]

    def lines(run):
        return (run / "metrics.jsonl").read_text().count("\n") if (run / "metrics.jsonl").exists() else 0

    def starts(run):
        text = (run / "attempts.jsonl").read_text() if (run / "attempts.jsonl").exists() else ""
        return [json.loads(x) for x in text.splitlines() if '"start"' in x]

    wait_for(lambda: lines(slow) >= 4 and lines(other) >= 4, 120, "both runs training on the cluster")
    done, connections["status"] = over_ssh(rig, top, "status", "toy.yaml")
    assert done.returncode == 0 and "2 runs: 2 running" in done.stdout, done.stdout + done.stderr
    assert "lr=0.1  running" in done.stdout and "--cluster rig" in done.stdout    # the hints say how it was asked

    # preempted: SLURM requeues the job; the run checkpoints and goes on by itself in a second attempt
    job = starts(slow)[0]["job_id"]
    subprocess.run(["scontrol", "requeue", str(job)], check=True)
    wait_for(lambda: len(starts(slow)) >= 2, 120, "the preempted run started again")

    # cancel one run over ssh: it checkpoints and stays resumable
    done, connections["cancel"] = over_ssh(rig, top, "cancel", "toy.yaml", "--only", "lr=0.3")
    assert done.returncode == 0, done.stdout + done.stderr
    wait_for(lambda: '"interrupted"' in (other / "attempts.jsonl").read_text() or (other / "result.json").exists(),
             60, "the cancelled run checkpointed")

    done, connections["logs"] = over_ssh(rig, top, "logs", "toy.yaml", "--only", "lr=0.1")
    assert done.returncode == 0 and "submitit" in done.stdout, done.stdout + done.stderr

    wait_for(lambda: (slow / "result.json").exists(), 180, "the preempted run done")
    done, connections["resume"] = over_ssh(rig, top, "resume", "toy.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (other / "result.json").exists() or "submitted 1 run" in done.stdout, done.stdout + done.stderr
    wait_for(lambda: (other / "result.json").exists(), 180, "the cancelled run done after resume")

    # the preempted run resumed from its checkpoint: no step logged twice, the same end as uninterrupted
    steps = [json.loads(x)["step"] for x in (slow / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 60
    w = 0.0
    for _ in range(60):
        w += 0.1 * (2.0 - w)
    assert json.loads((slow / "result.json").read_text())["metrics"]["w"] == pytest.approx(w, rel=1e-12)

    done, connections["aggregate"] = over_ssh(rig, top, "aggregate", "toy.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    mirror = top / "results" / "rig" / name
    assert (mirror / "analysis" / "summary.csv").exists(), done.stdout + done.stderr
    assert not (mirror / "runs" / slow.name / "checkpoints").exists()      # only what analysis reads
    # the same table as the cluster side's own aggregate of its sweep dir
    there = subprocess.run(["ssh", "-F", rig["SSH_CONFIG"], "-o", "BatchMode=yes", rig["HOST"],
                            f"{shlex.quote(rig['PYTHON'])} {shlex.quote(rig['REMOTE_CHECKOUT'])}/main.py aggregate "
                            f"{shlex.quote(str(sweep))} --out {shlex.quote(str(sweep))}/cluster_side --format csv >/dev/null "
                            f"&& cat {shlex.quote(str(sweep))}/cluster_side/summary.csv"],
                           capture_output=True, text=True, timeout=300)
    assert there.returncode == 0, there.stderr
    assert (mirror / "analysis" / "summary.csv").read_text() == there.stdout

    import analysis                                       # `import analysis` on the laptop reads the mirror
    table = analysis.runs(mirror)
    assert sorted(table["state"]) == ["done", "done"] and sorted(table["lr"]) == [0.1, 0.3]
    # a second pull copies only what changed: nothing
    done, connections["pull"] = over_ssh(rig, top, "pull", "toy.yaml")
    assert done.returncode == 0 and "pulled 0 changed files" in done.stderr, done.stdout + done.stderr
    # a command right after another shares its connection: none opened
    done, reused = over_ssh(rig, top, "status", "toy.yaml", fresh=False)
    assert done.returncode == 0 and "2 runs: 2 done" in done.stdout, done.stdout + done.stderr
    print(f"ssh connections opened per command: {connections}; right after another: {reused}")
    assert connections == dict.fromkeys(connections, 1) and reused == 0, (connections, reused)


def test_clear_errors_for_what_goes_wrong(tmp_path, rig):
    state = Path(rig["STATE"])
    # a key the server does not know, and a port nobody listens on
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "stranger")], check=True)
    config = Path(rig["SSH_CONFIG"]).read_text()
    (tmp_path / "stranger_config").write_text(config.replace(str(state / "id_ed25519"), str(tmp_path / "stranger")))
    port = re.search(r"Port (\d+)", config).group(1)
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    (tmp_path / "dead_config").write_text(config.replace(f"Port {port}", f"Port {dead}"))
    top = _project(tmp_path, rig, stranger={"ssh_config": str(tmp_path / "stranger_config")},
                   dead={"ssh_config": str(tmp_path / "dead_config")},
                   missing={"remote_command": ["/nonexistent/bin/hpcsweep"]},
                   old={"remote_command": ["sh", "-c", "echo hpcsweep 0.0.1", "sh"]})

    def error(*args):
        remote.close(rig["profiles"][0])   # the same host, port and user share one ControlPath: no earlier master
        done = cli(*args, cwd=top, timeout=120)
        assert done.returncode == 2, done.stdout + done.stderr
        return done.stderr

    assert "refused the key" in error("status", "toy.yaml", "--cluster", "stranger")
    assert "unreachable" in error("status", "toy.yaml", "--cluster", "dead")
    assert "nothing of this project is on" in error("status", "toy.yaml", "--cluster", "rig")
    assert "hpcsweep is not found on" in error("submit", "toy.yaml", "--cluster", "missing")
    said = error("submit", "toy.yaml", "--cluster", "old")
    assert "runs hpcsweep 0.0.1" in said and "same version" in said, said
    assert not Path(rig["ROOT"]).joinpath(json.loads((top / "toy.yaml").read_text())["name"]).exists()  # nothing submitted


def test_arguments_reach_the_login_host_word_for_word():
    parser = main.build_parser()
    hostile = "base.note=a b; rm -rf ~ $(id) 'q'"
    args = parser.parse_args(["submit", "toy.yaml", "--set", hostile, "--only", "lr=0.1", "--wait",
                              "--cluster", "c", "--profiles", "/laptop/clusters.yaml"])
    profile = ClusterProfile.model_validate({"name": "c", "ssh": "me@login"})
    words = remote.argv_of("submit", parser.commands["submit"], args, "sweeps/x.yaml", profile)
    assert words == ["submit", "sweeps/x.yaml", "--set", hostile, "--wait", "--only", "lr=0.1", "--cluster", "c"] \
        or sorted(words) == sorted(["submit", "sweeps/x.yaml", "--set", hostile, "--wait", "--only", "lr=0.1",
                                    "--cluster", "c"])
    line = " ".join(shlex.quote(w) for w in words)
    assert shlex.split(line) == words                 # what the remote shell splits is what was given
    assert remote.quoted("~/venv/bin/hpcsweep") == "~/venv/bin/hpcsweep"
    assert remote.quoted("~/my dir;x") == "~/'my dir;x'"


def test_what_ssh_says_is_told_for_people():
    profile = ClusterProfile.model_validate({"name": "c", "ssh": "me@login"})
    said = {
        "me@login: Permission denied (publickey).": "refused the key",
        "Host key verification failed.": "host key is not known here",
        "ssh: Could not resolve hostname login: Name or service not known": "unreachable",
        "ssh: connect to host login port 22: Connection timed out": "unreachable",
        "kex_exchange_identification: something new": "ssh to me@login failed: kex_exchange_identification",
    }
    for stderr, meaning in said.items():
        assert meaning in str(remote._failure(profile, stderr)), stderr


def test_a_project_too_large_to_copy_is_refused_before_any_connection(tmp_path, capsys):
    (tmp_path / "data.bin").write_bytes(b"x" * 300_000)
    (tmp_path / "toy.yaml").write_text("name: big\ntask: resmlp\n")
    (tmp_path / "clusters.yaml").write_text("far: {ssh: nobody@host.invalid, sync_max_mb: 0.1}\n")
    assert main.main(["submit", str(tmp_path / "toy.yaml"), "--cluster", "far"]) == 2
    err = capsys.readouterr().err
    assert "more than cluster profile far's sync_max_mb (0.1)" in err and "data.bin (0.3 MB)" in err, err
