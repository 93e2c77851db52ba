"""A search's state is its journal, search/<stage>.jsonl; decisions are taken under its lock.

A worker job (one of the stage's `parallel` slots) loops:

    claim = engine.next(slot, job)        # under the lock: this slot's unfinished claim, else a new decision
    ... the trial's run trains to claim.budget (resuming from its checkpoint) ...
    engine.landed(claim, value)           # under the lock: the rung result, recorded once

Events (one JSON line each, appended under the lock):

    {"event": "claim", "slot", "trial", "run_id", "rung", "budget", "kind": start|promote, "job", "time"[, "params", "number"]}
    {"event": "result", "trial", "run_id", "rung", "budget", "value", "job", "time"}
    {"event": "failed", "trial", "run_id", "rung", "job", "time", "error"}

Every decision is a claim, journaled before any of its effects (the trial's config.yaml raised to
the rung's budget, its earlier result kept as result.rung<r>.json); a slot that restarts (requeued,
chained, resumed after a kill) takes its own open claim first and redoes the effects, which are
idempotent. So a decision killed half-way is finished, never taken twice: a trial is claimed at
most once per rung, and a result is recorded at most once per claim.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field

from filelock import FileLock

from jobs.search import asha
from jobs.spec.settings import Search
from jobs.store import RunDir, SweepDir, atomic, now_iso


@dataclass
class Claim:
    slot: int
    trial: int
    run_id: str
    rung: int
    budget: int | None
    kind: str
    params: dict = field(default_factory=dict)
    number: int | None = None      # TPE: Optuna's trial number


@dataclass
class State:
    """What the journal says: per rung the results in landing order, the promotions, the open claims."""
    results: list
    promoted: list
    claims: dict                    # (trial, rung) -> the claim event
    open: dict                      # (trial, rung) -> the claim event, no result or failure yet
    failed: set
    started: int
    events: list

    def running(self) -> set:
        return {t for t, _ in self.open}

    def best(self, mode):
        """(trial, rung, value) of the best result at the highest rung any trial reached, or None."""
        for rung in range(len(self.results) - 1, -1, -1):
            if self.results[rung]:
                trial, value = asha.ranked(self.results[rung], mode)[0]
                return trial, rung, value
        return None


class Engine:
    def __init__(self, sweep_dir, stage: str, search: Search, run_ids: list):
        self.sweep_dir = SweepDir(sweep_dir) if not isinstance(sweep_dir, SweepDir) else sweep_dir
        self.stage, self.search, self.run_ids = stage, search, list(run_ids)
        self.index = {rid: i for i, rid in enumerate(self.run_ids)}
        self.rungs = search.rungs() if search.method == "asha" else [search.budget.max if search.budget else None]
        self.path = self.sweep_dir.search_journal(stage)

    # ------------------------------------------------------------ reading
    def state(self) -> State:
        n = len(self.rungs)
        results, promoted = [[] for _ in range(n)], [set() for _ in range(n)]
        claims, open_, failed, started = {}, {}, set(), 0
        events = atomic.read_jsonl(self.path) if self.path.exists() else []
        for e in events:
            kind, key = e.get("event"), (e.get("trial"), e.get("rung"))
            if kind == "claim":
                claims[key] = open_[key] = e
                if e.get("rung") == 0:
                    started += 1
                elif e.get("rung") is not None:
                    promoted[e["rung"] - 1].add(e["trial"])
            elif kind == "result" and key in open_:
                del open_[key]
                results[e["rung"]].append((e["trial"], _number(e.get("value"))))
            elif kind == "failed" and key in open_:
                del open_[key]
                failed.add(e["trial"])
        return State(results, promoted, claims, open_, failed, started, events)

    def unfinished(self, state: State | None = None) -> bool:
        """Whether the search has work left: an open claim, or a decision a free worker would take."""
        state = state or self.state()
        return bool(state.open) or self._decide(state) is not None

    def _decide(self, state):
        trials = min(self.search.trials, len(self.run_ids))
        if self.search.method == "tpe":
            return asha.Decision("start", state.started, 0) if state.started < trials else None
        results = [[(t, v) for t, v in rung if t not in state.failed] for rung in state.results]
        return asha.decide(results, state.promoted, state.running() | state.failed, state.started, trials,
                           self.search.budget.reduction, len(self.rungs), self.search.mode)

    # ------------------------------------------------------------ deciding (in the worker job)
    def lock(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.sweep_dir.search_lock(self.stage)))

    def next(self, slot: int, job: str = "") -> Claim | None:
        """This slot's open claim (a restart finishes what it started), else the next decision, journaled
        and applied; None when the search has nothing for a free worker."""
        with self.lock():
            state = self.state()
            mine = [e for e in state.open.values() if e.get("slot") == slot]
            if mine:
                claim = _claim(mine[0])
            else:
                d = self._decide(state)
                if d is None:
                    return None
                claim = Claim(slot, d.trial, self.run_ids[d.trial], d.rung, self.rungs[d.rung], d.kind)
                if self.search.method == "tpe":
                    from jobs.search import tpe
                    claim.number, claim.params = tpe.ask(self.sweep_dir.search_optuna(self.stage), self.search, d.trial)
                atomic.append_jsonl(self.path, {"event": "claim", **_event(claim), "job": job, "time": now_iso()},
                                    lock=False)
            self.apply(claim)
            return claim

    def apply(self, claim: Claim) -> None:
        """The claim's effects on its trial's run dir, idempotent: config.yaml at the claim's budget (and
        TPE's sampled values), an earlier rung's result.json kept aside as result.rung<r>.json."""
        run_dir = self.sweep_dir.run(claim.run_id)
        meta = run_dir.read_config()
        cfg = dict(meta.get("config") or {})
        cfg.update(claim.params)
        if claim.budget is not None and self.search.budget is not None:
            cfg[self.search.budget.key] = claim.budget
        marker = {"stage": self.stage, "method": self.search.method, "trial": claim.trial, "rung": claim.rung,
                  "budget": claim.budget, **({"key": self.search.budget.key} if self.search.budget else {})}
        if cfg != meta.get("config") or meta.get("search") != marker:
            atomic.write_yaml(run_dir.config, {**meta, "config": cfg, "search": marker,
                                               **({"varied": {**(meta.get("varied") or {}), **claim.params}}
                                                  if claim.params else {})})
        result = run_dir.read_result()
        if result is not None and _rung_of(result) < claim.rung:
            os.replace(run_dir.result, run_dir.rung_result(_rung_of(result)))

    def landed(self, claim: Claim, value=None, error: str = "", job: str = "") -> None:
        """Record the claim's end once: its rung result (`value`: the metric), or its failure."""
        with self.lock():
            state = self.state()
            if (claim.trial, claim.rung) not in state.open:
                return
            if error:
                atomic.append_jsonl(self.path, {"event": "failed", "trial": claim.trial, "run_id": claim.run_id,
                                                "rung": claim.rung, "job": job, "time": now_iso(),
                                                "error": error[:300]}, lock=False)
            else:
                atomic.append_jsonl(self.path, {"event": "result", "trial": claim.trial, "run_id": claim.run_id,
                                                "rung": claim.rung, "budget": claim.budget, "value": _plain(value),
                                                "job": job, "time": now_iso()}, lock=False)
            if self.search.method == "tpe" and claim.number is not None:
                from jobs.search import tpe
                tpe.tell(self.sweep_dir.search_optuna(self.stage), self.search, claim.number,
                         None if error else _number(value))

    def value_of(self, run_dir: RunDir, result: dict | None = None):
        """The rung's metric: its last value in metrics.jsonl, else the result's final metric of that name."""
        name, last = self.search.metric, None
        try:
            with open(run_dir.metrics, "rb") as f:
                for line in f:
                    if name.encode() in line:
                        try:
                            row = json.loads(line)
                        except ValueError:
                            continue
                        if name in row:
                            last = row[name]
        except FileNotFoundError:
            pass
        if last is None and result is not None:
            last = (result.get("metrics") or {}).get(name)
        return last


def _claim(e) -> Claim:
    return Claim(e["slot"], e["trial"], e["run_id"], e["rung"], e.get("budget"), e.get("kind", ""),
                 dict(e.get("params") or {}), e.get("number"))


def _event(c: Claim) -> dict:
    return {"slot": c.slot, "trial": c.trial, "run_id": c.run_id, "rung": c.rung, "budget": c.budget, "kind": c.kind,
            **({"params": c.params} if c.params else {}), **({"number": c.number} if c.number is not None else {})}


def _rung_of(result) -> int:
    s = result.get("search") if isinstance(result, dict) else None
    return int(s.get("rung", -1)) if isinstance(s, dict) else -1


def _number(v):
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str) and v in ("nan", "inf", "-inf"):
        return float(v)
    return float("nan")


def _plain(v):
    v = _number(v)
    return v if math.isfinite(v) else str(v)


def summary(engine: Engine, labels: dict | None = None) -> dict:
    """What `status` says of a search: per rung its results and promotions, who runs, who is paused, the best."""
    state, search = engine.state(), engine.search
    labels = labels or {}
    reached = {}
    for rung, results in enumerate(state.results):
        for trial, _ in results:
            reached[trial] = max(reached.get(trial, -1), rung)
    top = len(engine.rungs) - 1
    running = state.running()
    paused = sorted(t for t, r in reached.items() if r < top and t not in running and t not in state.failed)
    best = state.best(search.mode)
    key = search.budget.key if search.budget else "budget"
    return {
        "stage": engine.stage, "method": search.method, "metric": search.metric, "mode": search.mode,
        "trials": search.trials, "parallel": search.parallel, "started": state.started,
        "running": sorted(running), "paused": paused, "failed": sorted(state.failed),
        "rungs": [{"rung": r, key: b, "results": len(state.results[r]), "promoted": len(state.promoted[r])}
                  for r, b in enumerate(engine.rungs)],
        "best": None if best is None else {"trial": best[0], "run_id": engine.run_ids[best[0]],
                                           "label": labels.get(engine.run_ids[best[0]], ""), "rung": best[1],
                                           key: engine.rungs[best[1]], search.metric: best[2]},
        "decisions": sum(1 for e in state.events if e.get("event") == "claim"),
        "finished": not engine.unfinished(state),
    }


def describe(s: dict) -> list:
    """summary() as lines of text."""
    key = next(k for k in s["rungs"][0] if k not in ("rung", "results", "promoted")) if s["rungs"] else "budget"
    head = (f"search {s['stage']}: {s['method']} on {s['metric']} ({s['mode']}), {s['started']}/{s['trials']} trials "
            f"started, {len(s['running'])} running, {len(s['paused'])} paused"
            + (f", {len(s['failed'])} failed" if s["failed"] else "")
            + (f"; finished after {s['decisions']} decisions" if s["finished"] else f"; {s['decisions']} decisions so far"))
    lines = [head]
    if s["method"] == "asha":
        for r in s["rungs"]:
            lines.append(f"  rung {r['rung']} ({key} {r[key]}): {r['results']} results"
                         + (f", {r['promoted']} promoted" if r["rung"] < len(s["rungs"]) - 1 else ""))
    if s["best"]:
        b = s["best"]
        lines.append(f"  best: {b['label'] or b['run_id']}: {s['metric']} {b[s['metric']]:.6g} at {key} {b[key]}")
    return lines


def schedule(stage_name: str, search: Search, trials: int) -> dict:
    """What `plan` says before anything runs: the rungs, what the search spends, and that against the
    full grid (every trial trained to the largest budget)."""
    key = search.budget.key if search.budget else None
    top = search.budget.max if search.budget else None
    out = {"stage": stage_name, "method": search.method, "metric": search.metric, "mode": search.mode,
           "trials": trials, "parallel": search.parallel, "seed": search.seed, "budget_key": key}
    if search.method == "asha":
        rungs, eta = search.rungs(), search.budget.reduction
        out.update(rungs=rungs, reduction=eta, reach=[trials // eta ** r for r in range(len(rungs))],
                   nominal=asha.nominal_budget(trials, rungs, eta), largest=asha.largest_budget(trials, rungs, eta))
    elif top is not None:
        out.update(rungs=[top], nominal=trials * top, largest=trials * top)
    if top is not None:
        out["grid"] = trials * top
    return out


def schedule_lines(s: dict) -> list:
    lines = [f"search {s['stage']}: {s['method']} on {s['metric']} ({s['mode']}), {s['trials']} trials, "
             f"{s['parallel']} at once (worker jobs), seed {s['seed']}"]
    key = s.get("budget_key")
    if key is None:
        return lines + ["  no budget key: each trial trains as its config says"]
    if s["method"] == "asha":
        lines.append(f"  rungs ({key}): {', '.join(map(str, s['rungs']))} (reduction {s['reduction']}); "
                     f"nominally {', '.join(map(str, s['reach']))} trials reach them")
        lines.append(f"  spends {s['nominal']} {key} nominally (synchronous halving), at most {s['largest']} "
                     f"(asynchronous promotion); the full grid, every trial to {key} {s['rungs'][-1]}: {s['grid']} "
                     f"({100 * s['nominal'] / s['grid']:.0f} % / {100 * s['largest'] / s['grid']:.0f} % of it)")
    else:
        lines.append(f"  each trial trains to {key} {s['rungs'][0]}: {s['nominal']} {key} in all")
    return lines
