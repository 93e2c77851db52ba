"""SLURM: cluster profiles, array submission through submitit, and one cached sacct poller.

    profile = load_profile("local", spec=spec_path)  # the project's clusters.yaml (profile_files), as a ClusterProfile
    jobs = submit_packs(sweep_dir, pack_jobs, params) # one sbatch per array chunk
    states = job_states(jobs_in(journal_entries))    # one sacct call for the whole sweep
    queue = queue_states(jobs)                       # one squeue call, from the same cached poll

Every value that reaches an sbatch file is checked twice: the spec's values when the spec is
read (jobs/spec/settings.py), and every `#SBATCH` line of the generated file before sbatch sees
it, so a newline, `#SBATCH` or a shell metacharacter is refused with a clear error and never written.
Nothing else in the repository calls sbatch, sacct, squeue, scontrol or scancel (but the job
itself, which requeues with scontrol). What the answers mean for a run (live, ending, ended) is
decided in jobs/sched/liveness.py, not here.
"""
from __future__ import annotations

import contextlib
import getpass
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

from jobs.spec.settings import SLURM_WORD_PATTERN, ClusterProfile, Resources, settings_error
from jobs.store import SweepDir, atomic, project_top

REPO = Path(__file__).resolve().parent.parent.parent
# what a cluster with no profile of ours gets: SLURM's own defaults (its default partition, no wall-time
# limit of ours, requeue where the site allows it)
BUILTIN_PROFILES = {"local": {"description": "the cluster this runs on, with SLURM's defaults (no profile file names `local`)"}}
SACCT_MIN_INTERVAL_S = 2.0     # status loops (--wait) ask often: sacct is asked at most this often
# what a generated #SBATCH line may look like: a flag, and a value without blanks or shell syntax
# (submitit single-quotes a value holding [ ] & | *, e.g. a node list: the quotes are sbatch's, not a shell's)
SBATCH_LINE = re.compile(r"^#SBATCH --[a-z][a-z0-9-]*(=[A-Za-z0-9_.:,%/@+\-=\[\]&|*]*|='[A-Za-z0-9_.:,%/@+\-=\[\]&|*]*')?$")
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE", "REVOKED"}
INFRASTRUCTURE = {"NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "PREEMPTED"}


class ProfileError(Exception):
    pass


class SchedulerError(Exception):
    """The scheduler could not be asked (sacct or squeue missing, or failing): what runs is unknown,
    which is never taken for "live" nor for "ended"."""


def profile_name(name=None) -> str:
    return name or os.environ.get("HPCSWEEP_CLUSTER") or "local"


def profile_files(path=None, spec=None) -> list:
    """Where cluster profiles are looked for, in order (a profile is taken from the first that names it):
    --profiles FILE, $HPCSWEEP_CLUSTERS, clusters.yaml (or env/clusters.yaml, as this repository
    keeps its own) at the top of the spec's project, pyproject.toml's [tool.hpcsweep.clusters] there,
    $XDG_CONFIG_HOME/hpcsweep/clusters.yaml (~/.config/...); then the built-in `local` profile."""
    if path:
        return [Path(path)]
    top = project_top(spec)
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    files = [Path(os.environ["HPCSWEEP_CLUSTERS"])] if os.environ.get("HPCSWEEP_CLUSTERS") else []
    return files + [top / "clusters.yaml", top / "env" / "clusters.yaml", top / "pyproject.toml",
                    config / "hpcsweep" / "clusters.yaml"]


def _read_profiles(path: Path, required: bool) -> dict:
    """The profiles of one file ({} when it does not exist and is not required)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise ProfileError(f"{path}: no such cluster profiles file")
        return {}
    except OSError as e:
        raise ProfileError(f"{path}: cannot read cluster profiles: {e}")
    try:
        if path.name == "pyproject.toml":
            import tomllib
            doc = ((tomllib.loads(text).get("tool") or {}).get("hpcsweep") or {}).get("clusters") or {}
        else:
            doc = yaml.safe_load(text) or {}
    except (yaml.YAMLError, ValueError) as e:
        raise ProfileError(f"{path}: cannot read cluster profiles: {str(e).splitlines()[0]}")
    if not isinstance(doc, dict):
        raise ProfileError(f"{path}: expected a mapping of profile name -> settings")
    return doc


def load_profile(name=None, path=None, spec=None) -> ClusterProfile:
    """The named cluster profile (--cluster, else $HPCSWEEP_CLUSTER, else `local`), checked; from the
    first of profile_files(path, spec) that names it, else the built-in one of that name."""
    name = profile_name(name)
    searched, seen = [], {}
    for file in profile_files(path, spec):
        profiles = _read_profiles(file, required=bool(path) or file == Path(os.environ.get("HPCSWEEP_CLUSTERS", "")))
        searched.append(str(file))
        seen.update({k: file for k in profiles if k not in seen})
        if name in profiles:
            return _checked(name, profiles[name], file)
    if name in BUILTIN_PROFILES:
        return _checked(name, BUILTIN_PROFILES[name], "the built-in profiles")
    raise ProfileError(f"no cluster profile {name!r} in {', '.join(searched)} (have: "
                       f"{', '.join(sorted({*seen, *BUILTIN_PROFILES}))}); `hpcsweep init` writes one for this cluster")


def _checked(name, settings, where) -> ClusterProfile:
    try:
        return ClusterProfile.model_validate({**(settings or {}), "name": name})
    except ValidationError as e:
        loc, message = settings_error(e)
        raise ProfileError(f"{where}: {'.'.join(map(str, (name,) + loc))}: {message}")


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
    new_id = str(submit_packs(SweepDir(sweep_dir), [pack_job], pack_job.chain["params"])[0].job_id)
    me = (f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
          if os.environ.get("SLURM_ARRAY_JOB_ID") else os.environ.get("SLURM_JOB_ID", ""))
    if me:
        move_dependents(me, new_id)
    return new_id


def expected_start(job_res: dict, res: Resources, count: int, profile: ClusterProfile = None) -> str:
    """When SLURM would start an array of `count` such jobs now (`sbatch --test-only`: nothing is
    submitted), as its answer says it ("2026-12-04T14:36:54 on vm"); "" when it does not say.
    `job_res` from resources_for: values checked when the spec and profile were read, passed as
    arguments, never through a shell."""
    cmd = ["sbatch", "--test-only", f"--time={max(1, int(job_res['time_min']))}", f"--nodes={res.nodes}",
           f"--ntasks-per-node={res.tasks_per_node}", f"--cpus-per-task={res.cpus}",
           f"--mem={int(res.mem_gb * 1024)}M", f"--array=0-{max(0, count - 1)}"]
    for key in ("partition", "account", "qos", "constraint"):
        if job_res.get(key):
            cmd.append(f"--{key}={job_res[key]}")
    if res.gpus:                          # as executor_params asks for them
        kind = f"{profile.gpu_type}:" if profile is not None and profile.gpu_type else ""
        cmd.append(f"--gpus-per-node={kind}{res.gpus}" if profile is not None and profile.gpu_syntax == "gpus"
                   else f"--gres=gpu:{kind}{res.gpus}")
    if not shutil.which("sbatch"):
        return ""
    try:
        proc = subprocess.run(cmd + ["--wrap", "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    m = re.search(r"to start at (\S+)(?: using .*? on nodes (\S+))?", proc.stdout + proc.stderr)
    return f"{m.group(1)}" + (f" on {m.group(2)}" if m.group(2) else "") if m else ""


def cancel(job_ids) -> None:
    """scancel: SIGTERM (SIGKILL KillWait later); each run checkpoints and stays resumable.

    No USR2 first: that would make the jobs requeue or chain themselves.
    """
    subprocess.run(["scancel", *job_ids], capture_output=True, timeout=60)


def since_now() -> str:
    """A start time for sacct -S covering jobs submitted from now on (local time, a minute early for clock skew)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 60))


class Job(NamedTuple):
    """A SLURM job the journal names: its id (`A_i` for array tasks), its runs, submission, sacct start,
    and when it was submitted (the journal's ISO time)."""
    job_id: str
    runs: list
    submission: str
    since: str
    time: str = ""


def jobs_in(entries) -> list:
    """Every SLURM job the journal names (submits and chains), in journal order."""
    out, since = [], {}
    for e in entries:
        try:
            if e.get("event") == "submit" and e.get("executor") == "slurm":
                since[e["submission"]] = e.get("since")
                for job_id, pack in zip(e.get("job_ids", []), e.get("packs", [])):
                    out.append(Job(str(job_id), list(pack), e["submission"], e.get("since"), e.get("time", "")))
            elif e.get("event") == "chain":
                out.append(Job(str(e["job_id"]), list(e.get("runs", [])), e["submission"], since.get(e["submission"]),
                               e.get("time", "")))
        except (KeyError, TypeError):
            continue           # a record of another shape: skipped (the journal reader reports bad lines)
    return out


def chunk_name(job_name: str, submission: str, chunk: int) -> str:
    """The job name of one sbatch call of a submission: the journal's intent names it before sbatch
    runs, so the jobs of a submit killed before it journaled their ids are found by name."""
    return f"{job_name}.{submission}.{chunk}"


def orphans_in(entries) -> list:
    """The intents (one per sbatch call) whose submit entry never came: the submitting command died
    between sbatch and the journal. Their jobs are found by the names the intents gave them."""
    submitted = {e.get("submission") for e in entries if e.get("event") == "submit"}
    return [e for e in entries if e.get("event") == "intent" and e.get("executor") == "slurm"
            and e.get("submission") not in submitted and e.get("name") and isinstance(e.get("packs"), list)]


def recover(intents) -> list:
    """The Jobs that interrupted submissions did submit, found by name (one squeue and one sacct call);
    pack i of an intent is array task i (a one-pack intent is a plain job)."""
    if not intents:
        return []
    names = ",".join(sorted({e["name"] for e in intents}))
    seen = {}
    for cmd in (["squeue", "-h", "-r", "-o", "%i|%j", "--name", names],
                ["sacct", "-X", "-n", "-P", "-o", "JobID,JobName", "-S", _clamped(min(e.get("since") or "" for e in intents)),
                 "--name", names]):
        for line in _ask(cmd).splitlines():
            job_id, _, name = line.strip().partition("|")
            if job_id and name and not job_id.endswith("]"):
                seen.setdefault(name, set()).add(job_id)
            elif job_id.endswith("]"):             # sacct folds pending tasks: 7_[2-4]
                seen.setdefault(name, set()).update(parse_sacct(f"{job_id}|PENDING"))
    out = []
    for e in intents:
        packs = e["packs"]
        for job_id in sorted(seen.get(e["name"], ())):
            _, _, index = job_id.partition("_")
            if index.isdigit() and int(index) < len(packs):
                pack = packs[int(index)]
            elif not index and len(packs) == 1:
                pack = packs[0]
            else:
                continue
            out.append(Job(job_id, list(pack), e["submission"], e.get("since"), e.get("time", "")))
    return out


class _SchedulerPoller:
    """One squeue and one sacct call for many jobs, cached for SACCT_MIN_INTERVAL_S: every status
    read shares them. (queue states, accounting states)."""

    def __init__(self):
        self.key, self.at, self.answer, self.pinned = None, 0.0, ({}, {}, {}), 0
        self.usage_cache = {}

    def __call__(self, job_ids, since) -> tuple:
        key = (tuple(sorted(job_ids)), since)
        if self.key is not None and (self.pinned and set(key[0]) <= set(self.key[0]) or key == self.key
                                     and time.monotonic() - self.at < SACCT_MIN_INTERVAL_S):
            return self.answer
        queue, details = squeue_details(job_ids)
        answer = (queue, sacct_states(job_ids, since), details)
        self.key, self.at, self.answer = key, time.monotonic(), answer
        return answer

    def accounting(self, job_ids, since) -> dict:
        """job id -> its accounting rows (sacct_usage), from one sacct call for all of them; cached
        like the states (a finished job's accounting no longer changes)."""
        key = (tuple(sorted(job_ids)), since)
        cached = self.usage_cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < SACCT_MIN_INTERVAL_S:
            return cached[1]
        answer = sacct_usage(job_ids, since)
        self.usage_cache = {key: (time.monotonic(), answer)}
        return answer

    @contextlib.contextmanager
    def one_look(self):
        """Within the block, every read of the jobs already asked about reuses one answer, however long
        the block takes (a live view's refresh: one squeue and one sacct call, then all it shows)."""
        self.key, self.pinned = None, self.pinned + 1
        try:
            yield
        finally:
            self.pinned -= 1


poll = _SchedulerPoller()


def job_states(jobs) -> dict:
    """job id -> SLURM accounting state of `jobs` (from jobs_in), from one (cached) sacct call."""
    return _polled(jobs)[1]


def queue_states(jobs) -> dict:
    """job id -> state of those of `jobs` the controller still holds (PENDING, RUNNING, COMPLETING...),
    from one (cached) squeue call; a job it does not return has left the queue (or never reached it)."""
    return _polled(jobs)[0]


def queue_details(jobs) -> dict:
    """job id -> (reason, node) for those of `jobs` the controller holds: why a pending job waits
    (Priority, Resources, Dependency, BeginTime...) and where a running one runs; the same squeue call."""
    return _polled(jobs)[2]


def job_accounting(jobs) -> dict:
    """job id -> one dict per allocation of the job (a requeued job has one per attempt, in order): what
    sacct accounted, from one (cached) sacct call for all `jobs` (from jobs_in); see sacct_usage."""
    if not jobs:
        return {}
    return poll.accounting([j.job_id for j in jobs], _clamped(min(j.since or "" for j in jobs)))


def _polled(jobs) -> tuple:
    if not jobs:
        return {}, {}, {}
    return poll([j.job_id for j in jobs], _clamped(min(j.since or "" for j in jobs)))


def _clamped(since) -> str:
    """A start time for sacct -S: the journal's, unless it is unreadable or ahead of this clock (a
    submitting host whose clock runs ahead): then a week back, so no job is hidden by the filter."""
    try:
        at = time.mktime(time.strptime(str(since), "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, OverflowError):
        at = None
    if at is None or at > time.time() - 60:
        return "now-7days"
    return since


def _ask(cmd) -> str:
    """A scheduler query's output; SchedulerError when the command is missing or fails."""
    if not shutil.which(cmd[0]):
        raise SchedulerError(f"{cmd[0]} is not on PATH: cannot tell which SLURM jobs of this sweep still run "
                             f"(run this where SLURM's commands are, e.g. the login node)")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SchedulerError(f"{cmd[0]} did not answer: {e}")
    if proc.returncode != 0:
        if cmd[0] == "squeue" and "Invalid job id" in proc.stderr:
            return ""          # none of the jobs asked is known to the controller any more
        raise SchedulerError(f"{' '.join(cmd[:2])} ... failed (exit {proc.returncode}): "
                             f"{proc.stderr.strip()[:300] or 'no message'}")
    return proc.stdout


def squeue_states(job_ids) -> dict:
    """job id (`A_i` for array tasks, one line each) -> state, for the jobs the controller holds, from ONE squeue call."""
    return squeue_details(job_ids)[0]


def squeue_details(job_ids) -> tuple:
    """({job id: state}, {job id: (reason, node)}) for the jobs the controller holds, from ONE squeue
    call (`A_i` for array tasks, one line each). The reason is squeue's %r (None for a running job)."""
    if not job_ids:
        return {}, {}
    roots = sorted({str(j).split("_")[0] for j in job_ids})
    text = _ask(["squeue", "-h", "-r", "-o", "%i|%T|%r|%N", "-j", ",".join(roots)])
    details = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 4 and parts[0]:
            reason = "" if parts[2] in ("None", "(null)") else parts[2]
            details[parts[0]] = (reason, parts[3].strip())
    return parse_sacct(text), details


def sacct_states(job_ids, since: str) -> dict:
    """job id (as `A_i` for array tasks) -> SLURM state, from ONE sacct call for all of them."""
    if not job_ids:
        return {}
    roots = sorted({str(j).split("_")[0] for j in job_ids})
    return parse_sacct(_ask(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-S", since, "-j", ",".join(roots)]))


# what `usage` asks of sacct (seff's figures): one row per allocation and per step, requeued ones too (-D)
USAGE_FIELDS = ("JobID", "State", "ElapsedRaw", "TotalCPU", "AllocCPUS", "MaxRSS", "ReqMem", "AllocTRES",
                "Submit", "Start", "End")


def sacct_usage(job_ids, since: str) -> dict:
    """job id -> [one dict per allocation, oldest first], from ONE `sacct -D` call (allocation rows and
    their steps; a requeued job has an allocation row per attempt). Each dict: state, elapsed_s,
    cpu_s (TotalCPU; the steps' sum when the allocation row has none), alloc_cpus, max_rss_mb (the
    largest step's MaxRSS; None where the cluster gathers nothing), req_mem_mb, gpus (AllocTRES
    gres/gpu), submit, start, end (epoch seconds, None when unknown)."""
    if not job_ids:
        return {}
    roots = sorted({str(j).split("_")[0] for j in job_ids})
    text = _ask(["sacct", "-D", "-n", "-P", "-o", ",".join(USAGE_FIELDS), "-S", since, "-j", ",".join(roots)])
    return parse_sacct_usage(text)


def parse_sacct_usage(text: str) -> dict:
    """sacct_usage's answer from sacct's text (`-P -o USAGE_FIELDS`): a step row belongs to the latest
    allocation row of its job above it (sacct -D lists each attempt's steps after it)."""
    out, current = {}, {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < len(USAGE_FIELDS) or not parts[0]:
            continue
        row = dict(zip(USAGE_FIELDS, parts))
        job, _, step = row["JobID"].partition(".")
        if not step:
            if job.endswith("]"):
                continue                  # pending array tasks, folded: nothing accounted yet
            record = {"state": row["State"].split()[0] if row["State"] else "",
                      "elapsed_s": _number(row["ElapsedRaw"]) or 0.0, "cpu_s": _cpu_seconds(row["TotalCPU"]),
                      "alloc_cpus": int(_number(row["AllocCPUS"]) or 0), "max_rss_mb": _megabytes(row["MaxRSS"]),
                      "req_mem_mb": _megabytes(row["ReqMem"], int(_number(row["AllocCPUS"]) or 1)),
                      "gpus": _gpus(row["AllocTRES"]), "submit": _epoch(row["Submit"]), "start": _epoch(row["Start"]),
                      "end": _epoch(row["End"]), "steps_cpu_s": 0.0}
            out.setdefault(job, []).append(record)
            current[job] = record
        elif job in current:
            record = current[job]
            rss = _megabytes(row["MaxRSS"])
            if rss is not None:
                record["max_rss_mb"] = max(record["max_rss_mb"] or 0.0, rss)
            record["steps_cpu_s"] += _cpu_seconds(row["TotalCPU"])
    for records in out.values():
        for record in records:
            steps = record.pop("steps_cpu_s")
            record["cpu_s"] = record["cpu_s"] or steps
    return out


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _cpu_seconds(text: str) -> float:
    """sacct's TotalCPU ([D-][HH:]MM:SS[.mmm]) in seconds (0 when empty)."""
    m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)", (text or "").strip())
    if not m:
        return 0.0
    days, hours, minutes, seconds = m.groups()
    return int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)


def _megabytes(text: str, cpus: int = 1):
    """A sacct memory figure (219556K, 1G, 4000Mn, 2Gc: per node or per CPU) in MB; None when empty."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGTP]?)([nc]?)", (text or "").strip())
    if not m:
        return None
    value = float(m.group(1)) * {"": 1 / 1024 ** 2, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 ** 2,
                                 "P": 1024 ** 3}[m.group(2)]
    return value * (cpus if m.group(3) == "c" else 1)


def _gpus(tres: str) -> int:
    """The GPUs an allocation holds (AllocTRES gres/gpu=N; typed entries gres/gpu:a100=N are the same GPUs)."""
    m = re.search(r"(?:^|,)gres/gpu=(\d+)", tres or "")
    return int(m.group(1)) if m else 0


def _epoch(text: str):
    """sacct's local time (2026-12-04T20:45:12) in epoch seconds; None for Unknown / None."""
    try:
        return time.mktime(time.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, OverflowError, AttributeError):
        return None


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
    """An accounting state that is not final (what sacct says, not what the run is: liveness.py decides that)."""
    return state not in TERMINAL and state != ""


def move_dependents(old: str, new: str) -> list:
    """Jobs that wait on `old` (afterok and its kin) wait on `new` instead: a job that chains its
    runs into a continuation moves its downstream stages onto it, else they would start when the
    chaining job exits 0 with the runs unfinished. The job ids updated. Called in the job."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%E", "-t", "PENDING"], capture_output=True, text=True,
                         timeout=60).stdout
    moved = []
    for line in out.splitlines():
        job_id, _, deps = line.strip().partition("|")
        job_id = re.sub(r"_\[.*\]$", "", job_id)       # a pending array folded as 7_[0-2]: update it whole
        parts = [re.sub(r"\(.*?\)$", "", d) for d in deps.split(",") if d and d != "(null)"]
        if not any(p.split(":", 1)[-1] == old for p in parts):
            continue
        parts = [f"{p.split(':', 1)[0]}:{new}" if p.split(":", 1)[-1] == old else p for p in parts]
        done = subprocess.run(["scontrol", "update", f"JobId={job_id}", "Dependency=" + ",".join(parts)],
                              capture_output=True, text=True, timeout=60)
        if done.returncode == 0:
            moved.append(job_id)
    return moved


# ---------------------------------------------------------------- `hpcsweep init`: a profile read off the cluster

def _minutes(limit: str):
    """A SLURM time limit ([D-]HH:MM:SS, MM:SS, MM, infinite) in minutes; None when unlimited or unreadable."""
    m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+)(?::(\d+))?", limit.strip())
    if not m:
        return None
    days, a, b, c = (int(x) if x else 0 for x in m.groups())
    hours, minutes, seconds = (a, b, c) if m.group(4) is not None else (0, a, b) if m.group(2) else (0, b, 0)
    return days * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def read_cluster() -> dict:
    """What a starter profile needs, asked of the cluster itself: its name, partitions (the default
    first) with their time limits, GPU gres types, whether requeue is allowed, MaxArraySize, and the
    user's accounts where sacctmgr answers."""
    config = _ask(["scontrol", "show", "config"])
    setting = lambda key: (re.search(rf"^{key}\s*=\s*(\S+)", config, re.M) or [None, None])[1]
    partitions, gpus = {}, set()
    for line in _ask(["sinfo", "-h", "-o", "%P|%l|%G"]).splitlines():
        name, limit, gres = (line.split("|") + ["", ""])[:3]
        default = name.endswith("*")
        name = name.rstrip("*")
        if re.fullmatch(SLURM_WORD_PATTERN, name) and name not in partitions:
            partitions[name] = {"max_time_min": _minutes(limit), "default": default}
        for g in gres.split(","):
            parts = g.split("(")[0].split(":")
            if parts[0] == "gpu" and len(parts) == 3 and re.fullmatch(SLURM_WORD_PATTERN, parts[1]):
                gpus.add(parts[1])
    try:
        accounts = sorted({a.strip() for a in subprocess.run(
            ["sacctmgr", "-n", "-P", "show", "assoc", f"user={getpass.getuser()}", "format=Account"],
            capture_output=True, text=True, timeout=30).stdout.split() if re.fullmatch(SLURM_WORD_PATTERN, a.strip())})
    except (OSError, subprocess.TimeoutExpired):
        accounts = []                 # not allowed, or no accounting: the profile says to fill it in
    name = re.sub(r"[^a-z0-9_\-]", "_", (setting("ClusterName") or "cluster").lower())
    return {"name": name, "partitions": dict(sorted(partitions.items(), key=lambda kv: not kv[1]["default"])),
            "gpu_types": sorted(gpus), "requeue": setting("JobRequeue") != "0",
            "max_array_size": int(setting("MaxArraySize") or 1001), "accounts": accounts}


def starter_profiles(info: dict, where: str) -> str:
    """clusters.yaml text for the cluster `info` (from read_cluster), commented; checked to load."""
    parts = info["partitions"]
    first = next(iter(parts), None)
    limit = parts[first]["max_time_min"] if first else None
    rows = [(f"description: {info['name']}, from sinfo / scontrol" + (" / sacctmgr" if info["accounts"] else ""), "")]
    if first:
        rows.append((f"partition: {first}", "the default partition (sinfo's *)" if parts[first]["default"] else ""))
    if limit:
        rows.append((f"max_time_min: {limit}", "its wall-time limit: longer runs go on in chained jobs"))
    rows.append((f"signal_delay_s: {120 if not limit or limit >= 30 else 20}",
                 "USR2 this long before the limit: the runs checkpoint, then requeue"))
    rows.append((f"requeue: {'true' if info['requeue'] else 'false'}",
                 "JobRequeue in slurm.conf" + ("" if info["requeue"] else ": jobs chain instead")))
    rows.append(("gpu_syntax: gres", "--gres=gpu:[type:]N; `gpus` for --gpus-per-node"))
    if len(info["gpu_types"]) == 1:
        rows.append((f"gpu_type: {info['gpu_types'][0]}", "the GPU type sinfo shows"))
    elif info["gpu_types"]:
        rows.append((f"# gpu_type: {info['gpu_types'][0]}", f"GPU types here: {', '.join(info['gpu_types'])}"))
    if len(info["accounts"]) == 1:
        rows.append((f"account: {info['accounts'][0]}", "your account (sacctmgr)"))
    elif info["accounts"]:
        rows.append((f"# account: {info['accounts'][0]}", f"yours (sacctmgr): {', '.join(info['accounts'])}"))
    else:
        rows.append(("# account: mylab", "sacctmgr did not say; ask your admins if jobs need one"))
    rows.append(("setup: []", "shell lines before each job: module load ..., conda activate ..."))
    rows.append(("# root: /scratch/$USER/hpcsweep", "where sweep dirs live (storage the nodes share)"))
    others = {k: v for k, v in parts.items() if v["max_time_min"]}
    if len(parts) > 1 and others:
        rows.append(("partitions:", "each partition's own limit (a spec picks one: resources.partition)"))
        rows += [(f"  {k}: {{max_time_min: {v['max_time_min']}}}", "") for k, v in others.items()]
    lines = [f"# Cluster profiles for hpcsweep, read off {where} by `hpcsweep init` on {time.strftime('%Y-%m-%d')}.",
             f"# Use it with --cluster {info['name']} (or export HPCSWEEP_CLUSTER={info['name']}); edit freely.",
             "# A spec's resources: override these; docs/clusters.md lists every key.", "",
             f"{info['name']}:"]
    lines += [f"  {row:<34}# {why}" if why else f"  {row}" for row, why in rows]
    text = "\n".join(lines) + "\n"
    _checked(info["name"], yaml.safe_load(text)[info["name"]], "the written profile")
    return text
