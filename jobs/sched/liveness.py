"""Which jobs and runs are live: the one rule of what is in flight, in one place.

    view = liveness.look(sweep_dir, run_ids)     # one squeue + one sacct call (cached), the run locks
    view.live      run_id -> who runs it (a submission id, or the lock holder's record)
    view.ending    run_id -> the job that is ending (cancelled, still completing)

The rule: a job is live only on positive evidence.
- A SLURM job is live while squeue shows it PENDING / RUNNING / REQUEUED / SUSPENDED (or another
  state the controller keeps a job in before it ends). While squeue shows it COMPLETING it is
  *ending*: sacct may already say CANCELLED while its process still writes a checkpoint. An ending
  run is not in flight, but nothing may start it again until its job is gone (submit waits, bounded).
- A job squeue does not show has ended, unless the journal says it was submitted less than GRACE_S
  ago and neither squeue nor sacct shows its array at all yet. (A pending array task cancelled by
  scancel vanishes from both while its array stays: "not returned" must never mean "live".)
- A local driver is live while its process is, checked by pid and command on its own host; the
  driver of another host is taken at its word until it journals its end (nothing here can ask it).
- A run's lock holder is live when its process is alive by pid + start time on this host, or,
  on another host, when the scheduler says its job runs: a dead job on another host holds nothing.
- No squeue or sacct where the journal names SLURM jobs: SchedulerError, never "live" by default.
"""
from __future__ import annotations

import re
import socket
import time
from datetime import datetime
from typing import NamedTuple

from jobs.sched import local, slurm
from jobs.store import SweepDir, Where, atomic

GRACE_S = 30.0       # how long a job just submitted may be missing from squeue and sacct
ENDING_WAIT_S = 60.0  # how long submit waits for cancelled jobs to finish completing
LIVE_STATES = frozenset({"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED",
                         "CONFIGURING", "RESIZING", "SIGNALING", "STOPPED", "SPECIAL_EXIT", "RESV_DEL_HOLD"})
LIVE, ENDING, ENDED = "live", "ending", "ended"
SLURM_ID = re.compile(r"^\d+(_\d+)?$")


class View(NamedTuple):
    live: dict       # run_id -> who runs it (submission id or lock holder record)
    ending: dict     # run_id -> the job id that is ending
    jobs: dict = {}  # run_id -> (its live SLURM job, that job's squeue state)


def verdict(job, queue: dict, acct: dict, now: float | None = None, seen=None) -> str:
    """LIVE, ENDING or ENDED for one SLURM job, from squeue's and sacct's answers. `seen`: the array
    ids either answer names (computed when not given)."""
    state = queue.get(job.job_id)
    if state in LIVE_STATES:
        return LIVE
    if state is not None:
        return ENDING           # COMPLETING, STAGE_OUT: still held by the controller, its processes may write
    seen = answered(queue, acct) if seen is None else seen
    # just submitted, and neither shows its array at all yet; a task missing from an array they do
    # show was taken out of it (a scancelled pending task leaves no trace)
    if (job.job_id.split("_")[0] not in seen and acct.get(job.job_id) in (None, *LIVE_STATES)
            and _young(job.time, time.time() if now is None else now)):
        return LIVE
    return ENDED


def answered(queue: dict, acct: dict) -> set:
    """The job (array) ids that squeue or sacct named."""
    return {j.split("_")[0] for j in (*queue, *acct)}


def _young(iso: str, now: float) -> bool:
    """Submitted less than GRACE_S ago. A time ahead of this clock (another host's clock) is not young:
    no grace is given to what cannot be measured."""
    try:
        age = now - datetime.fromisoformat(str(iso)).timestamp()
    except (TypeError, ValueError):
        return False
    return 0 <= age < GRACE_S


def slurm_jobs(entries) -> list:
    """Every SLURM job of the journal, those of interrupted submissions (found by name) included."""
    return slurm.jobs_in(entries) + slurm.recover(slurm.orphans_in(entries))


def look(sweep_dir: SweepDir, run_ids, entries=None) -> View:
    """Who runs each of `run_ids` now, by the rule above. Reads; writes nothing."""
    entries = sweep_dir.read_journal() if entries is None else entries
    jobs = slurm_jobs(entries)
    holders = sweep_dir.holders(run_ids)
    known = {j.job_id for j in jobs}
    # a lock holder's job, when the holder says it is SLURM's or the journal names it, is asked too
    extra = [slurm.Job(h["job_id"], [rid], "", "", "") for rid, h in holders.items()
             if _holder_job(h, known) and h["job_id"] not in known]
    asked = jobs + extra
    queue, acct = (slurm.queue_states(asked), slurm.job_states(asked)) if asked else ({}, {})
    now, seen = time.time(), answered(queue, acct)
    verdicts = {j.job_id: verdict(j, queue, acct, now, seen) for j in asked}
    live, ending, held = {}, {}, {}
    for job in jobs:
        for run_id in job.runs:
            if verdicts[job.job_id] == LIVE:
                live[run_id] = job.submission
                held[run_id] = (job.job_id, queue.get(job.job_id, ""))
            elif verdicts[job.job_id] == ENDING:
                ending.setdefault(run_id, job.job_id)
    live.update(_local_drivers(entries, sweep_dir))
    here = socket.gethostname()
    for run_id, h in holders.items():
        job = _holder_job(h, known | {j.job_id for j in extra})
        said = verdicts.get(job) if job else None
        if h.get("host") == here:
            if not local.process_alive(h.get("pid", -1), h.get("process_started")):
                continue            # a holder that died (killed, out of memory) holds nothing
            if said in (ENDING, ENDED):
                ending.setdefault(run_id, job)      # cancelled, its process still finishing
            else:
                live[run_id] = h
        elif said == LIVE:
            live[run_id] = h
        elif said == ENDING:
            ending.setdefault(run_id, job)
    return View(live, {rid: j for rid, j in ending.items() if rid not in live}, held)


def settle(sweep_dir: SweepDir, run_ids, entries=None, wait_s=ENDING_WAIT_S, log=print) -> View:
    """look(), after waiting (at most `wait_s`) for the runs whose jobs are ending to let go: a run just
    cancelled can be resubmitted the moment its job has finished writing."""
    view = look(sweep_dir, run_ids, entries)
    if not view.ending:
        return view
    log(f"waiting for {len(view.ending)} runs whose jobs are ending (cancelled, still completing) to let go: "
        + ", ".join(sorted(set(view.ending.values()))[:5]))
    deadline = time.monotonic() + wait_s
    while view.ending and time.monotonic() < deadline:
        time.sleep(min(1.0, slurm.SACCT_MIN_INTERVAL_S))
        view = look(sweep_dir, run_ids, entries)
    return view


def _holder_job(holder: dict, known) -> str:
    """The SLURM job a lock holder ran in, when it is one ("" for a local process)."""
    job = str(holder.get("job_id", ""))
    if SLURM_ID.match(job) and (holder.get("scheduler") == "slurm" or job in known):
        return job
    return ""


def _local_drivers(entries, sweep_dir) -> dict:
    """run_id -> submission, for the local executor's drivers that are alive (but the runs `cancel --only`
    took out of them: a driver starts none of those)."""
    ended = {e.get("submission") for e in entries if e.get("event") == "driver_end"}
    started = {e.get("submission"): e for e in entries if e.get("event") == "driver_start"}
    submitted = {e.get("submission") for e in entries if e.get("event") == "submit"}
    here = socket.gethostname()
    out = {}
    for e in entries:
        # a submit entry, or the intent of a submit that died before writing one (its driver says its pid)
        if e.get("executor") != "local" or e.get("submission") in ended:
            continue
        if e.get("event") == "intent" and e.get("submission") not in submitted:
            e = {**e, **{k: v for k, v in started.get(e.get("submission"), {}).items() if k in ("driver_pid", "host")}}
            if "driver_pid" not in e:
                continue
        elif e.get("event") != "submit":
            continue
        if e.get("host") == here and not local.driver_alive(e.get("driver_pid", -1), e.get("submission", "")):
            continue
        dropped = {c.get("run_id") for c in atomic.read_jsonl(sweep_dir.cancelled_runs(e.get("submission", "")))}
        for run_id in e.get("runs", []):
            if run_id not in dropped:
                out[run_id] = e.get("submission")
    return out


def placement(sweep_dir: SweepDir, view: View, run_ids) -> dict:
    """run_id -> {where, job_id, reason, node} for the runs of `run_ids` that `view` says are live:
    queued (with squeue's reason), running (on which node), or requeued. From the same cached
    squeue answer `look` used; the run's attempts say whether it started in its current job."""
    details = slurm.queue_details([slurm.Job(job, [], "", "", "") for job, _ in view.jobs.values()]) if view.jobs else {}
    out = {}
    for run_id in run_ids:
        if run_id not in view.live:
            continue
        starts = sweep_dir.run(run_id).starts()
        last = starts[-1] if starts else {}
        if run_id in view.jobs:
            job, state = view.jobs[run_id]
            reason, node = details.get(job, ("", ""))
            ran_here = str(last.get("job_id")) == job
            ended = ran_here and any(a.get("event") == "end" and a.get("attempt") == last.get("attempt")
                                     for a in sweep_dir.run(run_id).read_attempts())
            if state == "RUNNING" and ran_here and not ended:
                where, reason = Where.RUNNING, ""
            elif state.startswith("REQUEUE") or (ran_here and state == "PENDING"):
                where, node = Where.REQUEUED, ""
            elif state == "RUNNING":      # its job runs the runs of its pack before this one
                where, reason, node = Where.QUEUED, "its pack's earlier runs", ""
            else:
                where, node = Where.QUEUED, ""
            out[run_id] = {"where": where, "job_id": job, "reason": reason, "node": node}
        else:                              # a local driver, or a lock holder (a process on some host)
            holder = view.live[run_id] if isinstance(view.live[run_id], dict) else sweep_dir.run(run_id).read_holder()
            if holder and holder.get("pid") and (holder.get("host") != socket.gethostname()
                                                 or local.process_alive(holder["pid"], holder.get("process_started"))):
                out[run_id] = {"where": Where.RUNNING, "job_id": str(holder.get("job_id") or ""), "reason": "",
                               "node": str(holder.get("host") or "")}
            else:
                out[run_id] = {"where": Where.QUEUED, "job_id": "", "reason": "local driver: waits for a slot or "
                               "an upstream run", "node": ""}
    return out
