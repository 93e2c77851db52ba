"""SLURM: cluster profiles, array submission through submitit, and one-sacct-call state.

    profile = load_profile("local")                  # env/clusters.yaml
    job_ids = submit_packs(sdir, jobs, params)       # one sbatch per array chunk
    states = sacct_states(job_ids, since)            # one sacct call for the whole sweep

Every value that reaches an sbatch file is checked twice: the spec's values when the spec is
read (jobs/spec.py), and every `#SBATCH` line of the generated file before sbatch sees it, so
a newline, `#SBATCH` or a shell metacharacter is refused with a clear error and never written.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "env" / "clusters.yaml"
PROFILE_KEYS = {"partition", "account", "qos", "constraint", "gpu_syntax", "gpu_type", "max_time_min",
                "signal_delay_s", "array_limit", "setup", "root", "requeue", "partitions", "description"}
SLURM_WORD = re.compile(r"^[A-Za-z0-9_.:,+\-]{1,128}$")
# what a generated #SBATCH line may look like: a flag, and a value without blanks or shell syntax
SBATCH_LINE = re.compile(r"^#SBATCH --[a-z][a-z0-9-]*(=[A-Za-z0-9_.:,%/@+\-=\[\]&|*]*)?$")
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE", "REVOKED"}
INFRASTRUCTURE = {"NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "PREEMPTED"}


class ProfileError(Exception):
    pass


def profile_name(name=None) -> str:
    return name or os.environ.get("HPCSWEEP_CLUSTER") or "local"


def load_profile(name=None, path=PROFILES) -> dict:
    """The named cluster profile (--cluster, else $HPCSWEEP_CLUSTER, else `local`), checked."""
    name = profile_name(name)
    try:
        profiles = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ProfileError(f"{path}: cannot read cluster profiles: {e}")
    if name not in profiles:
        raise ProfileError(f"{path}: no cluster profile {name!r} (have: {', '.join(sorted(profiles))})")
    prof = dict(profiles[name] or {})
    for key, value in prof.items():
        if key not in PROFILE_KEYS:
            raise ProfileError(f"{path}: {name}.{key}: unknown key (known: {', '.join(sorted(PROFILE_KEYS))})")
        if key in ("partition", "account", "qos", "gpu_type") and value is not None \
                and not (isinstance(value, str) and SLURM_WORD.match(value)):
            raise ProfileError(f"{path}: {name}.{key}: {value!r} is not a plain SLURM name")
    setup = prof.get("setup") or []
    if not isinstance(setup, list) or not all(isinstance(l, str) and "\n" not in l and not l.lstrip().startswith("#SBATCH")
                                              for l in setup):
        raise ProfileError(f"{path}: {name}.setup: expected a list of single shell lines (no #SBATCH lines)")
    if prof.get("gpu_syntax", "gres") not in ("gres", "gpus"):
        raise ProfileError(f"{path}: {name}.gpu_syntax: expected 'gres' (--gres=gpu:N) or 'gpus' (--gpus=N)")
    prof["name"] = name
    return prof


def resources_for(res: dict, prof: dict) -> dict:
    """The spec's resources over the profile's, the partition's own limits applied."""
    out = {k: prof[k] for k in ("partition", "account", "qos", "constraint", "signal_delay_s") if prof.get(k) is not None}
    out.update({k: v for k, v in res.items() if v is not None})
    part = (prof.get("partitions") or {}).get(out.get("partition"), {})
    limit = part.get("max_time_min", prof.get("max_time_min"))
    out["requeue"] = part.get("requeue", prof.get("requeue", True))
    if limit and out["time_min"] > limit:
        out["time_min"] = limit          # longer runs continue in chained jobs
    return out


def executor_params(res: dict, prof: dict, job_name: str) -> dict:
    """submitit SlurmExecutor parameters for a pack job with these resources."""
    params = {
        "job_name": job_name,
        "time": max(1, int(res["time_min"])),
        "cpus_per_task": int(res["cpus"]) * (len(res.get("_pack", [])) if res.get("pack_concurrent") else 1) or 1,
        "mem": f"{int(res['mem_gb'] * 1024)}M",
        "signal_delay_s": int(res.get("signal_delay_s") or 90),
        "array_parallelism": int(res["max_parallel"]),
        # the job runs from the repository, as the local executor's do (`jobs`, `models` importable;
        # relative paths in a config mean the same on both), whatever directory `submit` ran in
        "setup": list(prof.get("setup") or []) + [
            f"cd {shlex.quote(str(REPO))}",
            f"export PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}"],
        "additional_parameters": {},
    }
    for key in ("partition", "account", "qos", "constraint"):
        if res.get(key):
            if key == "account":
                params["additional_parameters"]["account"] = res[key]
            else:
                params[key] = res[key]
    if res.get("requeue", True):
        params["additional_parameters"]["requeue"] = True
    gpus = int(res.get("gpus") or 0)
    if gpus:
        kind = f"{prof['gpu_type']}:" if prof.get("gpu_type") else ""
        if prof.get("gpu_syntax", "gres") == "gpus":
            params["additional_parameters"]["gpus"] = f"{kind}{gpus}"
        else:
            params["gres"] = f"gpu:{kind}{gpus}"
    return params


def check_sbatch_text(text: str) -> None:
    """Refuse a generated sbatch file whose #SBATCH lines hold anything but plain values."""
    for line in text.splitlines():
        if line.startswith("#SBATCH") and not SBATCH_LINE.match(line):
            raise ValueError(f"refusing to submit: unsafe sbatch line {line!r}")


def _executor_class():
    import submitit

    class CheckedSlurmExecutor(submitit.SlurmExecutor):
        """submitit's SlurmExecutor, with every generated #SBATCH line checked before sbatch."""

        def _make_submission_file_text(self, command, uid):
            text = super()._make_submission_file_text(command, uid)
            check_sbatch_text(text)
            return text

    return CheckedSlurmExecutor


def check_path(path: Path) -> None:
    """A sweep dir path goes into #SBATCH --output: no blanks, no control or shell characters."""
    if not re.match(r"^[A-Za-z0-9_./+\-]+$", str(path)):
        raise ValueError(f"the sweep dir {path} cannot go into an sbatch file: use a path of letters, "
                         "digits and _./+- only (set --root)")


def max_array_size() -> int:
    """MaxArraySize from `scontrol show config` (SLURM's default 1001 if it cannot be read)."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 1001
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.M)
    return int(m.group(1)) if m else 1001


def submit_packs(sdir: Path, pack_jobs: list, params: dict, chunk=None) -> list:
    """Submit the pack jobs as arrays (chunks under MaxArraySize); the submitit jobs, in order."""
    sdir = Path(sdir).resolve()
    check_path(sdir)
    Executor = _executor_class()
    ex = Executor(folder=sdir / "logs" / "%j", max_num_timeout=1000)
    ex.update_parameters(**params)
    chunk = chunk or max(1, max_array_size() - 1)       # the array *index* must stay below MaxArraySize
    jobs = []
    with _outside_job():
        for i in range(0, len(pack_jobs), chunk):
            part = pack_jobs[i:i + chunk]
            if len(part) == 1:
                jobs.append(ex.submit(part[0]))
            else:
                with ex.batch():
                    submitted = [ex.submit(j) for j in part]
                jobs.extend(submitted)
    return jobs


class _outside_job:
    """Submit as from a login shell: sbatch exports our environment to the new job, and a chained
    job that inherited SLURM_ARRAY_JOB_ID, SLURM_JOB_ID... from the job that submitted it would take
    itself for that job (and requeue or count attempts of the wrong one). SLURM_CONF stays."""

    def __enter__(self):
        self.saved = {k: v for k, v in os.environ.items()
                      if (k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SUBMITIT_")) and k != "SLURM_CONF")}
        for k in self.saved:
            del os.environ[k]

    def __exit__(self, *exc):
        os.environ.update(self.saved)
        return False


def sacct_states(job_ids, since: str) -> dict:
    """job id (as `A_i` for array tasks) -> SLURM state, from ONE sacct call for all of them."""
    if not job_ids or not shutil.which("sacct"):
        return {}
    roots = sorted({str(j).split("_")[0] for j in job_ids})
    cmd = ["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-S", since, "-j", ",".join(roots)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return parse_sacct(out)


def parse_sacct(text: str) -> dict:
    states = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0]:
            continue
        jid, state = parts[0], parts[1].split()[0] if parts[1] else ""
        m = re.match(r"^(\d+)_\[([\d,\-]+)(?:%\d+)?\]$", jid)      # pending array tasks, folded: 7_[2-4,9%2]
        if m:
            for part in m.group(2).split(","):
                lo, _, hi = part.partition("-")
                for i in range(int(lo), int(hi or lo) + 1):
                    states[f"{m.group(1)}_{i}"] = state
        else:
            states[jid] = state
    return states


INFRASTRUCTURE_WHY = {
    "NODE_FAIL": "the node failed",
    "OUT_OF_MEMORY": "the job ran out of memory (raise resources.mem_gb)",
    "BOOT_FAIL": "the node failed to boot",
    "FAILED": "the job failed",
}


def _job_log_tail(sdir, jid, lines=15) -> str:
    """The last lines of a job's stderr log (submitit's layout: logs/<A_i>/<A_i>_0_log.err)."""
    path = Path(sdir) / "logs" / jid / f"{jid}_0_log.err"
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def note_infrastructure_failures(sdir, jobs, states) -> list:
    """Mark runs killed by the machine, not by their own code, as failed; the run_ids marked.

    A run whose latest job ended NODE_FAIL / OUT_OF_MEMORY / BOOT_FAIL (per sacct) while the run
    was in it (an attempt started there and never ended) gets an error.txt naming the state, so
    `status` shows it failed with the reason and `resume --retry-failed` resubmits it.
    `jobs`: (job id, run_ids, ...) in journal order.
    """
    from jobs import atomic, sweepdir
    latest = {}
    for jid, runs, *_ in jobs:
        for rid in runs:
            latest[rid] = jid
    marked = []
    for rid, jid in latest.items():
        state = states.get(jid)
        if state not in INFRASTRUCTURE_WHY:
            continue
        rdir = sweepdir.run_dir(sdir, rid)
        if (rdir / "result.json").exists() or (rdir / "error.txt").exists():
            continue
        attempts = sweepdir.read_jsonl(rdir / "attempts.jsonl")
        started = {a.get("attempt") for a in attempts if a.get("event") == "start" and a.get("job_id") == jid}
        ended = {a.get("attempt") for a in attempts if a.get("event") == "end"}
        if state == "FAILED":
            if started:
                continue             # the run was there: its own error.txt / checkpoints tell the story
            # the job died before it could start the run (python missing, an import error, a bad
            # setup line): resubmitting as is would fail the same way, so it is a failure, shown
            tail = _job_log_tail(sdir, jid)
            atomic.write_text(rdir / "error.txt",
                              f"SLURM job {jid} ended FAILED before the run started; its log:\n{tail}\n"
                              f"FAILED before the run started (job {jid}): {tail.splitlines()[-1] if tail else 'no log'}\n")
            marked.append(rid)
            continue
        if not started - ended:
            continue                 # the run was not in that job when it died: it stays pending
        atomic.write_text(rdir / "error.txt",
                          f"SLURM job {jid} ended {state}: {INFRASTRUCTURE_WHY[state]}.\n"
                          f"{state} (infrastructure, not the task): job {jid}; "
                          "python main.py resume SPEC --retry-failed reruns it from its last checkpoint\n")
        marked.append(rid)
    return marked


def is_live(state: str) -> bool:
    return state not in TERMINAL and state != ""
