"""RunContext: all a task sees of the machinery (`train(cfg, ctx)`), and Interrupted.

What a run owns inside its run dir: `checkpoints/` (through jobs/checkpoint.py) and
`metrics.jsonl` (one JSON object per ctx.log). A resumed run reproduces the uninterrupted one:
ctx.restore() brings back the task's state, the RNG states of python `random`, numpy's global RNG,
torch (CPU and CUDA) as they were at ctx.save, and cuts metrics.jsonl back to what had been logged
when that checkpoint was taken, so the lines logged again after resuming are not doubled.

Stopping is cooperative: a signal handler calls ctx.request_stop() (it only sets a flag); the task
sees should_checkpoint() turn True at its next step, calls ctx.save(), and save raises Interrupted
once the checkpoint is durable. Running out of time (the deadline minus margin_s) does the same.

A distributed run (world_size > 1) has one RunContext per rank. Every rank calls should_checkpoint
and save at the same steps, as a task's loop does anyway: should_checkpoint is a collective (the
ranks agree by an all-reduce, so a signal that reached one rank stops them all at the same step and
none waits in an all-reduce for a rank that left); save gathers every rank's RNG states to rank 0,
which alone writes the checkpoint, metrics.jsonl and (in the runner) result.json. Every rank
restores the same checkpoint and its own RNG states.

Random generators a task owns (a numpy Generator for augmentation, a torch.Generator for sampling)
come from ctx.numpy_rng / ctx.torch_generator / ctx.python_rng: their states are saved with each
checkpoint (per rank) and put back on resume, so the task need not carry them in its state.

A spec's `logging:` block sends every metrics.jsonl line on to TensorBoard and/or W&B as well
(jobs/runtime/loggers.py; rank 0, started at the first ctx.log, flushed at ctx.save, closed by
ctx.close() when the attempt ends). Without the block neither is imported.
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import threading
import time
import warnings
from numbers import Number
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError

from jobs.runtime import checkpoint, loggers
from jobs.spec.settings import Checkpoint, Logging, settings_error
from jobs.store import RunDir, SweepDir, atomic

FORMAT = 1
RESERVED_METRICS = ("step", "time", "run_id")      # run_id: the curve tables' name of the run


class Interrupted(Exception):
    """Raised by ctx.save after a stop request / time running out: the run checkpointed and must be requeued."""


class UpstreamRun:
    """A downstream run's view of one upstream run (ctx.upstream[stage]): its dir, config, final
    metrics and checkpoints. A run that feeds a later stage ends with a ctx.save of its final state
    (after its last step): that checkpoint is what .checkpoint() returns."""

    def __init__(self, stage, record, sweep_run_dirs):
        self.stage = stage
        self.run_id = record["run_id"]
        self.run_dir = Path(record["run_dir"]) if record.get("run_dir") else Path(sweep_run_dirs) / self.run_id
        self._record = dict(record)
        if not record.get("run_dir"):
            # an in-sweep upstream: the checkpoint its result names (its final state), verified when loaded
            final = (RunDir(self.run_dir).read_result() or {}).get("checkpoint")
            if isinstance(final, dict) and final.get("step") is not None:
                self._record.update(step=final["step"], sha256=final.get("sha256"))

    def lineage(self) -> dict:
        """What this run consumes of the upstream: run id, step and checkpoint sha256 (and the registry
        name it came by), recorded in the downstream's result."""
        return {"run_id": self.run_id, **{k: self._record.get(k) for k in ("step", "sha256")},
                **({"name": self._record["name"]} if self._record.get("name") else {})}

    def __repr__(self):
        return f"UpstreamRun({self.stage!r}, {str(self.run_dir)!r})"

    @property
    def config(self) -> dict:
        return RunDir(self.run_dir).read_config()["config"]

    @property
    def metrics(self) -> dict:
        result = RunDir(self.run_dir).read_result()
        if result is None:
            raise FileNotFoundError(f"upstream run {self.run_id} ({self.stage}) has no readable result in {self.run_dir}")
        return result.get("metrics") or {}

    def checkpoint_steps(self) -> list:
        return checkpoint.list_steps(RunDir(self.run_dir).checkpoints)

    def checkpoint(self, step=None):
        """The state the upstream run passed to ctx.save: at `step`, else the registered step
        (a from_manifest stage), else its newest valid checkpoint. Loaded with weights_only. The
        final (or registered) step is checked against the digest recorded for it; an earlier step of
        an in-sweep upstream against its own sidecar; a registered entry offers its one step only."""
        ckpt_dir = RunDir(self.run_dir).checkpoints
        if self._record.get("name") is not None:      # a registered checkpoint: only the one registered, checked
            for key in ("step", "sha256"):
                if self._record.get(key) is None:
                    raise ValueError(f"registered checkpoint {self._record['name']!r} (run {self.run_id}) has no {key}: "
                                     "it cannot be checked; register it again with `main.py export ... --replace`")
        registered = self._record.get("step")
        if self._record.get("name") is not None and step is not None and step != registered:
            raise ValueError(f"registered checkpoint {self._record['name']!r} is run {self.run_id}'s step {registered}; "
                             f"step {step} was not registered (register it under a name of its own)")
        step = step if step is not None else registered
        if step is None:
            found = checkpoint.load_latest(ckpt_dir)
            if found is None:
                raise FileNotFoundError(f"upstream run {self.run_id} ({self.stage}) left no checkpoint in {ckpt_dir}: "
                                        "a task whose runs feed a later stage must ctx.save its final state")
            return found[1]["state"]
        # retrying this run cannot bring a lost checkpoint back: say what can
        fix = (f"; rerun the upstream (submit SPEC --force {self.run_id}), then resume --retry-failed"
               if not self._record.get("run_dir") else
               f"; export the checkpoint again (export ... --name {self._record.get('name')} --replace)")
        path = checkpoint.ckpt_path(ckpt_dir, step)
        if not path.exists():
            raise FileNotFoundError(f"upstream run {self.run_id} ({self.stage}): its checkpoint at step {step} is gone "
                                    f"from {ckpt_dir} (kept: {checkpoint.list_steps(ckpt_dir) or 'none'}){fix}")
        # the final (or registered) step is checked against the digest recorded for it; an earlier one
        # (a task reading its upstream's history) against its own sidecar, as load_step does
        if self._record.get("sha256") and step == registered:
            digest = checkpoint.verified_digest(path)
            if digest != self._record["sha256"]:
                raise ValueError(f"{path}: sha256 {digest} differs from the "
                                 f"{'registered' if self._record.get('run_dir') else 'final'} "
                                 f"{self._record['sha256']} (the checkpoint changed or is damaged){fix}")
        return checkpoint.load_step(ckpt_dir, step)["state"]


class RunContext:
    """The handle a task gets: restore, save, log, should_checkpoint, time_left, device."""

    def __init__(self, run_dir, cfg, *, run_id="", device="cpu", checkpoint=None, deadline=None,
                 margin_s=60.0, manifest=None, attempt=0, clock=time.time, rank=0, local_rank=0, world_size=1,
                 upstream=None, logging=None, budget_key=None):
        self.run_dir = RunDir(run_dir).path      # absolute: a task's os.chdir moves nothing of the run
        # a search trial: the config key promotion raises (its checkpoints were saved at a smaller value)
        self.budget_key = budget_key
        self.rank, self.local_rank, self.world_size = int(rank), int(local_rank), int(world_size)
        self.upstream = dict(upstream or {})     # stage -> UpstreamRun, every ancestor stage of a pipeline run
        self.cfg = cfg
        self.run_id = run_id
        self.device = device
        self.attempt = attempt
        self.manifest = Path(manifest) if manifest is not None else None
        self.checkpoint = checkpoint_settings(checkpoint)
        self.deadline = None if deadline is None else float(deadline)
        self.margin_s = float(margin_s)
        self.ckpt_dir = RunDir(self.run_dir).checkpoints
        self.metrics_path = RunDir(self.run_dir).metrics
        self.start_step = 0              # the restored step; 0 on a fresh run
        self._clock = clock
        self._stop = False
        every_min = self.checkpoint["every_min"]
        self._every_s = math.inf if every_min is None else 60.0 * every_min
        self._every_steps = self.checkpoint["every_steps"]
        self._last_save_time = clock()
        self._last_save_step = 0
        self._metrics_lines = None       # lines of metrics.jsonl on this run's timeline; None: not counted yet
        self._line_closed = False        # metrics.jsonl known to end with a whole line (restore or a first log saw to it)
        self._saved = False
        self._generators = []            # (kind, generator) made by ctx.*_rng / torch_generator, in order
        self.rank_state = None           # this rank's `rank_state` of the restored checkpoint
        self._generator_states = None    # restored states not yet applied (generators made after restore)
        self._restored = False           # restore() found a checkpoint
        # the spec's `logging:` block (None: the one frozen in the sweep dir's spec.yaml); the backends
        # (jobs/runtime/loggers.py) start at the first ctx.log and end at close()
        self._logging, self._project = (self._logging_settings(logging) if self.is_main else (None, ""))
        self._loggers = None
        # `logging: {system: N}`: a thread samples CPU, memory and GPUs every N s and logs through ctx.log,
        # at the step the task logged last (jobs/runtime/sysmetrics.py); the lock keeps its lines whole
        self._log_lock = threading.RLock()
        self._last_step = 0
        self._sampler = None
        if self._logging is not None and self._logging.system:
            try:
                from jobs.runtime import sysmetrics
                self._sampler = sysmetrics.Sampler(lambda **sample: self.log(self._last_step, **sample),
                                                   self._logging.system, run_id or self.run_dir.name)
            except Exception as e:       # never the run's failure
                print(f"hpcsweep: run {run_id or self.run_dir.name}: system metrics are off: {type(e).__name__}: {e}",
                      file=sys.stderr, flush=True)

    # --- distributed runs -----------------------------------------------------------------------

    @property
    def is_main(self) -> bool:
        """True on the process that writes the run's files (rank 0)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank of the run (no-op in a single-process run)."""
        if self.world_size > 1:
            torch.distributed.barrier()

    def ddp(self, model):
        """`model` on ctx.device, wrapped in DistributedDataParallel when the run has several ranks."""
        model = model.to(self.device)
        if self.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel
        ids = [torch.device(self.device).index] if str(self.device).startswith("cuda") else None
        return DistributedDataParallel(model, device_ids=ids)

    def average_gradients(self, parameters) -> None:
        """Average .grad over the ranks (what DDP does), for tasks whose backward bypasses a module's
        forward (feedback alignment, custom autograd). One flat all-reduce; no-op on one rank."""
        if self.world_size == 1:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def sum_over_ranks(self, value):
        """`value` (a number or tensor) summed over the ranks; unchanged on one rank."""
        if self.world_size == 1:
            return value
        t = torch.as_tensor(value, dtype=torch.float64 if not torch.is_tensor(value) else None).clone()
        device = t.device
        t = t.to(self.device) if str(self.device).startswith("cuda") else t.cpu()
        torch.distributed.all_reduce(t)
        return t.to(device) if torch.is_tensor(value) else t.item()

    def mean_over_ranks(self, value):
        """`value` averaged over the ranks (e.g. a validation loss each rank computed on its shard)."""
        total = self.sum_over_ranks(value)
        return total / self.world_size if self.world_size > 1 else total

    def split_accumulation(self, acc_steps: int) -> int:
        """Micro-batches per rank for `acc_steps` of gradient accumulation: acc_steps / gcd(acc_steps,
        world_size), as the adaptive-depth LM's trainer does (the ranks share the accumulation)."""
        return acc_steps // math.gcd(acc_steps, self.world_size)

    def _agree(self, *flags) -> list:
        """The flags OR-ed over the ranks (one all-reduce), so every rank takes the same decision."""
        if self.world_size == 1:
            return [bool(f) for f in flags]
        t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32)
        if str(self.device).startswith("cuda"):
            t = t.to(self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    # --- random generators the task owns ----------------------------------------------------------

    def torch_generator(self, seed: int, device="cpu"):
        """A torch.Generator seeded with `seed`, saved and restored with every checkpoint."""
        return self._register("torch", torch.Generator(device=device).manual_seed(int(seed)))

    def numpy_rng(self, seed: int):
        """A numpy Generator (default_rng(seed)), saved and restored with every checkpoint."""
        return self._register("numpy", np.random.default_rng(seed))

    def python_rng(self, seed: int):
        """A random.Random(seed), saved and restored with every checkpoint."""
        return self._register("python", random.Random(seed))

    def _register(self, kind, gen):
        index = len(self._generators)
        self._generators.append((kind, gen))
        if self._generator_states is not None and index < len(self._generator_states):
            _set_generator(kind, gen, self._generator_states[index])
        return gen

    # --- stopping and time --------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the task to checkpoint and stop at its next step. Async-signal-safe: only sets a flag."""
        self._stop = True

    @property
    def stop_requested(self) -> bool:
        return self._stop

    def time_left(self) -> float:
        """Seconds until the job loses its allocation (inf without a deadline)."""
        return math.inf if self.deadline is None else self.deadline - self._clock()

    def should_checkpoint(self, step: int) -> bool:
        """True when the task should call ctx.save(step, ...) now.

        That is: a stop was requested, time is running out (time_left() < margin_s),
        every_min minutes passed since the last save (or the start), or a multiple of every_steps was reached.
        Called every step, so it only reads the clock.
        """
        now = self._clock()
        due = (self._stop or (self.deadline is not None and self.deadline - now < self.margin_s)
               or now - self._last_save_time >= self._every_s
               # at every multiple of every_steps, wherever the last save fell (a restore, a save on
               # time): an interrupted run keeps the checkpoint steps of an uninterrupted one
               or (bool(self._every_steps) and step // self._every_steps > self._last_save_step // self._every_steps))
        if self.world_size == 1:
            return due
        due, stop = self._agree(due, self._stop)
        # a signal that reached any rank stops every rank; `or`: a signal handled while the
        # all-reduce ran (its handler runs as the call returns) must not be overwritten
        self._stop = self._stop or stop
        return due

    def _stop_reason(self) -> str | None:
        if self._stop:
            return "a stop was requested (signal, cancel or preemption)"
        left = self.time_left()
        if left < self.margin_s:
            return f"{left:.0f} s left before the job's time limit, under the {self.margin_s:.0f} s margin"
        return None

    # --- checkpoints --------------------------------------------------------------------------

    def restore(self):
        """The state last passed to ctx.save, or None on a fresh run; RNG states and metrics follow it.

        On a fresh run (no valid checkpoint) metrics.jsonl is emptied: lines from an attempt that
        died before its first checkpoint describe steps that are about to be run again.
        """
        found = checkpoint.load_latest(self.ckpt_dir)
        if found is None:
            if self.is_main:
                self._cut_metrics(keep_lines=0, max_step=None)
            self.barrier()
            return None
        step, payload = found
        if not isinstance(payload, dict) or payload.get("format") != FORMAT or "state" not in payload:
            raise ValueError(f"{checkpoint.ckpt_path(self.ckpt_dir, step)}: not a RunContext checkpoint "
                             f"(expected a dict with format {FORMAT}); was it written by another tool?")
        ranks = payload.get("ranks")
        if ranks is not None and len(ranks) != self.world_size:
            raise ValueError(f"{checkpoint.ckpt_path(self.ckpt_dir, step)} was saved by {len(ranks)} ranks, "
                             f"this run has {self.world_size}: resume it with the same nodes x tasks_per_node")
        mine = ranks[self.rank] if ranks is not None else {"rng": payload.get("rng"),
                                                          "generators": payload.get("generators")}
        set_rng_state(mine.get("rng") or {})
        self.rank_state = mine.get("rank_state")
        self._generator_states = mine.get("generators") or []
        for (kind, gen), saved in zip(self._generators, self._generator_states):
            _set_generator(kind, gen, saved)
        if self.is_main:
            with self._log_lock:
                self._cut_metrics(payload.get("metrics_lines"), step)
                self._last_step = int(step)
        self.barrier()                   # rank 0 has cut metrics.jsonl before anyone logs again
        self._restored = True
        self.start_step = self._last_save_step = step
        self._last_save_time = self._clock()
        return payload["state"]

    def save(self, step: int, state, rank_state=None) -> Path:
        """Checkpoint `state` at `step` (atomic, sha256, retention, manifest); the file's path.

        Raises Interrupted after the checkpoint is durable when a stop was requested or time is
        running out: the runner then requeues the run, which resumes from this checkpoint.
        """
        _refuse_generators(state)
        _refuse_generators(rank_state, "rank_state")
        mine = {"rng": rng_state(), "generators": [_generator_state(k, g) for k, g in self._generators],
                "rank_state": rank_state}
        path = checkpoint.ckpt_path(self.ckpt_dir, step)
        if self.world_size == 1:
            payload = {"format": FORMAT, "step": int(step), "state": state, **mine,
                       "metrics_lines": self._count_metrics()}
        else:
            ranks = [None] * self.world_size
            torch.distributed.all_gather_object(ranks, mine)
            payload = {"format": FORMAT, "step": int(step), "state": state, "ranks": ranks,
                       "metrics_lines": self._count_metrics() if self.is_main else None}
        if self.is_main:
            settings = self.checkpoint
            # the first save of an attempt checks the state loads back safely: a bad type fails now, not on resume
            path = checkpoint.save(self.ckpt_dir, step, payload, manifest=self.manifest, run_id=self.run_id,
                                   keep_last=settings["keep_last"], keep_every=settings["keep_every"],
                                   verify=not self._saved)
            if self._loggers is not None:
                self._loggers.flush()    # a preempted job's TensorBoard events are on disk with its checkpoint
        self.barrier()                   # the checkpoint is durable before any rank goes on (or stops)
        self._saved = True
        self._last_save_step, self._last_save_time = int(step), self._clock()
        reason = self._stop_reason()
        if self.world_size > 1:
            (stop,) = self._agree(reason is not None)
            reason = reason or ("another rank ran out of time" if stop else None)
        if reason:
            raise Interrupted(f"run {self.run_id or self.run_dir.name} checkpointed at step {step} "
                              f"and stops to be requeued: {reason}")
        return path

    # --- metrics ------------------------------------------------------------------------------

    def log(self, step: int, **metrics) -> None:
        """Append {"step", "time", **metrics} as one line to metrics.jsonl (one write, unbuffered), then
        hand the line to the TensorBoard / W&B backends the spec's `logging:` block turns on.

        Rank 0 writes; on the other ranks of a distributed run this does nothing."""
        if not self.is_main:
            return
        for key in RESERVED_METRICS:
            if key in metrics:
                raise ValueError(f"ctx.log: '{key}' is " + ("the run's own name in every curve table" if key == "run_id"
                                                            else "filled in by ctx.log itself") + "; name the metric otherwise")
        row = {"step": int(step), "time": time.time()}
        row.update((k, plain(v, k)) for k, v in metrics.items())
        with self._log_lock:               # the task's thread and the system-metrics sampler
            self._last_step = row["step"]
            self._append(row)

    def _append(self, row: dict) -> None:
        line = (json.dumps(row) + "\n").encode("utf-8")
        try:
            f = open(self.metrics_path, "ab+", buffering=0)
        except FileNotFoundError:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            f = open(self.metrics_path, "ab+", buffering=0)
        with f:
            if not self._line_closed:
                # a writer killed mid-line, and no restore() cut it (a task that never restores):
                # end it, or this line would be glued to it and lost to every reader
                size = f.seek(0, os.SEEK_END)
                if size:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        line = b"\n" + line
                        if self._metrics_lines is not None:
                            self._metrics_lines += 1     # the torn line is a line now (restore skips it)
                self._line_closed = True
            # one write of a whole line: a kill leaves whole lines (or a cut last one, which restore drops)
            written = f.write(line)
            while written < len(line):          # a short write (disk nearly full): finish the line
                written += f.write(line[written:])
        if self._metrics_lines is not None:
            self._metrics_lines += 1
        if self._logging is not None:
            if self._loggers is None:
                self._start_loggers()
            self._loggers.log(row)

    # --- logging to TensorBoard / W&B (jobs/runtime/loggers.py) ----------------------------------

    def close(self) -> None:
        """Flush and close the logging backends of this attempt (the runner calls it when the attempt
        ends; W&B's service process ends with it). Idempotent; ctx.log after it writes metrics.jsonl only."""
        if self._sampler is not None:
            self._sampler.stop()
            self._sampler = None
        with self._log_lock:
            backends, self._loggers, self._logging = self._loggers, None, None
        if backends is not None:
            backends.close()

    def _logging_settings(self, block):
        """(Logging, the sweep's name) for this run: `block`, else the frozen spec's; (None, "") when off.

        A block that does not validate (a hand-edited spec.yaml: submit checks it) turns logging off
        with a line on stderr: logging never fails a run."""
        sweep_dir, name = SweepDir(self.run_dir.parent.parent), ""
        if sweep_dir.runs == self.run_dir.parent and sweep_dir.spec.exists():
            spec = sweep_dir.read_spec()
            name = str(spec.get("name") or sweep_dir.path.name)
            block = spec.get("logging") if block is None else block
        if not block:
            return None, name
        try:
            settings = logging_settings(block)
        except ValueError as e:
            print(f"hpcsweep: run {self.run_id or self.run_dir.name}: TensorBoard / W&B logging is off: {e}",
                  file=sys.stderr, flush=True)
            return None, name
        return (settings if settings.enabled or settings.system else None), name

    def _start_loggers(self) -> None:
        label = ""
        if self._logging.wandb is not None:
            try:
                label = RunDir(self.run_dir).read_config().get("label") or ""
            except (OSError, ValueError):
                pass
        # the first step this attempt logs again: after the restored checkpoint, or all of them on a
        # fresh start (ctx.restore emptied metrics.jsonl then)
        first_step = self.start_step + 1 if self._restored else 0
        self._loggers = loggers.Loggers(self._logging, run_dir=self.run_dir, run_id=self.run_id or self.run_dir.name,
                                        label=label, config=self.cfg, project=self._project or "hpcsweep",
                                        first_step=first_step)

    def _count_metrics(self) -> int:
        if self._metrics_lines is None:      # the task never called restore(): count what is there once
            try:
                self._metrics_lines = self.metrics_path.read_bytes().count(b"\n")
            except FileNotFoundError:
                self._metrics_lines = 0
        return self._metrics_lines

    def _cut_metrics(self, keep_lines, max_step) -> None:
        """Rewrite metrics.jsonl (atomically) to the lines logged before the restored checkpoint.

        `keep_lines` (stored in the checkpoint) is exact; checkpoints without it fall back to the
        lines whose step <= `max_step`. A partial or unparsable line (a killed writer) is dropped.
        """
        self._line_closed = True          # what is left ends with a whole line
        try:
            data = self.metrics_path.read_bytes()
        except FileNotFoundError:
            self._metrics_lines = 0
            return
        lines = data.split(b"\n")[:-1]        # what follows the last newline is a partial line
        if keep_lines is not None:
            lines = lines[:keep_lines]
        kept = []
        for raw in lines:
            try:
                row = json.loads(raw)
            except ValueError:
                continue
            if keep_lines is None and (max_step is None or not isinstance(row, dict)
                                       or not isinstance(row.get("step"), Number) or row["step"] > max_step):
                continue
            kept.append(raw + b"\n")
        new = b"".join(kept)
        if new != data:
            atomic.write_bytes(self.metrics_path, new)
        self._metrics_lines = len(kept)


def logging_settings(spec) -> Logging:
    """The spec's `logging:` mapping (jobs.spec.settings.Logging) checked; everything off for None."""
    if spec is not None and not isinstance(spec, dict):
        raise ValueError(f"logging: expected a mapping, got {spec!r}")
    try:
        return Logging.model_validate(dict(spec or {}))
    except ValidationError as e:
        loc, message = settings_error(e)
        raise ValueError(f"logging.{'.'.join(map(str, loc))}: {message}") from None


def checkpoint_settings(spec) -> dict:
    """The spec's `checkpoint:` mapping completed with its defaults (jobs.spec.settings.Checkpoint) and checked."""
    try:
        return Checkpoint.model_validate(dict(spec or {})).for_context()
    except ValidationError as e:
        loc, message = settings_error(e)
        raise ValueError(f"checkpoint.{'.'.join(map(str, loc))}: {message}") from None


# --- values and RNG states --------------------------------------------------------------------

def plain(value, key="value"):
    """`value` as a JSON value: 0-d tensors and numpy scalars become numbers, arrays lists."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        return value.tolist()        # a 0-d tensor / numpy scalar gives a Python number
    if isinstance(value, (list, tuple)):
        return [plain(v, key) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v, key) for k, v in value.items()}
    raise TypeError(f"ctx.log: metric '{key}' is a {type(value).__name__}; "
                    f"log numbers, bools, strings or lists of numbers")


def rng_state() -> dict:
    """The global RNG states (python, numpy, torch CPU, CUDA when in use), in a form weights_only loads."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),     # (version, tuple of 625 ints, gauss_next): plain tuples and ints
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    # only once CUDA is initialised: asking earlier would initialise it in a CPU-only task
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _generator_state(kind, gen):
    if kind == "torch":
        return gen.get_state()
    if kind == "numpy":
        return _plain_tree(gen.bit_generator.state)
    version, internal, gauss = gen.getstate()
    return [version, list(internal), gauss]


def _set_generator(kind, gen, saved) -> None:
    if kind == "torch":
        gen.set_state(saved)
    elif kind == "numpy":
        gen.bit_generator.state = saved
    else:
        version, internal, gauss = saved
        gen.setstate((version, tuple(internal), gauss))


def _plain_tree(obj):
    """numpy's bit-generator state (nested dicts of ints and arrays) in a form weights_only loads."""
    if isinstance(obj, dict):
        return {k: _plain_tree(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.astype(np.int64)) if obj.dtype.kind in "ui" else torch.from_numpy(obj)
    return obj


RNG_TYPES = (np.random.Generator, np.random.RandomState, random.Random, torch.Generator)


def _refuse_generators(state, path="state") -> None:
    """A random generator inside the state cannot be saved safely (nor restored): say what to use."""
    if isinstance(state, RNG_TYPES):
        raise TypeError(f"ctx.save: {path} is a {type(state).__module__}.{type(state).__name__}, which a "
                        "checkpoint cannot hold; make it with ctx.numpy_rng(seed) / ctx.torch_generator(seed) / "
                        "ctx.python_rng(seed) (saved and restored for you), or save its state "
                        "(torch: gen.get_state())")
    if isinstance(state, dict):
        for k, v in state.items():
            _refuse_generators(v, f"{path}[{k!r}]")
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            _refuse_generators(v, f"{path}[{i}]")


def set_rng_state(state: dict) -> None:
    """Put back the global RNG states captured by rng_state()."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state((s["name"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"],
                             s["cached_gaussian"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            warnings.warn(f"checkpoint has CUDA RNG states for {len(state['cuda'])} GPU(s), this job sees "
                          f"{torch.cuda.device_count()}: CUDA random numbers will differ from an uninterrupted run")
