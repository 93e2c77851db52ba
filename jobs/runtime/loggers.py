"""TensorBoard event files and Weights & Biases runs, fed by ctx.log; off unless a spec turns them on.

What a user writes, at the top level of a spec (jobs/spec/settings.py's Logging holds the defaults):

    logging:
      tensorboard: true            # event files in <run dir>/tensorboard/
      wandb: {project: cotformer, entity: null, mode: offline}   # or `wandb: true` (project: the sweep's name)

A task changes nothing: every line ctx.log appends to metrics.jsonl (rank 0) goes on to each backend
the spec turns on, at the line's step. Numbers and bools go as scalars; a list of numbers (nested
lists too) as a histogram of its finite values; strings and anything else stay in metrics.jsonl
only. The job reads the block from the sweep dir's frozen spec.yaml (as `submit` wrote it); the
block is not config, so it changes no run id.

- TensorBoard: torch.utils.tensorboard's SummaryWriter, add_scalar / add_histogram with
  global_step = the step and walltime = the line's time. `tensorboard --logdir <sweep dir>/runs`
  shows every run of a sweep (as `<run_id>/tensorboard`).
- W&B: wandb.init(mode = the spec's mode, offline by default, $WANDB_MODE winning where set;
  dir = the run dir; id = the run_id; name = the run's label; config = the run's config;
  resume="allow"), then wandb.log(metrics, step=step). An offline attempt writes
  <run dir>/wandb/offline-run-<time>-<run_id>/ and needs no network; a requeued attempt writes
  another one with the same id, and `wandb sync <sweep dir>/runs/*/wandb/offline-run-*` (from the
  login node, later) uploads them to that one W&B run, the files of a run in order of start time.
  (The steps a resumed attempt logs again are a replay: ctx.restore brought back the state and the
  RNG states they are computed from.)

The backends start at an attempt's first ctx.log (nothing is imported before that, nothing at all
without `logging:`), flush at every ctx.save (a preempted job's events are on disk with its
checkpoint), and close when the attempt ends: the runner calls ctx.close(), which finishes the W&B
run and ends W&B's service process. A backend that fails (not installed, W&B refusing, a full
disk) never fails the run: one line on stderr names it and the reason, and it stays off for the
rest of the attempt.
"""
from __future__ import annotations

import math
import os
import sys

from jobs.store import RunDir

# buckets of a TensorBoard histogram: SummaryWriter's default ("tensorflow", ~1,500 edges) costs ~1.6 ms a
# list, 64 ~0.3 ms; TensorBoard's own view re-bins to 30 anyway
HISTOGRAM_BINS = 64


class TensorBoard:
    """Event files in <run dir>/tensorboard/, one per attempt."""

    name = "tensorboard"

    def __init__(self, run_dir, first_step: int):
        from torch.utils.tensorboard import SummaryWriter
        # A resumed attempt writes a new event file beside the earlier ones and starts it with a
        # restart marker at `first_step` (purge_step): TensorBoard drops what the earlier attempts
        # wrote at that step and later, as ctx.restore drops those lines from metrics.jsonl, so the
        # steps logged again after a resume are shown once, with their new values.
        self.writer = SummaryWriter(log_dir=str(RunDir(run_dir).tensorboard), purge_step=first_step)

    def log(self, step, walltime, scalars, histograms):
        for key, value in scalars.items():
            self.writer.add_scalar(key, float(value), global_step=step, walltime=walltime)
        if histograms:
            import numpy as np
            for key, values in histograms.items():
                self.writer.add_histogram(key, np.asarray(values, dtype=np.float64), global_step=step,
                                          walltime=walltime, bins=HISTOGRAM_BINS)

    def flush(self):
        self.writer.flush()

    def close(self):
        self.writer.close()


class WandB:
    """One W&B run per run, its id the run_id: every attempt of a run goes to the same W&B run."""

    name = "wandb"

    def __init__(self, settings, run_dir, *, run_id, label, config, project):
        import wandb
        self._wandb = wandb
        try:
            self.run = wandb.init(
                mode=os.environ.get("WANDB_MODE") or settings.mode, dir=str(run_dir),
                project=settings.project or project, entity=settings.entity, name=label or run_id, id=run_id,
                resume="allow", config=dict(config or {}),
                # no console capture (the job's own logs keep stdout / stderr), no code or git scan
                # (the sweep dir records the code: code/<submission>.json and its diff), no banner
                settings=wandb.Settings(console="off", save_code=False, disable_git=True, silent=True))
        except BaseException:
            _quietly(wandb.teardown)          # a service process started before init failed: end it
            raise

    def log(self, step, walltime, scalars, histograms):
        data = dict(scalars)
        for key, values in histograms.items():
            data[key] = self._wandb.Histogram(values)
        self.run.log(data, step=step)    # the time of the line: W&B stamps its own _timestamp

    def flush(self):
        pass                             # wandb.log hands each line to W&B's service process, which writes it

    def close(self):
        try:
            self.run.finish()
        finally:
            self._wandb.teardown()       # ends the service process (wandb-core): no process is left behind


class Loggers:
    """The backends a `logging:` block turns on for one attempt of one run (rank 0 only).

    loggers = Loggers(settings, run_dir=..., run_id=..., label=..., config=..., project=..., first_step=0)
    loggers.log(row)     # a metrics.jsonl line: {"step", "time", **metrics}
    loggers.flush(); loggers.close()

    Constructing it starts the backends; one that fails to start or later raises is reported once on
    stderr and dropped, and no call here ever raises.
    """

    def __init__(self, settings, *, run_dir, run_id, label, config, project, first_step=0):
        self.run_id = run_id
        self.backends = []
        starts = []
        if settings.tensorboard:
            starts.append((TensorBoard.name, lambda: TensorBoard(run_dir, first_step)))
        if settings.wandb is not None:
            starts.append((WandB.name, lambda: WandB(settings.wandb, run_dir, run_id=run_id, label=label,
                                                     config=config, project=project)))
        for name, start in starts:
            try:
                self.backends.append(start())
            except (Exception, SystemExit) as e:
                self._warn(name, e, "could not start")

    def log(self, row: dict) -> None:
        if not self.backends:
            return
        scalars, histograms = split_metrics(row)
        if scalars or histograms:
            self._each("log", int(row["step"]), row["time"], scalars, histograms)

    def flush(self) -> None:
        self._each("flush")

    def close(self) -> None:
        backends, self.backends = self.backends, []
        for backend in backends:
            try:
                backend.close()
            except (Exception, SystemExit) as e:
                self._warn(backend.name, e, "did not close cleanly")

    def _each(self, method, *args):
        for backend in list(self.backends):
            try:
                getattr(backend, method)(*args)
            except (Exception, SystemExit) as e:
                self.backends.remove(backend)
                self._warn(backend.name, e, "failed")
                _quietly(backend.close)

    def _warn(self, name, error, what):
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:400]
        print(f"hpcsweep: run {self.run_id}: {name} logging {what} and is off for the rest of this attempt "
              f"(metrics.jsonl is complete): {reason}", file=sys.stderr, flush=True)


def split_metrics(row: dict) -> tuple[dict, dict]:
    """(scalars, histograms) of a metrics.jsonl line: numbers and bools; lists of numbers as their finite
    values (nested lists flattened). Strings, empty lists and the line's step and time are left out."""
    scalars, histograms = {}, {}
    for key, value in row.items():
        if key in ("step", "time"):
            continue
        if isinstance(value, (bool, int, float)):
            scalars[key] = value
        elif isinstance(value, list):
            values = []
            if _finite_numbers(value, values) and values:
                histograms[key] = values
    return scalars, histograms


def _finite_numbers(items, out) -> bool:
    """Append the finite numbers of a nested list to `out`; False when it holds anything but numbers."""
    for v in items:
        if isinstance(v, list):
            if not _finite_numbers(v, out):
                return False
        elif isinstance(v, (bool, int, float)):
            if math.isfinite(v):
                out.append(float(v))
        else:
            return False
    return True


def _quietly(call):
    try:
        call()
    except (Exception, SystemExit):
        pass
