"""Commands from a laptop over SSH (jobs/sched/remote.py) against the same commands on the login node:
ssh connections each opens, and seconds, side by side; then pull's seconds and files, first and again.

    sudo bash env/slurm/start.sh
    .venv/bin/python bench/ssh.py [--runs 200]        # as root, or with sudo -n: it starts env/ssh's rig

Prints figures, asserts nothing. The rig: env/ssh/start.sh (an sshd on 127.0.0.1, a second user whose
home is the cluster side), stopped at the end. "On the login node" is the same hpcsweep command run
as that user on this machine, no ssh; connections are counted in sshd's log (one line each).
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from jobs.sched import remote  # noqa: E402
from jobs.spec.settings import ClusterProfile  # noqa: E402

TASK = '''
CONFIG = {"seed": 0, "steps": 5}

def train(cfg, ctx):
    for step in range(1, cfg["steps"] + 1):
        ctx.log(step, loss=1.0 / (step + cfg["seed"]))
    return {"loss": 1.0 / (cfg["steps"] + cfg["seed"])}
'''


def as_root(*command):
    return list(command) if os.geteuid() == 0 else ["sudo", "-n", *command]


def timed(command, **kw):
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, **kw)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return time.perf_counter() - start, done


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=200, help="runs in the sweep (a trivial task)")
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="hpcsweep-sshbench-"))
    state.chmod(0o755)
    subprocess.run(as_root("bash", str(REPO / "env/ssh/start.sh"), str(state), sys.executable), check=True,
                   capture_output=True)
    rig = dict(line.split("=", 1) for line in (state / "rig.env").read_text().splitlines() if "=" in line)
    root = f"{rig['REMOTE_HOME']}/sweeps-{state.name}"
    cluster = {"ssh": rig["HOST"], "ssh_config": rig["SSH_CONFIG"], "partition": "debug", "root": root,
               "remote_command": [rig["PYTHON"], f"{rig['REMOTE_CHECKOUT']}/main.py"]}
    profile = ClusterProfile.model_validate({**cluster, "name": "rig"})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            top = Path(tmp) / "project"
            top.mkdir()
            (top / "task.py").write_text(TASK)
            (top / "bench.yaml").write_text(json.dumps({
                "name": "sshbench", "task": "task.py:train", "grid": {"seed": list(range(args.runs))},
                "resources": {"time_min": 5, "mem_gb": 0.25, "pack": max(1, args.runs // 10)}}))
            (top / "clusters.yaml").write_text(json.dumps({"rig": cluster}))
            log = Path(rig["SSHD_LOG"])

            def laptop(*words):
                """(seconds, connections) of `hpcsweep WORDS --cluster rig` from the laptop, no connection open before."""
                remote.close(profile)
                before = log.read_text().count("Accepted publickey")
                seconds, done = timed([sys.executable, str(REPO / "main.py"), *words, "--cluster", "rig"], cwd=top)
                return seconds, log.read_text().count("Accepted publickey") - before, done

            submit_s, submit_n, _ = laptop("submit", "bench.yaml")
            sweep = Path(root) / "sshbench"
            deadline = time.time() + 600
            while sum(1 for _ in sweep.glob("runs/*/result.json")) < args.runs and time.time() < deadline:
                time.sleep(0.5)
            copy = next(Path(rig["REMOTE_HOME"], "hpcsweep-projects").glob("project-*"))
            login = [rig["PYTHON"], f"{rig['REMOTE_CHECKOUT']}/main.py", "status", "bench.yaml", "--cluster", "rig"]
            direct = ["su", "-s", "/bin/sh", rig["SSH_USER"], "-c",
                      f"cd {shlex.quote(str(copy))} && HPCSWEEP_CLUSTERS={remote.PROFILES_FILE} "
                      + " ".join(map(shlex.quote, login))]
            status_s, status_n, _ = laptop("status", "bench.yaml")
            status_there, _ = timed(as_root(*direct))
            pull_s, pull_n, first = laptop("pull", "bench.yaml")
            again_s, again_n, second = laptop("pull", "bench.yaml")
            print(f"runs: {args.runs}")
            print(f"{'command':<24}{'ssh connections':>16}{'seconds':>10}{'on the login node':>19}{'ratio':>8}")
            print(f"{'submit (copy + sbatch)':<24}{submit_n:>16}{submit_s:>10.2f}{'':>19}{'':>8}")
            print(f"{'status':<24}{status_n:>16}{status_s:>10.2f}{status_there:>19.2f}{status_s / status_there:>8.2f}")
            print(f"{'pull, first':<24}{pull_n:>16}{pull_s:>10.2f}   {first.stderr.strip().splitlines()[-1]}")
            print(f"{'pull, again':<24}{again_n:>16}{again_s:>10.2f}   {second.stderr.strip().splitlines()[-1]}")
            print("reference: 1 connection per command (ControlMaster); a pull again copies 0 files")
    finally:
        remote.close(profile)
        subprocess.run(as_root("bash", str(REPO / "env/ssh/stop.sh"), str(state)), capture_output=True)
        subprocess.run(as_root("rm", "-rf", "--", root, str(state)), capture_output=True)


if __name__ == "__main__":
    main()
