"""Distributed runs: which rank this process is, the process group, and a torchrun-like local spawner.

A run with resources.nodes x tasks_per_node > 1 executes as that many processes:
- on SLURM, srun starts one per task (submitit's nodes / ntasks_per_node); each finds its rank,
  local rank and world size in submitit's JobEnvironment, and the allocation's first node hosts
  the rendezvous on a port derived from the job id, so every rank computes the same one without
  talking to the others. MASTER_ADDR is that node's address: the first host of SLURM_JOB_NODELIST
  (expanded as `scontrol show hostnames` does), resolved here, on each rank, so a name that does
  not resolve on a node is named in the error rather than in a gloo/nccl timeout ten minutes later.
  A requeued job gets a new allocation, possibly other nodes in another order: the address is
  taken afresh in every attempt;
- on the local executor, in `main.py run` and the debug executor, `spawn` starts N processes on
  this machine with a free port on 127.0.0.1 (what torchrun does), forwards stop signals to them,
  and takes the whole group down as soon as one rank fails, so nothing waits in an all-reduce for
  a rank that is gone.

The process group is nccl on GPUs, gloo on CPU.
"""
from __future__ import annotations

import datetime
import io
import multiprocessing
import os
import re
import socket
import sys
import time
from dataclasses import dataclass

PORT_BASE, PORT_SPAN = 15000, 45000      # the rendezvous port of a SLURM job: PORT_BASE + job id % PORT_SPAN
GROUP_TIMEOUT = datetime.timedelta(minutes=10)
KILL_GRACE_S = 5.0                       # after one rank fails, how long the others get to fail by themselves


@dataclass(frozen=True)
class Ranks:
    """This process's place in a distributed run."""
    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int


def from_scheduler(world_size: int):
    """Ranks of this process when srun started world_size tasks of this job; None otherwise."""
    if "SLURM_PROCID" not in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) != world_size:
        return None
    import submitit
    env = submitit.JobEnvironment()
    port = PORT_BASE + int(os.environ["SLURM_JOB_ID"]) % PORT_SPAN
    return Ranks(env.global_rank, env.local_rank, env.num_tasks, resolve(env.hostnames[0], port), port)


def resolve(host: str, port: int) -> str:
    """`host`'s IPv4 address (the rendezvous node as every rank reaches it); a clear error if it has none."""
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise RuntimeError(f"the rendezvous host {host!r} (first node of SLURM_JOB_NODELIST="
                           f"{os.environ.get('SLURM_JOB_NODELIST', '?')}) does not resolve on "
                           f"{socket.gethostname()}: {e}") from None
    return infos[0][4][0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init(ranks: Ranks, device: str) -> None:
    """Join the run's process group (nccl on a GPU, gloo on CPU)."""
    import torch.distributed as dist
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = ranks.master_addr, str(ranks.master_port)
    if device.startswith("cuda"):
        import torch
        torch.cuda.set_device(ranks.local_rank)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo",
                            init_method=f"tcp://{ranks.master_addr}:{ranks.master_port}",
                            rank=ranks.rank, world_size=ranks.world_size, timeout=GROUP_TIMEOUT)


def leave(together: bool = False, device: str = "cpu") -> None:
    """Leave the process group; `together`: every rank gets here (a normal end), so meet first."""
    import torch.distributed as dist
    if not dist.is_initialized():
        return
    if together:
        barrier(device)
    dist.destroy_process_group()


def broadcast_int(value: int, device: str) -> int:
    """Rank 0's `value`, on every rank."""
    import torch
    import torch.distributed as dist
    t = torch.tensor([int(value)], dtype=torch.int64, device=device if device.startswith("cuda") else "cpu")
    dist.broadcast(t, src=0)
    return int(t.item())


def gather_places(ranks: Ranks) -> list:
    """[{"host", "pid", "local_rank"}] of every rank, in rank order (for attempts.jsonl: who ran where)."""
    import torch.distributed as dist
    places = [None] * dist.get_world_size()
    dist.all_gather_object(places, {"host": socket.gethostname(), "pid": os.getpid(),
                                    "local_rank": ranks.local_rank})
    return places


def gone_peers(text: str, places: list, me: int) -> str:
    """A line naming the ranks whose host's address appears in `text`, the error of a collective that
    failed on rank `me` ("Connection reset by peer [10.0.0.12]:..."): a peer that went away first
    (killed, or its node died) leaves no traceback of its own, and this names it. "" if none matches.

    `places`: the attempt's [{"host", ...}] in rank order (gather_places)."""
    by_host = {}
    for rank, place in enumerate(places or []):
        if rank != me:
            by_host.setdefault(place["host"], []).append(rank)
    named = []
    for host, ranks in by_host.items():
        try:
            addrs = {info[4][0] for info in socket.getaddrinfo(host, None, socket.AF_INET)}
        except OSError:
            continue
        hit = sorted(a for a in addrs if re.search(rf"(?<![\d.]){re.escape(a)}(?![\d.])", text))
        if hit:
            named.append(f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} on {host} ({hit[0]})")
    if not named:
        return ""
    return (f"rank {me} lost its connection to {'; '.join(named)}: that peer went away first "
            "(killed, or its node failed); its job log says why")


def barrier(device: str) -> None:
    import torch.distributed as dist
    if device.startswith("cuda"):
        import torch
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def _whole_lines(target, *args):
    """A spawned rank: its stdout written a line at a time (the ranks share the job's log; a block-
    buffered stdout let one rank's half line meet another's), then target(*args)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        stream.flush()
        # buffered, flushed at each newline: print's text and its newline leave in one write
        setattr(sys, name, io.TextIOWrapper(open(stream.fileno(), "wb", closefd=False), encoding=stream.encoding,
                                            errors=stream.errors, line_buffering=True))
    return target(*args)


def spawn(world_size: int, target, args: tuple, ok_codes, started=None) -> tuple[list, int | None]:
    """Run target(ranks, *args) in world_size fresh processes on this machine; (their exit codes,
    the rank that failed first or None).

    `started(pids)` is called once they run (the caller forwards stop signals to them). When a rank
    exits with a code not in `ok_codes` (an exception, or killed), the others get KILL_GRACE_S to
    fail on their own (a collective with a dead peer raises), then SIGKILL: nothing waits in an
    all-reduce for a rank that is gone.
    """
    ctx = multiprocessing.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_whole_lines, args=(target, Ranks(r, r, world_size, "127.0.0.1", port), *args),
                         daemon=False) for r in range(world_size)]
    for p in procs:
        p.start()
    if started:
        started([p.pid for p in procs])
    failed_at, first = None, None
    while any(p.exitcode is None for p in procs):
        if failed_at is None:
            first = _culprit([p.exitcode for p in procs], ok_codes)
            failed_at = None if first is None else time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > KILL_GRACE_S:
            for p in procs:
                if p.exitcode is None:
                    p.kill()
        for p in procs:
            p.join(timeout=0.05)
    codes = [p.exitcode for p in procs]
    if first is None:
        first = _culprit(codes, ok_codes)
    return codes, first


def _culprit(codes, ok_codes):
    """The rank whose failure came first among those seen ended: one killed by a signal before one
    that raised (a rank whose peer was killed raises in the next collective, after it)."""
    failed = [r for r, c in enumerate(codes) if c is not None and c not in ok_codes]
    killed = [r for r in failed if codes[r] < 0]
    return (killed or failed or [None])[0]
