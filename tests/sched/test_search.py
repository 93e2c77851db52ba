"""Adaptive search on the local executor: ASHA's decisions taken by the worker jobs (each checked
against an independent re-computation from the journal), no step trained twice, a worker killed
mid-search and the search resumed, and a TPE search."""
import json
import os
import signal
from pathlib import Path

import pytest

from jobs.search.engine import Engine
from jobs.spec import load_sweep
from jobs.store import SweepDir, atomic
from tests.sched.slurmkit import cli, wait_for
from tests.search import journal_check

CURVE = Path(__file__).resolve().parents[1] / "fixtures" / "tasks" / "curve.py"


def search_spec(tmp_path, name="curve", *, method="asha", trials=27, parallel=3, sleep_s=0.0, **more) -> Path:
    block = {"method": method, "metric": "val_loss", "mode": "min", "trials": trials, "parallel": parallel, "seed": 0,
             "budget": {"key": "epochs", "min": 1, "max": 27, "reduction": 3},
             "space": {"lr": {"loguniform": [1e-4, 1e-1]}, "width": {"choice": [16, 32, 64, 128, 256]}}}
    block.update(more)
    p = tmp_path / f"{name}.yaml"
    p.write_text(json.dumps({"name": name, "task": f"{CURVE}:train", "base": {"sleep_s": sleep_s}, "search": block,
                             "seeds": [1], "resources": {"time_min": 20, "mem_gb": 1, "max_parallel": parallel}}))
    return p


def finished_search(spec, root):
    """The journal checked, every trial's steps contiguous; (sweep, engine, counts per rung)."""
    sweep = load_sweep(spec)
    st = sweep.stages[0]
    sdir = SweepDir(Path(root) / sweep.name)
    engine = Engine(sdir, st.name, st.search, [r.run_id for r in st.runs])
    events = journal_check.read(sdir.search_journal(st.name))
    counts = journal_check.check(events, st.search.trials, st.search.budget.reduction, len(st.search.rungs()))
    assert not engine.unfinished()
    rungs = st.search.rungs()
    reached = {}
    for e in events:
        if e["event"] == "result":
            reached[e["run_id"]] = max(reached.get(e["run_id"], 0), e["budget"])
    for r in st.runs:
        last = journal_check.contiguous(sdir.run(r.run_id).path)
        assert last == reached[r.run_id] and last in rungs       # trained exactly to the rung it reached
        result = sdir.run(r.run_id).read_result()
        assert result["search"]["budget"] == last and result["metrics"]["epochs_trained"] == last
    return sweep, engine, counts


def test_asha_on_the_local_executor(tmp_path):
    spec = search_spec(tmp_path)
    p = cli("submit", spec, "--root", tmp_path / "res", "--executor", "local", "--wait", timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    sweep, engine, counts = finished_search(spec, tmp_path / "res")
    assert counts["results"][0] == 27 and counts["results"][-1] >= 1          # someone reached the top
    assert counts["promoted"][0] >= 27 // 3
    p = cli("status", spec, "--root", tmp_path / "res")
    assert "search curve: asha" in p.stdout and "rung 3 (epochs 27)" in p.stdout, p.stdout
    # plan: the rungs and the budget against the full grid's; aggregate: the search's figure and table
    p = cli("plan", spec, "--root", tmp_path / "res")
    assert "rungs (epochs): 1, 3, 9, 27 (reduction 3)" in p.stdout and "spends 81 epochs nominally" in p.stdout, p.stdout
    p = cli("aggregate", spec, "--root", tmp_path / "res")
    assert p.returncode == 0, p.stdout + p.stderr
    out = tmp_path / "res" / "curve" / "analysis"
    import pandas as pd
    table = pd.read_csv(out / "search_curve.csv")
    assert len(table) == sum(counts["results"]) and (out / "search_curve.png").stat().st_size > 10_000
    import analysis
    runs = analysis.runs(str(tmp_path / "res" / "curve"))
    reached = table.groupby("run_id")["budget"].max()
    assert (runs.set_index("run_id")["budget"].astype(int) == reached.reindex(runs["run_id"]).values).all()
    # a finished search submits nothing again
    p = cli("resume", spec, "--root", tmp_path / "res", "--executor", "local")
    assert p.returncode == 0 and "nothing to submit" in p.stdout, p.stdout + p.stderr


def test_a_killed_worker_leaves_its_claim_and_resume_finishes_the_search(tmp_path):
    spec = search_spec(tmp_path, trials=9, parallel=2, sleep_s=0.2)
    root = tmp_path / "res"
    p = cli("submit", spec, "--root", root, "--executor", "local")
    assert p.returncode == 0, p.stdout + p.stderr
    sdir = SweepDir(root / "curve")
    journal = sdir.search_journal("curve")

    def a_worker_mid_rung():
        events = journal_check.read(journal) if journal.exists() else []
        done = {(e["trial"], e["rung"]) for e in events if e["event"] == "result"}
        claims = [e for e in events if e["event"] == "claim" and (e["trial"], e["rung"]) not in done]
        for c in claims:
            holder = atomic.read_json(sdir.run(c["run_id"]).holder, None)
            if holder and (sdir.run(c["run_id"]).metrics.exists()):
                return holder["pid"]
        return None

    pid = wait_for(a_worker_mid_rung, 120, "a worker training a trial")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: cli("status", spec, "--root", root).stdout.count("in flight") == 0
             or "(0 in flight)" in cli("status", spec, "--root", root).stdout, 180, "the other worker ends")
    p = cli("resume", spec, "--root", root, "--executor", "local", "--wait", timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    finished_search(spec, root)


def test_tpe_on_the_local_executor(tmp_path):
    spec = search_spec(tmp_path, name="curve_tpe", method="tpe", trials=20, parallel=2,
                       budget={"key": "epochs", "min": 1, "max": 3, "reduction": 3})
    p = cli("submit", spec, "--root", tmp_path / "res", "--executor", "local", "--wait", timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    sdir = SweepDir(tmp_path / "res" / "curve_tpe")
    events = journal_check.read(sdir.search_journal("curve_tpe"))
    claims = [e for e in events if e["event"] == "claim"]
    results = [e for e in events if e["event"] == "result"]
    assert len(claims) == len(results) == 20
    assert sorted(c["number"] for c in claims) == list(range(20))          # Optuna's trials, one per run
    params = [(c["params"]["lr"], c["params"]["width"]) for c in claims]
    assert len(set(params)) == 20
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    study = optuna.load_study(study_name="search", storage=JournalStorage(JournalFileBackend(str(sdir.search_optuna("curve_tpe")))))
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 20
    for c in claims:                   # what ran is what TPE asked
        cfg = sdir.run(c["run_id"]).read_config()["config"]
        assert (cfg["lr"], cfg["width"], cfg["epochs"]) == (c["params"]["lr"], c["params"]["width"], 3)
