"""SLURM: cluster profiles, array submission through submitit, and one cached sacct poller.

    profile = load_profile("local")                  # env/clusters.yaml, as a ClusterProfile
    jobs = submit_packs(sweep_dir, pack_jobs, params) # one sbatch per array chunk
    states = job_states(jobs_in(journal_entries))    # one sacct call for the whole sweep

Every value that reaches an sbatch file is checked twice: the spec's values when the spec is
read (jobs/spec/settings.py), and every `#SBATCH` line of the generated file before sbatch sees
it, so a newline, `#SBATCH` or a shell metacharacter is refused with a clear error and never written.
Nothing else in the repository calls sbatch, sacct or scancel.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

import yaml
from pydantic import ValidationError

from jobs.spec.settings import ClusterProfile, Resources, settings_error
from jobs.store import SweepDir, atomic

REPO = Path(__file__).resolve().parent.parent.parent
PROFILES = REPO / "env" / "clusters.yaml"
SACCT_MIN_INTERVAL_S = 2.0     # status loops (--wait) ask often: sacct is asked at most this often
# what a generated #SBATCH line may look like: a flag, and a value without blanks or shell syntax
# (submitit single-quotes a value holding [ ] & | *, e.g. a node list: the quotes are sbatch's, not a shell's)
SBATCH_LINE = re.compile(r"^#SBATCH --[a-z][a-z0-9-]*(=[A-Za-z0-9_.:,%/@+\-=\[\]&|*]*|='[A-Za-z0-9_.:,%/@+\-=\[\]&|*]*')?$")
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE", "REVOKED"}
INFRASTRUCTURE = {"NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "PREEMPTED"}


class ProfileError(Exception):
    pass


def profile_name(name=None) -> str:
    return name or os.environ.get("HPCSWEEP_CLUSTER") or "local"


def load_profile(name=None, path=PROFILES) -> ClusterProfile:
    """The named cluster profile (--cluster, else $HPCSWEEP_CLUSTER, else `local`), checked."""
    name = profile_name(name)
    try:
        profiles = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ProfileError(f"{path}: cannot read cluster profiles: {e}")
    if name not in profiles:
        raise ProfileError(f"{path}: no cluster profile {name!r} (have: {', '.join(sorted(profiles))})")
    try:
        return ClusterProfile.model_validate({**(profiles[name] or {}), "name": name})
    except ValidationError as e:
        loc, message = settings_error(e)
        raise ProfileError(f"{path}: {'.'.join(map(str, (name,) + loc))}: {message}")


def resources_for(res: Resources, profile: ClusterProfile) -> dict:
    """The spec's resources over the profile's, the partition's own limits applied (a plain dict)."""
    out = {k: getattr(profile, k) for k in ("partition", "account", "qos", "constraint", "signal_delay_s")
           if getattr(profile, k) is not None}
    out.update({k: v for k, v in res.model_dump(exclude={"sbatch"}).items() if v is not None})
    limit, out["requeue"] = profile.limits(out.get("partition"))
    if limit and out["time_min"] > limit:
        out["time_min"] = limit          # longer runs continue in chained jobs
    return out


def executor_params(job_res: dict, res: Resources, profile: ClusterProfile, job_name: str, pack_size: int = 1) -> dict:
    """submitit SlurmExecutor parameters for a pack job (`job_res` from resources_for)."""
    params = {
        "job_name": job_name,
        "time": max(1, int(job_res["time_min"])),
        "nodes": res.nodes,
        "ntasks_per_node": res.tasks_per_node,
        "cpus_per_task": res.cpus * (pack_size if res.pack_concurrent else 1),
        "mem": f"{int(res.mem_gb * 1024)}M",
        "signal_delay_s": int(job_res.get("signal_delay_s") or 90),
        "array_parallelism": res.parallel_jobs("slurm"),
        # the job runs from the repository, as the local executor's do (`jobs`, `models` importable;
        # relative paths in a config mean the same on both), whatever directory `submit` ran in
        "setup": list(profile.setup) + [
            f"cd {shlex.quote(str(REPO))}",
            f"export PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}"],
        "additional_parameters": {**profile.sbatch.additional_parameters(), **res.sbatch.additional_parameters()},
    }
    for key in ("partition", "qos", "constraint"):
        if job_res.get(key):
            params[key] = job_res[key]
    if res.world_size > 1:
        # one rank that dies (an exception, a kill) ends the step at once: the others would wait in a
        # collective until the wall clock
        params["srun_args"] = ["--kill-on-bad-exit=1"]
    if job_res.get("account"):
        params["additional_parameters"]["account"] = job_res["account"]
    if job_res.get("requeue", True):
        params["additional_parameters"]["requeue"] = True
    if res.gpus:
        kind = f"{profile.gpu_type}:" if profile.gpu_type else ""
        if profile.gpu_syntax == "gpus":
            params["gpus_per_node"] = f"{kind}{res.gpus}"
        else:
            params["gres"] = f"gpu:{kind}{res.gpus}"
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


def submit_packs(sweep_dir: SweepDir, pack_jobs: list, params: dict, chunk=None) -> list:
    """Submit the pack jobs as arrays (chunks under MaxArraySize); the submitit jobs, in order."""
    import submitit
    folder = SweepDir(Path(sweep_dir.path).resolve()).slurm_logs()
    check_path(folder.parent.parent)
    ex = _executor_class()(folder=folder, max_num_timeout=1000)
    ex.update_parameters(**params)
    chunk = chunk or max(1, max_array_size() - 1)       # the array *index* must stay below MaxArraySize
    jobs = []
    conf = os.environ.get("SLURM_CONF")
    # as from a login shell: a chained job that inherited SLURM_ARRAY_JOB_ID, SLURM_JOB_ID... from
    # the job that submitted it would take itself for that job (and requeue or count attempts of the
    # wrong one); sbatch exports our environment to the new job. SLURM_CONF says which cluster.
    with submitit.helpers.clean_env():
        if conf:
            os.environ["SLURM_CONF"] = conf
        for i in range(0, len(pack_jobs), chunk):
            part = pack_jobs[i:i + chunk]
            if len(part) == 1:
                jobs.append(ex.submit(part[0]))
            else:
                with ex.batch():
                    submitted = [ex.submit(j) for j in part]
                jobs.extend(submitted)
    return jobs


def submit_chained(sweep_dir, pack_job) -> str:
    """Submit `pack_job` (the runs left when a job's requeue budget is spent) as a fresh job; its id.

    Handed to the runtime inside each PackJob (chaining happens in the job, not on the login node).
    """
    return str(submit_packs(SweepDir(sweep_dir), [pack_job], pack_job.chain["params"])[0].job_id)


def cancel(job_ids) -> None:
    """scancel: SIGTERM (SIGKILL KillWait later); each run checkpoints and stays resumable.

    No USR2 first: that would make the jobs requeue or chain themselves.
    """
    subprocess.run(["scancel", *job_ids], capture_output=True, timeout=60)


def since_now() -> str:
    """A start time for sacct -S covering jobs submitted from now on (local time, a minute early for clock skew)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 60))


class Job(NamedTuple):
    """A SLURM job the journal names: its id (`A_i` for array tasks), its runs, submission, sacct start."""
    job_id: str
    runs: list
    submission: str
    since: str


def jobs_in(entries) -> list:
    """Every SLURM job the journal names (submits and chains), in journal order."""
    out, since = [], {}
    for e in entries:
        try:
            if e.get("event") == "submit" and e.get("executor") == "slurm":
                since[e["submission"]] = e.get("since")
                for job_id, pack in zip(e.get("job_ids", []), e.get("packs", [])):
                    out.append(Job(str(job_id), list(pack), e["submission"], e.get("since")))
            elif e.get("event") == "chain":
                out.append(Job(str(e["job_id"]), list(e.get("runs", [])), e["submission"], since.get(e["submission"])))
        except (KeyError, TypeError):
            continue           # a record of another shape: skipped (the journal reader reports bad lines)
    return out


class _SacctPoller:
    """One sacct call for many jobs, cached for SACCT_MIN_INTERVAL_S: every status read shares it."""

    def __init__(self):
        self.key, self.at, self.states = None, 0.0, {}

    def __call__(self, job_ids, since) -> dict:
        key = (tuple(sorted(job_ids)), since)
        if key == self.key and time.monotonic() - self.at < SACCT_MIN_INTERVAL_S:
            return self.states
        self.key, self.at, self.states = key, time.monotonic(), sacct_states(job_ids, since)
        return self.states


poll = _SacctPoller()


def job_states(jobs) -> dict:
    """job id -> SLURM state of `jobs` (from jobs_in), from one (cached) sacct call."""
    if not jobs:
        return {}
    return poll([j.job_id for j in jobs], min(j.since or "now-7days" for j in jobs))


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


def _job_log_tail(sweep_dir, job_id, lines=15) -> str:
    """The last lines of a job's stderr log."""
    try:
        return "\n".join(sweep_dir.job_stderr(job_id).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def latest_jobs(jobs) -> dict:
    """run_id -> the id of the last job (in journal order) that held the run."""
    return {run_id: job.job_id for job in jobs for run_id in job.runs}


def infrastructure_failures(sweep_dir: SweepDir, jobs, states) -> dict:
    """run_id -> the error text of each run killed by the machine, not by its own code. Reads only.

    A run whose latest job ended NODE_FAIL / OUT_OF_MEMORY / BOOT_FAIL (per sacct) while the run
    was in it (an attempt started there and never ended) failed for that reason; so did a run whose
    job ended FAILED before the run started (python missing, an import error, a bad setup line:
    resubmitting as is would fail the same way). `jobs`: from jobs_in, in journal order.
    """
    latest = latest_jobs(jobs)
    found = {}
    for run_id, job_id in latest.items():
        state = states.get(job_id)
        if state not in INFRASTRUCTURE_WHY:
            continue
        run_dir = sweep_dir.run(run_id)
        if run_dir.result.exists() or run_dir.error.exists():
            continue
        attempts = run_dir.read_attempts()
        started = {a.get("attempt") for a in attempts if a.get("event") == "start" and a.get("job_id") == job_id}
        ended = {a.get("attempt") for a in attempts if a.get("event") == "end"}
        if state == "FAILED":
            if started:
                continue             # the run was there: its own error.txt / checkpoints tell the story
            tail = _job_log_tail(sweep_dir, job_id)
            found[run_id] = (f"SLURM job {job_id} ended FAILED before the run started; its log:\n{tail}\n"
                             f"FAILED before the run started (job {job_id}): {tail.splitlines()[-1] if tail else 'no log'}\n")
        elif started - ended:
            found[run_id] = (f"SLURM job {job_id} ended {state}: {INFRASTRUCTURE_WHY[state]}.\n"
                             f"{state} (infrastructure, not the task): job {job_id}; "
                             "resume --retry-failed reruns it from its last checkpoint\n")
    return found


STOPPED_WHY = {
    "TIMEOUT": "hit its wall-clock limit before the run could checkpoint (raise checkpoint.margin_s or "
               "resources.signal_delay_s if this repeats)",
    "PREEMPTED": "was preempted",
    "CANCELLED": "was cancelled",
    "DEADLINE": "passed its deadline",
}


def interruptions(sweep_dir: SweepDir, jobs, states) -> dict:
    """run_id -> what stopped its latest attempt, for runs whose job ended TIMEOUT / PREEMPTED /
    CANCELLED while the run was in it and never wrote an end: resumable, so said, not failed."""
    latest = latest_jobs(jobs)
    out = {}
    for run_id, job_id in latest.items():
        state = states.get(job_id)
        if state not in STOPPED_WHY:
            continue
        run_dir = sweep_dir.run(run_id)
        attempts = run_dir.read_attempts()
        started = [a for a in attempts if a.get("event") == "start" and a.get("job_id") == job_id]
        ended = {a.get("attempt") for a in attempts if a.get("event") == "end"}
        if started and started[-1].get("attempt") not in ended and not run_dir.result.exists():
            out[run_id] = (f"job {job_id} ended {state}: it {STOPPED_WHY[state]} during attempt "
                           f"{started[-1].get('attempt')}; resume goes on from the run's newest valid checkpoint")
    return out


def is_live(state: str) -> bool:
    return state not in TERMINAL and state != ""
