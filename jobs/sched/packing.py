"""What one job executes: the job object (jobs.runtime.runner.PackJob, handed in by the caller) made
from a sweep's settings. The scheduler layer never imports the runtime: the CLI hands it the class."""
from __future__ import annotations

import sys

from jobs.spec.settings import Checkpoint, Resources

LOCAL_MAX_REQUEUE = 5        # submitit's local controller restarts a job at most 6 times


def pack_job(job_class, sweep_dir, run_ids, res: Resources, ckpt: Checkpoint, executor):
    """A `job_class` (PackJob) of `run_ids` with these settings, for `executor` (local, slurm or debug)."""
    max_requeue = min(res.max_requeue, LOCAL_MAX_REQUEUE) if executor == "local" else res.max_requeue
    return job_class(str(sweep_dir.path), list(run_ids), time_min=float(res.time_min),
                     margin_s=ckpt.margin_s_for(res.time_min), gpus=res.gpus, cpus=res.cpus,
                     checkpoint=ckpt.for_context(), concurrent=res.pack_concurrent, max_requeue=max_requeue,
                     reraise=executor == "debug" and sys.stdin.isatty(), world_size=res.world_size,
                     fail_fast=res.fail_fast)
