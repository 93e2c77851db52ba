"""A sweep dir written before jobs/ became four layers (checked in: tests/fixtures/sweep_before_layers,
made by that code: one run done, one SIGKILLed after its first checkpoint, a torn manifest temp file
left behind) is read, resumed and aggregated by today's code with the same run ids."""
import shutil
from pathlib import Path

from analysis.aggregate import aggregate
from jobs.runtime.runner import PackJob
from jobs.sched import submit as sched
from jobs.spec import load_sweep
from jobs.store import RunState, SweepDir

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_an_old_sweep_dir_is_read_resumed_and_aggregated(tmp_path):
    spec = tmp_path / "before_layers.yaml"
    shutil.copy(FIXTURES / "before_layers.yaml", spec)
    shutil.copytree(FIXTURES / "sweep_before_layers", tmp_path / "root" / "before_layers")
    sweep = load_sweep(spec)
    sweep_dir = SweepDir.under(tmp_path / "root", sweep.name)
    assert sorted(r.run_id for r in sweep.runs) == sorted(p.name for p in sweep_dir.runs.iterdir())
    done = next(r for r in sweep.runs if r.config["method"] == "bp")
    killed = next(r for r in sweep.runs if r.config["method"] == "dfa")
    states = sched.states(sweep, sweep_dir)
    assert states == {done.run_id: RunState.DONE, killed.run_id: RunState.PENDING}
    result_before = sweep_dir.run(done.run_id).result.read_bytes()

    entry = sched.submit(sweep, sweep_dir, job_class=PackJob, executor="debug", log=lambda *_: None)
    assert entry["runs"] == [killed.run_id]                          # the finished run is not run again
    assert set(sched.states(sweep, sweep_dir).values()) == {RunState.DONE}
    assert sweep_dir.run(done.run_id).result.read_bytes() == result_before
    starts = sweep_dir.run(killed.run_id).starts()
    assert len(starts) == 2                                          # the killed attempt, then the resumed one
    steps = [row["step"] for row in sweep_dir.run(killed.run_id).read_attempts() if "step" in row]
    assert steps == []                                               # attempts hold no metrics
    metric_steps = [row["step"] for row in __import__("jobs.store.atomic", fromlist=["x"]).read_jsonl(
        sweep_dir.run(killed.run_id).metrics)]
    assert metric_steps == sorted(set(metric_steps))                 # resumed from step 20: nothing doubled

    paths = aggregate(sweep_dir.path, log=lambda *_: None)
    runs_csv = next(p for p in paths if Path(p).name == "runs.csv")
    assert Path(runs_csv).read_text().count("\n") == 3               # header + 2 runs
