"""An independent check of a search journal: every claim re-derived from the results before it.

Written apart from jobs/search on purpose (the paper's Algorithm 2, spelled again), so that a
mistake in the engine's decisions cannot also hide in the check."""
import json
import math
from pathlib import Path


def read(path) -> list:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def expected(results, promoted, running, started, trials, eta, n_rungs, mode):
    sign = 1 if mode == "min" else -1
    for rung in range(n_rungs - 2, -1, -1):
        order = sorted(range(len(results[rung])), key=lambda i: (
            math.isnan(results[rung][i][1]), sign * (0 if math.isnan(results[rung][i][1]) else results[rung][i][1]), i))
        best = [results[rung][i][0] for i in order[:len(results[rung]) // eta]]
        for t in best:
            if t not in promoted[rung] and t not in running:
                return ("promote", t, rung + 1)
    return ("start", started, 0) if started < trials else None


def check(events, trials, eta, n_rungs, mode="min") -> dict:
    """Assert that each claim is the decision ASHA takes given the journal before it, that no trial
    is claimed twice at one rung, and that each claim has at most one result. Counts per rung."""
    results = [[] for _ in range(n_rungs)]
    promoted = [set() for _ in range(n_rungs)]
    open_, claimed, started = {}, set(), 0
    for e in events:
        key = (e["trial"], e["rung"])
        if e["event"] == "claim":
            assert key not in claimed, f"trial {e['trial']} claimed twice at rung {e['rung']}"
            claimed.add(key)
            want = expected(results, promoted, {t for t, _ in open_}, started, trials, eta, n_rungs, mode)
            assert want == (e["kind"], e["trial"], e["rung"]), f"claim {e} where ASHA takes {want}"
            open_[key] = e
            if e["rung"] == 0:
                started += 1
            else:
                promoted[e["rung"] - 1].add(e["trial"])
        elif e["event"] == "result":
            assert key in open_, f"a result without an open claim: {e}"
            del open_[key]
            v = e["value"]
            results[e["rung"]].append((e["trial"], float(v)))
    assert not open_, f"claims never finished: {sorted(open_)}"
    assert started == trials
    return {"results": [len(r) for r in results], "promoted": [len(p) for p in promoted]}


def contiguous(run_dir) -> int:
    """A trial's metrics steps run 1, 2, ... with none repeated (no step trained twice); the last."""
    steps = [json.loads(line)["step"] for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1)), f"{run_dir}: steps {steps}"
    return steps[-1]
