"""The local executor's driver: a detached process that keeps a submission's packs going.

    python -m jobs.sched.local drive SWEEP_DIR SUBMISSION_ID      # what `submit --executor local` starts

It runs the packs through submitit's LocalExecutor, at most max_parallel at once, records every
job in the journal, and chains a pack whose job stopped with runs left (requeue budget spent)
into a fresh job. `cancel` sends it SIGTERM: it interrupts its jobs (USR2: each run checkpoints
and stops), waits for them, and records the end.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from jobs.store import SweepDir, atomic, now_iso

REPO = Path(__file__).resolve().parent.parent.parent
STOP_WAIT_S = 60             # how long a cancelled driver waits for its runs to checkpoint


def start_driver(sweep_dir: SweepDir, submission: str, jobs: list, parallel: int, max_chain: int) -> int:
    """Start the detached driver of `submission` for these job objects (PackJobs); its pid."""
    atomic.write_bytes(sweep_dir.submission_file(submission),
                       pickle.dumps({"jobs": jobs, "parallel": parallel, "max_chain": max_chain}))
    with open(sweep_dir.driver_log(submission), "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "jobs.sched.local", "drive", str(sweep_dir.path.resolve()),
                                 submission], cwd=REPO, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)     # survives the submitting shell
    return proc.pid


def driver_alive(pid: int, submission: str) -> bool:
    """Is `pid` alive, not a zombie, and still the driver we started (its command names `submission`)?"""
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and submission in " ".join(proc.cmdline())
    except (psutil.Error, ValueError):
        return False


def process_alive(pid, started=None) -> bool:
    """Is `pid` a live process (not a zombie), and, given its start time, still the same process?"""
    try:
        proc = psutil.Process(int(pid))
        return proc.status() != psutil.STATUS_ZOMBIE and (started is None or abs(proc.create_time() - started) < 1.0)
    except (psutil.Error, ValueError, TypeError):
        return False


def cancel(entries, log=print) -> int:
    """SIGTERM every live local driver the journal names; how many."""
    ended = {e.get("submission") for e in entries if e.get("event") == "driver_end"}
    n = 0
    for e in entries:
        if e.get("event") == "submit" and e.get("executor") == "local" and e.get("submission") not in ended:
            pid = e.get("driver_pid", -1)
            if driver_alive(pid, e["submission"]):
                os.kill(pid, signal.SIGTERM)
                n += 1
                log(f"cancelling {e['submission']} (driver pid {pid}): its runs checkpoint and stop")
    return n


def drive(sweep_dir: SweepDir, submission: str) -> None:
    """Run a submission's packs through submitit's LocalExecutor, at most max_parallel at once."""
    import submitit
    # written by start_driver (ours, in the sweep dir): the job objects and how many at once
    with open(sweep_dir.submission_file(submission), "rb") as f:
        order = pickle.load(f)
    jobs, parallel, max_chain = order["jobs"], order["parallel"], order["max_chain"]
    first = jobs[0]
    ex = submitit.LocalExecutor(folder=sweep_dir.logs)
    ex.update_parameters(timeout_min=first.time_min, signal_delay_s=int(first.margin_s), gpus_per_node=first.gpus)
    os.environ.setdefault("OMP_NUM_THREADS", str(first.cpus))     # jobs inherit it
    queue = [(i, job, 0) for i, job in enumerate(jobs)]     # (pack index, job object, chain number)
    running = {}
    stopping = []

    def on_term(signum, frame):
        stopping.append(signum)
    signal.signal(signal.SIGTERM, on_term)

    def record(event, **kw):
        sweep_dir.append_journal({"event": event, "submission": submission, "time": now_iso(), **kw})
    def done(run_id):
        return sweep_dir.run(run_id).result.exists()

    def cancelled():                    # what `cancel --only` took out of this submission, as of now
        return {e.get("run_id") for e in atomic.read_jsonl(sweep_dir.cancelled_runs(submission))}

    # the submitting command journals the pid after starting us; say it ourselves too, in case it died first
    record("driver_start", driver_pid=os.getpid(), host=socket.gethostname())
    try:
        while (queue or running) and not stopping:
            out = cancelled()
            # a pack of a later stage starts once the upstream runs it needs are done; it is blocked
            # when one of them ended without a result and no job of this driver will run it again
            coming = {r for _, p, _ in queue for r in p.run_ids} | {r for _, _, p, _ in running.values() for r in p.run_ids}
            for item in list(queue):
                if len(running) >= parallel:
                    break
                i, pack, chain = item
                if out & set(pack.run_ids):
                    queue.remove(item)
                    record("cancelled", pack=i, runs=[r for r in pack.run_ids if r in out])
                    if not set(pack.run_ids) - out:
                        continue
                    item = (i, dataclasses.replace(pack, run_ids=[r for r in pack.run_ids if r not in out]), chain)
                    queue.append(item)
                    i, pack, chain = item
                waiting = [u for u in pack.needs if not done(u)]
                if waiting and not set(waiting) & coming:
                    queue.remove(item)
                    record("blocked", pack=i, runs=pack.run_ids, needs=waiting)
                    continue
                if waiting:
                    continue
                queue.remove(item)
                job = ex.submit(pack)
                running[job.job_id] = (job, i, pack, chain)
                record("job", job_id=job.job_id, pack=i, runs=pack.run_ids, chain=chain)
            for job_id, (job, i, pack, chain) in list(running.items()):
                if not job.done():
                    continue
                del running[job_id]
                try:
                    out = job.result()
                    left = out["unfinished"]
                except Exception as e:            # the job itself died (killed, out of memory)
                    out, left = {"error": f"{type(e).__name__}: {str(e)[-500:]}"}, []
                record("job_end", job_id=job_id, pack=i, **out)
                left = [r for r in left if r not in cancelled()]      # a cancelled run goes on only by resume
                if left and chain < max_chain:
                    # the requeue budget is spent: chain a fresh job
                    queue.append((i, dataclasses.replace(pack, run_ids=list(left)), chain + 1))
            time.sleep(0.2)
    finally:
        if stopping:
            for job, *_ in running.values():
                # SIGTERM to submitit's controller, which forwards it to the worker: each run checkpoints
                # and stops without requeuing. (submitit's job._interrupt() sends USR2, which the
                # controller does not forward: it dies and leaves the worker running, adopted by init.)
                if job._process.poll() is None:
                    job._process.send_signal(signal.SIGTERM)
            deadline = time.time() + STOP_WAIT_S
            while any(not j.done() for j, *_ in running.values()) and time.time() < deadline:
                time.sleep(0.2)
            for job, *_ in running.values():
                if not job.done():
                    job.cancel()
        record("driver_end", cancelled=bool(stopping))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "drive":
        drive(SweepDir(sys.argv[2]), sys.argv[3])
    else:
        sys.exit("usage: python -m jobs.sched.local drive SWEEP_DIR SUBMISSION_ID")
