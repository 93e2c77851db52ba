"""Pipelines on this machine: stages that hand checkpoints downstream, with the local executor and the
debug executor; the registry of named checkpoints; the stage grammar's errors. The same on the real
SLURM, with dependencies, is in tests/sched/test_slurm_pipeline.py."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.runtime.runner import PackJob
from jobs.sched import submit as sched
from jobs.spec import SpecError, load_sweep
from jobs.store import RunState, SweepDir

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "tests" / "fixtures" / "pipeline_tasks"


def write_pipeline(tmp_path, name="chain", seeds=(1, 2), fit=None, extra_eval=None):
    """A spec beside copies of the test tasks (task files outside the repository, as a user's are)."""
    for f in TASKS.glob("*.py"):
        shutil.copy(f, tmp_path / f.name)
    spec = {"name": name, "stages": [
        {"name": "prepare", "task": "prep.py:train", "base": {"n": 10}},
        {"name": "train", "after": "prepare", "task": "fit.py:train", "seeds": list(seeds),
         "base": {"steps": 30, **(fit or {})}, "checkpoint": {"every_steps": 10, "keep_last": 1}},
        {"name": "eval", "after": "train", "task": "score.py:train",
         "grid": {"scale.factor": [1.0, 2.0]}, **(extra_eval or {})}],
        "resources": {"time_min": 5, "max_parallel": 2},
        "analysis": {"group_by": ["seed", "scale.factor"], "metrics": ["score"]}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(spec))
    return path


def results(sweep_dir, sweep, stage):
    return {r.run_id: json.loads(sweep_dir.run(r.run_id).result.read_text())["metrics"]
            for r in sweep.runs if r.stage == stage}


def test_a_three_stage_chain_runs_in_order_and_each_eval_sees_its_own_upstream(tmp_path):
    path = write_pipeline(tmp_path)
    sweep = load_sweep(path)
    assert [len(st.runs) for st in sweep.stages] == [1, 2, 4]        # eval: every train run x 2 factors
    evals = [r for r in sweep.runs if r.stage == "eval"]
    assert {r.varied["seed"] for r in evals} == {1, 2}                # an eval run carries its upstream's values
    root = tmp_path / "root"
    out = subprocess.run([sys.executable, "main.py", "submit", str(path), "--root", str(root), "--executor", "local",
                          "--wait"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    sweep_dir = SweepDir.under(root, sweep.name)
    assert set(sched.states(sweep, sweep_dir).values()) == {RunState.DONE}
    trained = results(sweep_dir, sweep, "train")
    for r in evals:
        up = r.upstream["train"]["run_id"]
        got = json.loads(sweep_dir.run(r.run_id).result.read_text())["metrics"]
        assert got["upstream_step"] == 30 and got["upstream_w"] == trained[up]["w"]
        assert got["score"] == pytest.approx(trained[up]["w"] * r.config["scale.factor"])
        assert got["upstream_seed"] == r.varied["seed"]
    # the job imported the copy the submission recorded
    version = json.loads(next(sweep_dir.code.glob("*.json")).read_text())
    assert any(ref.endswith("score.py:train") for ref in version["tasks"])
    assert any(next(p for p in sweep_dir.code.iterdir() if p.is_dir()).glob("*/score.py"))
    status = subprocess.run([sys.executable, "main.py", "status", str(path), "--root", str(root)], cwd=REPO,
                            capture_output=True, text=True).stdout
    assert "stage prepare: 1 done" in status and "stage eval: 4 done" in status
    import analysis
    table = analysis.runs(path, root=root)
    assert sorted(table["stage"].unique()) == ["eval", "prepare", "train"]
    assert set(table.loc[table["stage"] == "eval", "seed"]) == {1, 2}


def test_a_failed_upstream_blocks_its_downstream_and_resume_finishes_it(tmp_path):
    path = write_pipeline(tmp_path, "blocked")
    sweep = load_sweep(path)
    root = tmp_path / "root"
    sweep_dir = SweepDir.under(root, sweep.name)
    bad = next(r for r in sweep.runs if r.stage == "train" and r.config["seed"] == 2)
    # the fit task of seed 2 fails: its data file is unreadable when it starts
    (tmp_path / "fit.py").write_text((TASKS / "fit.py").read_text().replace(
        "    rows = [", "    if cfg['seed'] == 2 and not (ctx.run_dir.parent.parent / 'fixed').exists():\n"
                       "        raise RuntimeError('seed 2 is broken')\n    rows = ["))
    sched.submit(sweep, sweep_dir, job_class=PackJob, executor="debug", log=lambda *_: None)
    states = sched.states(sweep, sweep_dir)
    assert states[bad.run_id] == RunState.FAILED
    downstream = [r for r in sweep.runs if r.stage == "eval" and r.upstream["train"]["run_id"] == bad.run_id]
    assert downstream and all(states[r.run_id] == RunState.BLOCKED for r in downstream)
    others = [r for r in sweep.runs if r.stage == "eval" and r not in downstream]
    assert all(states[r.run_id] == RunState.DONE for r in others)
    said = []
    assert sched.submit(sweep, sweep_dir, job_class=PackJob, executor="debug", log=said.append) == {}
    assert "--retry-failed" in said[0]
    (sweep_dir.path / "fixed").touch()
    entry = sched.submit(sweep, sweep_dir, job_class=PackJob, executor="debug", retry_failed=True, log=lambda *_: None)
    assert set(entry["runs"]) == {bad.run_id} | {r.run_id for r in downstream}    # nothing finished runs twice
    assert set(sched.states(sweep, sweep_dir).values()) == {RunState.DONE}


def test_a_changed_downstream_grid_adds_runs_without_touching_upstream(tmp_path):
    path = write_pipeline(tmp_path, "grow")
    sweep = load_sweep(path)
    sweep_dir = SweepDir.under(tmp_path / "root", sweep.name)
    sched.submit(sweep, sweep_dir, job_class=PackJob, executor="debug", log=lambda *_: None)
    spec = json.loads(path.read_text())
    spec["stages"][2]["grid"]["scale.factor"] = [1.0, 2.0, 3.0]
    path.write_text(json.dumps(spec))
    grown = load_sweep(path)
    assert {r.run_id for r in sweep.runs} < {r.run_id for r in grown.runs}
    entry = sched.submit(grown, sweep_dir, job_class=PackJob, executor="debug", log=lambda *_: None)
    assert len(entry["runs"]) == 2 and all(r.startswith(tuple(entry["runs"])) for r in entry["runs"])
    assert {r.stage for r in grown.runs if r.run_id in entry["runs"]} == {"eval"}


def test_export_then_from_manifest(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCSWEEP_REGISTRY", str(tmp_path / "registry.yaml"))
    path = write_pipeline(tmp_path, "trainer", seeds=(3, 4))
    root = tmp_path / "root"
    out = subprocess.run([sys.executable, "main.py", "submit", str(path), "--root", str(root), "--executor", "debug"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    cli = lambda *a: subprocess.run([sys.executable, "main.py", *a], cwd=REPO, capture_output=True, text=True,
                                    env={**__import__("os").environ, "HPCSWEEP_REGISTRY": str(tmp_path / "registry.yaml")})
    two = cli("export", str(path), "--root", str(root), "--stage", "train", "--name", "fit_s3")
    assert two.returncode == 2 and "2 match" in two.stderr                 # one run, or say which
    out = cli("export", str(path), "--root", str(root), "--stage", "train", "--only", "seed=3", "--name", "fit_s3")
    assert out.returncode == 0 and "registered fit_s3" in out.stdout, out.stderr
    again = cli("export", str(path), "--root", str(root), "--stage", "train", "--only", "seed=3", "--name", "fit_s3")
    assert again.returncode == 2 and "already registered" in again.stderr
    later = tmp_path / "later.yaml"
    later.write_text(json.dumps({"name": "later", "stages": [
        {"name": "eval", "from_manifest": "fit_s3", "task": "score.py:train", "grid": {"scale.offset": [0.0, 1.0]}}]}))
    out = cli("submit", str(later), "--root", str(root), "--executor", "debug")
    assert out.returncode == 0, out.stdout + out.stderr
    import analysis
    table = analysis.runs(later, root=root)
    trained = analysis.runs(path, root=root)
    w = trained.loc[(trained["stage"] == "train") & (trained["seed"] == 3), "w"].item()
    assert sorted(table["score"]) == pytest.approx([w, w + 1.0])
    assert set(table["seed"]) == {3}                                 # the registered run's varied values travel
    missing = tmp_path / "missing.yaml"
    missing.write_text(json.dumps({"name": "m", "stages": [{"name": "e", "from_manifest": "fit_s4", "task": "score.py:train"}]}))
    out = cli("plan", str(missing))
    assert out.returncode == 2 and "did you mean 'fit_s3'" in out.stderr


@pytest.mark.parametrize("stages, key, words", [
    ([{"name": "a", "task": "resmlp"}, {"name": "b", "after": "c", "task": "resmlp"}], "stages[1].after", "no earlier stage"),
    ([{"name": "a", "task": "resmlp"}, {"name": "a", "task": "resmlp", "base": {"k": 1}}], "stages[1].name", "two stages"),
    ([{"name": "a", "task": "resmlp", "grid": {"k": [0, 1]}}, {"name": "b", "after": "a", "task": "resmlp",
                                                              "grid": {"k": [2, 3]}}], "stages[1].grid", "varies in both"),
    ([{"name": "a", "task": "resmlp", "grdi": {}}], "stages[0].grdi", "did you mean 'grid'"),
    ([{"name": "a", "task": "resmlp", "after": "x", "from_manifest": "y"}], "stages[0].from_manifest", "not both"),
])
def test_stage_mistakes_name_the_stage_and_key(tmp_path, stages, key, words):
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps({"name": "bad", "stages": stages}))
    with pytest.raises(SpecError) as e:
        load_sweep(path, registry={})
    assert e.value.key == key and words in str(e.value), str(e.value)
