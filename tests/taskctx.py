"""What the task tests share: the real RunContext with a stop at a chosen step, and readers of a run dir.

    from tests.taskctx import StoppingContext, metrics_of, strip_times
"""
import json

from jobs.runtime.context import RunContext

TIMES = ("train_time_s", "time")        # wall-clock values: never equal between two runs


class StoppingContext(RunContext):
    """The real RunContext, with a stop requested when the task reaches step `stop_at`, as a signal would."""

    def __init__(self, run_dir, cfg, stop_at=None, every_steps=None):
        super().__init__(run_dir, cfg, checkpoint={"every_min": None, "every_steps": every_steps, "keep_last": 1})
        self.stop_at = stop_at

    def should_checkpoint(self, step):
        if step == self.stop_at:
            self.request_stop()
        return super().should_checkpoint(step)


def metrics_of(run_dir):
    """The lines of the run's metrics.jsonl, parsed."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def strip_times(d):
    return {k: v for k, v in d.items() if k not in TIMES}
