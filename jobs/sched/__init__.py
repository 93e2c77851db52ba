"""Scheduling on the login node: submit / cancel / status, the local driver, the SLURM adapter.

    jobs.sched.submit   prepare the sweep dir, pick and pack runs, submit; states; reconcile; cancel
    jobs.sched.local    the local executor's detached driver (submitit LocalExecutor)
    jobs.sched.slurm    cluster profiles, checked sbatch files, arrays, the one cached sacct poller
    jobs.sched.progress the status table and hints

Imports jobs.spec, jobs.store and (to build what a job executes) jobs.runtime; never the reverse.
"""
