"""What a sweep used and what it will cost: accounting per run and per sweep, suggestions, estimates.

    python main.py usage sweeps/x.yaml            # per run: elapsed, CPU efficiency, peak RSS vs asked, GPUs, waits
    python main.py usage sweeps/x.yaml --json
    rows = run_usage(sweep, sweep_dir)            # one dict per run (the columns below)
    totals, advice = sweep_usage(rows), suggestions(rows)
    estimate(sweep, sweep_dir, states)            # plan: what the runs not done yet will take

Where the numbers come from: on SLURM, ONE `sacct -D` call for every job the journal names
(jobs/sched/slurm.py's poller: seff's figures, the allocation and its steps, each requeued attempt
its own row); a job's figures are joined to runs through the runs' attempts.jsonl (which job each
attempt ran in). Locally, and wherever the cluster's accounting gathers nothing (an empty MaxRSS or
TotalCPU), each attempt's own measurement, which the runner writes into its end record (CPU seconds
of the process, its peak RSS).

Packs: a job runs several runs. A job's elapsed time, CPU time and GPU time are divided among its
runs in proportion to each run's own wall time in that job (what it held the allocation for); its
peak RSS, requested memory, CPUs, GPUs and queue wait are the job's, shown as they are for each of its
runs (a peak cannot be divided). `jobs` in a row says how many jobs it shared.
"""
from __future__ import annotations

import math
import shutil
import statistics
import time

from pydantic import ValidationError

from jobs.sched import slurm
from jobs.spec.settings import Resources
from jobs.store import RunState, SweepDir, atomic

# the columns of a run's row, in the order `usage` shows them (analysis.runs prefixes them with `usage_`)
COLUMNS = ("source", "jobs", "attempts", "requeues", "elapsed_s", "cpu_s", "alloc_cpus", "cpu_eff", "max_rss_mb",
           "req_mem_mb", "mem_eff", "gpus", "gpu_hours", "cpu_hours", "queue_wait_s", "time_min")
LOW_CPU_EFF = 0.5              # below this a suggestion says so
LOW_MEM_USE = 0.5              # a peak below this share of the memory asked: suggest less
LOW_TIME_USE = 0.5             # the longest run below this share of time_min: suggest a shorter limit
HEADROOM = 1.25                # what a suggestion adds to the largest peak / longest run seen


BASIS_MAX = 500                # done runs an estimate reads at most per group (plan stays fast on huge sweeps)


def resources_of(sweep, run, known=None) -> Resources:
    """The resources the run's stage asks for (the spec's defaults where it says nothing); `known`: a
    dict that keeps them per stage (validated once, not once per run)."""
    from jobs.sched.submit import resources_of as of_stage
    known = {} if known is None else known
    if run.stage not in known:
        try:
            known[run.stage] = of_stage(sweep, sweep.stage_of(run))
        except (ValidationError, StopIteration):
            known[run.stage] = Resources()
    return known[run.stage]


def run_usage(sweep, sweep_dir: SweepDir, runs=None, accounting=None) -> list:
    """One dict per run (`runs`: Run objects, default every run of the sweep) with COLUMNS and run_id,
    label, stage (and, on SLURM, `allocations`: each allocation's job id, state, submit, start and end
    times, for report.html's timeline): what its attempts used. `accounting`: job id -> allocations (from
    slurm.job_accounting); asked of sacct (one call) when None and the journal names SLURM jobs."""
    runs = sweep.runs if runs is None else runs
    if accounting is None:
        jobs = slurm.jobs_in(sweep_dir.read_journal())
        accounting = slurm.job_accounting(jobs) if jobs else {}
    attempts = {r.run_id: sweep_dir.run(r.run_id).read_attempts() for r in runs}
    # each job's runs and the wall time each spent in it: the key to dividing a pack's usage
    held = {}
    for run_id, records in attempts.items():
        for job_id, seconds in _wall_by_job(records).items():
            held.setdefault(job_id, {})[run_id] = seconds
    known = {}
    return [_row(r, resources_of(sweep, r, known), attempts[r.run_id], accounting, held) for r in runs]


def _wall_by_job(records) -> dict:
    """job id -> seconds the run's ended attempts ran in it."""
    out = {}
    for a in records:
        if a.get("event") == "end" and isinstance(a.get("started"), (int, float)) and isinstance(a.get("ended"), (int, float)):
            out[str(a.get("job_id"))] = out.get(str(a.get("job_id")), 0.0) + max(0.0, a["ended"] - a["started"])
    return out


def _row(run, res: Resources, records, accounting, held) -> dict:
    ends = [a for a in records if a.get("event") == "end"]
    starts = [a for a in records if a.get("event") == "start"]
    per_job = {}
    for a in starts:
        per_job[str(a.get("job_id"))] = per_job.get(str(a.get("job_id")), 0) + 1
    own_cpu = sum(a.get("cpu_s") or 0.0 for a in ends)
    own_rss = max([a["max_rss_mb"] for a in ends if isinstance(a.get("max_rss_mb"), (int, float))], default=None)
    own_wall = sum(_wall_by_job(records).values())
    row = {"run_id": run.run_id, "label": run.label, "stage": run.stage, "time_min": res.time_min,
           "attempts": len(starts), "jobs": len(per_job), "requeues": sum(n - 1 for n in per_job.values())}
    accounted = [job for job in per_job if accounting.get(job)]
    if accounted:
        elapsed = cpu = gpu_s = alloc_s = wait = 0.0
        rss, req, cpus, gpus, allocations = None, None, 0, 0, 0
        for job in accounted:
            share = held.get(job, {}).get(run.run_id, 0.0) / (sum(held.get(job, {}).values()) or 1.0)
            if len(held.get(job, {})) <= 1:
                share = 1.0                    # the job ran this run alone (or none ended yet): all of it
            for alloc in accounting[job]:
                allocations += 1
                elapsed += share * alloc["elapsed_s"]
                cpu += share * alloc["cpu_s"]
                gpu_s += share * alloc["elapsed_s"] * alloc["gpus"]
                alloc_s += share * alloc["elapsed_s"] * alloc["alloc_cpus"]
                if alloc["start"] and alloc["submit"] and alloc["start"] >= alloc["submit"]:
                    wait += alloc["start"] - alloc["submit"]
                if alloc["max_rss_mb"] is not None:
                    rss = max(rss or 0.0, alloc["max_rss_mb"])
                req = alloc["req_mem_mb"] if alloc["req_mem_mb"] else req
                cpus, gpus = alloc["alloc_cpus"] or cpus, alloc["gpus"]
        row["allocations"] = [{"job_id": job, "state": a["state"], "submit": a["submit"], "start": a["start"],
                               "end": a["end"]} for job in accounted for a in accounting[job]]
        gathered = rss is not None and cpu > 0
        row.update(source="sacct" if gathered else "sacct+job", elapsed_s=elapsed,
                   cpu_s=cpu if cpu > 0 else own_cpu, max_rss_mb=rss if rss is not None else own_rss,
                   req_mem_mb=req, alloc_cpus=cpus, gpus=gpus, gpu_hours=gpu_s / 3600, cpu_hours=alloc_s / 3600,
                   queue_wait_s=wait, requeues=max(row["requeues"], allocations - len(accounted)))
    elif ends:
        cpus = res.cpus * res.world_size
        row.update(source="job", elapsed_s=own_wall, cpu_s=own_cpu, max_rss_mb=own_rss, req_mem_mb=res.mem_gb * 1024,
                   alloc_cpus=cpus, gpus=res.gpus * res.nodes, gpu_hours=own_wall * res.gpus * res.nodes / 3600,
                   cpu_hours=own_wall * cpus / 3600, queue_wait_s=None)
    else:
        row.update(source="", elapsed_s=None, cpu_s=None, max_rss_mb=None, req_mem_mb=None, alloc_cpus=None,
                   gpus=None, gpu_hours=None, cpu_hours=None, queue_wait_s=None)
    row["cpu_eff"] = (row["cpu_s"] / (row["elapsed_s"] * row["alloc_cpus"])
                      if row["cpu_s"] is not None and row["elapsed_s"] and row["alloc_cpus"] else None)
    row["mem_eff"] = (row["max_rss_mb"] / row["req_mem_mb"]
                      if row["max_rss_mb"] is not None and row["req_mem_mb"] else None)
    return row


def sweep_usage(rows) -> dict:
    """The sweep's totals over the runs that used anything: hours, efficiencies, peaks, waits, requeues."""
    used = [r for r in rows if r["source"]]
    total = lambda key: sum(r[key] or 0.0 for r in used)
    alloc_cpu_s = sum((r["elapsed_s"] or 0.0) * (r["alloc_cpus"] or 0) for r in used)
    waits = [r["queue_wait_s"] for r in used if r["queue_wait_s"] is not None]
    peaks = [r["max_rss_mb"] for r in used if r["max_rss_mb"] is not None]
    return {"runs": len(rows), "measured": len(used), "elapsed_hours": total("elapsed_s") / 3600,
            "cpu_hours": total("cpu_hours"), "cpu_hours_used": total("cpu_s") / 3600,
            "cpu_eff": total("cpu_s") / alloc_cpu_s if alloc_cpu_s else None, "gpu_hours": total("gpu_hours"),
            "max_rss_mb": max(peaks, default=None), "median_rss_mb": statistics.median(peaks) if peaks else None,
            "queue_wait_mean_s": statistics.fmean(waits) if waits else None, "queue_wait_max_s": max(waits, default=None),
            "requeues": sum(r["requeues"] for r in used), "attempts": sum(r["attempts"] for r in used)}


def _nice_gb(mb: float) -> float:
    """A memory figure a person writes: quarters of a GB below 2 GB, whole GB above."""
    gb = mb * HEADROOM / 1024
    return max(0.25, math.ceil(gb * 4) / 4) if gb < 2 else float(math.ceil(gb))


def suggestions(rows) -> list:
    """Sentences a person acts on, per stage: memory, CPUs and time asked against what the finished runs
    used ("asked 32 GB, peak 3.1 GB over 40 runs: set resources.mem_gb: 4")."""
    out = []
    stages = {}
    for r in rows:
        if r["source"]:
            stages.setdefault(r["stage"], []).append(r)
    for stage, used in stages.items():
        where = f"stage {stage}: " if len(stages) > 1 else ""
        n = len(used)
        peaks = [r["max_rss_mb"] for r in used if r["max_rss_mb"] is not None]
        asked = max((r["req_mem_mb"] or 0.0 for r in used), default=0.0)
        if peaks and asked and max(peaks) < LOW_MEM_USE * asked:
            new = _nice_gb(max(peaks))
            if new * 1024 < asked:
                out.append(f"{where}asked {asked / 1024:g} GB, peak {max(peaks) / 1024:.2g} GB over {n} runs: "
                           f"set resources.mem_gb: {new:g}")
        effs = [r for r in used if r["cpu_eff"] is not None]
        if effs:
            eff = sum(r["cpu_s"] for r in effs) / sum(r["elapsed_s"] * r["alloc_cpus"] for r in effs)
            cpus = max(r["alloc_cpus"] for r in effs)
            if eff < LOW_CPU_EFF:
                fix = (f": set resources.cpus: {max(1, math.ceil(eff * cpus * HEADROOM))}" if cpus > 1 else
                       ": the runs mostly wait (I/O, sleep, a GPU, the network), not compute")
                out.append(f"{where}CPU efficiency {eff:.0%} with cpus: {cpus} over {n} runs{fix}")
        longest = max((r["elapsed_s"] or 0.0) / max(1, r["jobs"]) for r in used)
        limit = used[0]["time_min"]
        if limit and longest and longest / 60 < LOW_TIME_USE * limit:
            new = max(5, math.ceil(longest / 60 * HEADROOM))
            if new < limit:
                out.append(f"{where}time_min {limit:g}, longest run {longest / 60:.1f} min: set resources.time_min: "
                           f"{new} (a shorter limit starts sooner)")
        requeues = sum(r["requeues"] for r in used)
        if requeues:
            out.append(f"{where}{requeues} requeues over {n} runs (time limits or preemption): each resumed "
                       "from its checkpoint")
    return out


def collect(sweep, sweep_dir: SweepDir, runs=None) -> dict:
    """{"runs": rows, "sweep": totals, "suggestions": [...], "time"}, also written to the sweep dir's
    usage record (what analysis.runs folds in as its `usage_` columns). When the scheduler cannot be
    asked, the jobs' own measurements stand in and `scheduler_error` says why; a record sacct filled
    earlier (a sweep dir copied off its cluster) is kept and shown instead."""
    error = ""
    try:
        rows = run_usage(sweep, sweep_dir, runs)
    except slurm.SchedulerError as e:
        error, rows = str(e), run_usage(sweep, sweep_dir, runs, accounting={})
        kept = atomic.read_json(sweep_dir.usage)
        if isinstance(kept, dict) and any(isinstance(r, dict) and str(r.get("source", "")).startswith("sacct")
                                          for r in kept.get("runs") or []):
            # a sweep dir copied away from its cluster: what sacct said there beats the jobs' own figures
            return {**kept, "scheduler_error": f"{error} (showing the record read on "
                                               f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(kept.get('time', 0)))})"}
    out = {"runs": rows, "sweep": sweep_usage(rows), "suggestions": suggestions(rows), "time": time.time(),
           **({"scheduler_error": error} if error else {})}
    if sweep_dir.path.is_dir() and runs is None:
        atomic.write_json(sweep_dir.usage, out)
    return out


# ---------------------------------------------------------------- before submit: what it will cost

def estimate(sweep, sweep_dir: SweepDir, states: dict) -> list:
    """One dict per stage (its runs share its resources) with runs not done yet: how many, the time per run its done
    runs of the same stage took (mean, its spread, how many it rests on), and the CPU-hours / GPU-hours
    that gives, low to high. `basis` 0: no finished run to go by (say so; --probe times one)."""
    groups, known = {}, {}
    for r in sweep.runs:
        key = r.stage                      # a stage's runs share its resources
        if key not in groups:
            groups[key] = {"stage": r.stage, "res": resources_of(sweep, r, known), "left": [], "done": []}
        groups[key]["left" if states.get(r.run_id) != RunState.DONE else "done"].append(r.run_id)
    out = []
    for g in groups.values():
        if not g["left"]:
            continue
        res = g["res"]
        times = [t for t in (_run_seconds(sweep_dir, rid) for rid in g["done"][:BASIS_MAX]) if t]
        row = {"stage": g["stage"], "runs_left": len(g["left"]), "basis": len(times), "cpus": res.cpus * res.world_size,
               "gpus": res.gpus * res.nodes, "time_min": res.time_min}
        if times:
            mean = statistics.fmean(times)
            spread = statistics.stdev(times) if len(times) > 1 else mean * 0.5   # one run: say +-50 %
            low, high = max(0.0, min(min(times), mean - spread)), max(max(times), mean + spread)
            row.update(seconds_per_run=mean, seconds_low=low, seconds_high=high)
            for kind, n in (("cpu", row["cpus"]), ("gpu", row["gpus"])):
                row[f"{kind}_hours"] = len(g["left"]) * mean * n / 3600
                row[f"{kind}_hours_low"] = len(g["left"]) * low * n / 3600
                row[f"{kind}_hours_high"] = len(g["left"]) * high * n / 3600
        out.append(row)
    return out


def _run_seconds(sweep_dir: SweepDir, run_id):
    """The wall time a done run took over all its attempts (its result's, else its attempts')."""
    result = sweep_dir.run(run_id).read_result() or {}
    if isinstance(result.get("wall_time_s"), (int, float)) and result["wall_time_s"] > 0:
        return float(result["wall_time_s"])
    return sum(_wall_by_job(sweep_dir.run(run_id).read_attempts()).values()) or None



def probed_seconds(started: float, lines: list, ended: float, done: bool):
    """(seconds one run takes, why not: "") from a probe: a run started at `started` that logged `lines`
    (metrics.jsonl) and stopped at `ended`. A run done within the probe took what it took; else its
    start-up (until its first line) plus total_steps (its last line's) at the rate of its later lines."""
    if done:
        return ended - started, ""
    timed = [r for r in lines if isinstance(r.get("step"), int) and isinstance(r.get("time"), (int, float))]
    if len(timed) < 2 or timed[-1]["step"] <= timed[0]["step"]:
        return None, f"the probe saw {len(timed)} logged steps: too few for a rate (probe longer)"
    total = timed[-1].get("total_steps")
    if not isinstance(total, int):
        return None, "the task logs no total_steps (ctx.log(step, total_steps=N, ...)): a probe cannot tell the length"
    rate = (timed[-1]["step"] - timed[0]["step"]) / max(1e-9, timed[-1]["time"] - timed[0]["time"])
    return (timed[0]["time"] - started) + max(0, total - timed[0]["step"]) / rate, ""


def with_probe(group: dict, seconds: float) -> dict:
    """An estimate's group with one probed run's time per run: one run's rate, said as +-50 %."""
    low, high = seconds * 0.5, seconds * 1.5
    out = {**group, "basis": 0, "probe": True, "seconds_per_run": seconds, "seconds_low": low, "seconds_high": high}
    for kind, n in (("cpu", group["cpus"]), ("gpu", group["gpus"])):
        for suffix, t in (("", seconds), ("_low", low), ("_high", high)):
            out[f"{kind}_hours{suffix}"] = group["runs_left"] * t * n / 3600
    return out


def cost(sweep, sweep_dir: SweepDir, states: dict, profile=None, probe=None) -> dict:
    """What `plan` says a sweep will cost: {"groups": estimate(...), "start": when SLURM would start
    the first array of runs left ("" : not on SLURM, or nothing left), "cpu_hours"/"gpu_hours": sums
    (None when some group has no basis)}."""
    groups = estimate(sweep, sweep_dir, states)
    if probe is not None:                  # {stage: seconds per run} of `plan --probe`
        groups = [with_probe(g, probe[g["stage"]]) if not g["basis"] and probe.get(g["stage"]) else g for g in groups]
    start = ""
    if groups and profile is not None and shutil.which("sbatch"):
        first = next(r for r in sweep.runs if r.stage == groups[0]["stage"])
        res = resources_of(sweep, first)
        start = slurm.expected_start(slurm.resources_for(res, profile), res, math.ceil(groups[0]["runs_left"] / res.pack),
                                     profile)
    known = all(g["basis"] or g.get("probe") for g in groups)
    out = {"groups": groups, "start": start}
    for kind in ("cpu", "gpu"):
        for s in ("", "_low", "_high"):
            out[f"{kind}_hours{s}"] = sum(g[f"{kind}_hours{s}"] for g in groups) if known else None
    return out


def cost_lines(found: dict) -> list:
    """`plan`'s lines about cost: per group runs x time per run, CPU-hours and GPU-hours with their range,
    or that nothing finished yet to go by; then the expected start."""
    lines = []
    for g in found["groups"]:
        where = f"stage {g['stage']}: " if len({x['stage'] for x in found['groups']}) > 1 else ""
        if not g["basis"] and not g.get("probe"):
            lines.append(f"{where}{g['runs_left']} runs left; no basis for an estimate yet (no run of this stage has "
                         "finished: submit, and plan again once some have)")
            continue
        hours = f"{g['cpu_hours']:.3g} CPU-h ({g['cpu_hours_low']:.3g}-{g['cpu_hours_high']:.3g})"
        if g['gpus']:
            hours += f", {g['gpu_hours']:.3g} GPU-h ({g['gpu_hours_low']:.3g}-{g['gpu_hours_high']:.3g})"
        basis = "from a probe of one run" if g.get("probe") else f"from {g['basis']} finished"
        lines.append(f"{where}{g['runs_left']} runs left x {g['seconds_per_run'] / 60:.1f} min per run "
                     f"({g['seconds_low'] / 60:.1f}-{g['seconds_high'] / 60:.1f}, {basis}) "
                     f"x {g['cpus']} cpus = {hours}")
    for note in found.get("notes", []):
        lines.append(note)
    if found["start"]:
        lines.append(f"expected start of the first array (sbatch --test-only): {found['start']}")
    return lines
