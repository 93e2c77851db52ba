"""A sweep dir -> one table with a row per run, and the sweep's analysis settings.

Reads only what the sweep wrote (docs/format.md, "The sweep dir"): spec.yaml, plan.json and, per run,
config.yaml, result.json and error.txt, through jobs.store.SweepDir. States are jobs.store.RunState:
`done` (result.json parses), `corrupt result` (it does not), `failed` (error.txt, no result),
`pending` (config.yaml, nothing else: submitted, unfinished), `new` (no run dir yet). Analysis
cannot see the scheduler, so a run a live job holds reads as `pending`.

Config columns describe what ran: each run's frozen config.yaml, not plan.json (which lists what
was asked last) nor the task's current defaults; a run that never started has only its plan entry.
`stage` is the plan entry's "stage" (pipelines), else "".

Non-finite final metrics: result.json stores NaN / inf / -inf as the strings "nan", "inf", "-inf";
they come back as float NaN / inf, stay in the table (not as missing), and the boolean column
`diverged` says a run has any non-finite final metric. Sweep.nonfinite lists them per metric so
that summaries count them instead of dropping them silently.
Anything unreadable becomes a warning and the rest goes on: one corrupt file never stops an aggregate.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from jobs.spec import figures as schema
from jobs.store import RunState, SweepDir, atomic

SEED = "seed"
BASE_COLUMNS = ["run_id", "label", "state", "stage", "attempts", "wall_time_s", "finished"]
# a search's trials (result.json's `search`): the rung a trial's result is from and the budget it trained to
SEARCH_COLUMNS = ["rung", "budget"]
DONE, FAILED, PENDING = RunState.DONE, RunState.FAILED, RunState.PENDING
CORRUPT, NEW = RunState.CORRUPT, RunState.NEW
NOT_FINISHED = (PENDING, CORRUPT, NEW, RunState.IN_FLIGHT, RunState.BLOCKED)
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class Sweep:
    dir: Path
    spec: dict
    analysis: dict                  # schema.normalize(spec["analysis"]), group_by and metrics resolved
    runs: pd.DataFrame              # one row per run: BASE_COLUMNS, config keys, final metrics, error, in_plan
    config_keys: list               # config columns, varied ones first
    varied: list                    # keys that vary across the plan, seed included, in plan order
    metrics: list                   # numeric final-metric columns of `runs`
    lists: dict                     # run_id -> {metric: list} for list-valued final metrics
    warnings: list = field(default_factory=list)   # (kind, text)
    nonfinite: dict = field(default_factory=dict)  # metric column -> run_ids whose value is NaN / inf
    all_runs: pd.DataFrame = None   # every stage's runs (`runs` holds the analysed stage's: see `stage`)
    stage: str = ""                 # the stage the summary and figures describe ("" : the only one)

    def warn(self, kind, text):
        self.warnings.append((kind, text))


def read_json(path):
    """(parsed object, None) or (None, why it could not be read); (None, None) when missing."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, f"{type(e).__name__}: {e}"
    try:
        return json.loads(data), None
    except ValueError as e:
        return None, f"{type(e).__name__}: {e}" if data.strip() else "empty file"


def read_yaml(path):
    try:
        text = Path(path).read_text(encoding="utf-8")
        if text.startswith("{"):
            try:
                return json.loads(text), None           # JSON is YAML, and much faster to read
            except ValueError:
                pass
        return yaml.load(text, Loader=_Loader), None
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError, yaml.YAMLError) as e:
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _cell(v):
    """A config value as a table cell: scalars as they are, lists and mappings as JSON text."""
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return json.dumps(v, sort_keys=True, default=str)


def finite_back(v):
    """A result.json value with "nan" / "inf" / "-inf" (how non-finite numbers are stored) as floats."""
    if isinstance(v, str) and v in atomic.NON_FINITE:
        return atomic.NON_FINITE[v]
    return v


def _flatten(metrics, prefix=""):
    for k, v in metrics.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def load(sweep_dir, analysis=None) -> Sweep:
    """Read a sweep dir (complete or not) into a Sweep; problems land in Sweep.warnings.

    `analysis`: an `analysis:` block that replaces the one in the sweep dir's spec.yaml."""
    sweep_dir = SweepDir(sweep_dir)
    sdir = sweep_dir.path
    warnings = []
    spec, err = read_yaml(sweep_dir.spec)
    if err or not isinstance(spec, dict):
        if analysis is None:
            warnings.append(("spec", f"spec.yaml: {'unreadable (' + err + ')' if err else 'missing or not a mapping'}; "
                                     f"using the default analysis"))
        spec = {}
    block = spec.get("analysis") if analysis is None else analysis
    for path, message in schema.check(block):
        warnings.append(("spec", f"spec.yaml: analysis{'.' + path if path and not path.startswith('[') else path}: "
                                 f"{message}; ignored"))
    analysis = schema.normalize(block)

    plan, err = read_json(sweep_dir.plan)
    planned = []
    if err or (plan is not None and not isinstance(plan, dict)):
        warnings.append(("plan", f"plan.json: unreadable ({err or 'not a mapping'}); planned runs are taken "
                                 f"from the run dirs, so missing runs cannot be counted"))
    elif plan:
        planned = [r for r in plan.get("runs") or [] if isinstance(r, dict) and r.get("run_id")]

    on_disk = sweep_dir.run_dirs()
    in_plan = {r["run_id"] for r in planned}
    entries = [(r, True) for r in planned]
    for rid in on_disk:
        if rid in in_plan:
            continue
        cfg, err = read_yaml(sweep_dir.run(rid).config)
        if err or not isinstance(cfg, dict):
            if err or cfg is not None:
                warnings.append(("config", f"runs/{rid}/config.yaml: unreadable ({err or 'not a mapping'}); run skipped"))
            continue
        entries.append(({"run_id": rid, "label": cfg.get("label", rid), "config": cfg.get("config") or {},
                         "varied": cfg.get("varied") or {}}, not planned))
    on_disk = set(on_disk)

    varied, config_keys = {}, {}
    rows, lists, metric_order = [], {}, {}
    for entry, planned_run in entries:
        rid = str(entry["run_id"])
        cfg = entry.get("config") if isinstance(entry.get("config"), dict) else {}
        for k in entry.get("varied") or {}:
            varied.setdefault(k, None)
        for k in cfg:
            config_keys.setdefault(k, None)
        row = {"run_id": rid, "label": entry.get("label") or rid, "in_plan": planned_run,
               "stage": str(entry.get("stage") or "")}
        if rid in on_disk and planned_run:
            frozen, err = read_yaml(sweep_dir.run(rid).config)
            if isinstance(frozen, dict) and isinstance(frozen.get("config"), dict):
                cfg = frozen["config"]           # what ran, not what the plan asks now
                for k in cfg:
                    config_keys.setdefault(k, None)
            elif err:
                warnings.append(("config", f"runs/{rid}/config.yaml: unreadable ({err}); config from plan.json"))
        # a later stage's run carries its upstream runs' varied values (model, seed...): columns too
        carried = {k: v for k, v in (entry.get("varied") or {}).items() if k not in cfg}
        for k in carried:
            config_keys.setdefault(k, None)
        row.update({f"config:{k}": _cell(v) for k, v in {**carried, **cfg}.items()})
        if rid in on_disk:
            result, err = read_json(sweep_dir.run(rid).result)
            if err is None and result is not None and not isinstance(result, dict):
                err = "not a JSON object"
            if err:
                warnings.append(("result", f"runs/{rid}/result.json ({row['label']}): unreadable ({err}); "
                                           f"the run counts as not finished"))
                row["state"] = CORRUPT
            if result is not None and not err:
                row["state"] = DONE
                row["attempts"] = result.get("attempts")
                row["wall_time_s"] = result.get("wall_time_s")
                row["finished"] = result.get("finished")
                if isinstance(result.get("search"), dict):      # a search trial: how far it trained
                    row["rung"], row["budget"] = result["search"].get("rung"), result["search"].get("budget")
                metrics = result.get("metrics")
                if not isinstance(metrics, dict):
                    warnings.append(("result", f"runs/{rid}/result.json ({row['label']}): no `metrics` mapping"))
                    metrics = {}
                for name, v in _flatten(metrics):
                    v = finite_back(v)
                    if isinstance(v, list):
                        v = [finite_back(x) for x in v]
                        lists.setdefault(rid, {})[name] = v
                        continue
                    metric_order.setdefault(name, None)
                    row[f"metric:{name}"] = float("nan") if v is None else v
                    if isinstance(v, float) and math.isnan(v):
                        row[f"nan:{name}"] = True
            elif not err:
                error_txt = sweep_dir.run(rid).error
                try:
                    text = error_txt.read_text(encoding="utf-8", errors="replace").strip()
                    row["state"] = FAILED
                    row["error"] = text.splitlines()[-1][:300] if text else ""
                except FileNotFoundError:
                    row["state"] = PENDING if sweep_dir.run(rid).config.exists() else NEW
                except OSError as e:
                    row["state"] = FAILED
                    row["error"] = f"error.txt unreadable: {e}"
        else:
            row["state"] = NEW
        rows.append(row)

    varied = _label_order(list(varied), entries)
    config_keys = [k for k in varied if k in config_keys] + [k for k in config_keys if k not in varied]
    all_runs, all_metrics = _frame(rows, config_keys, list(metric_order), [])
    diverged = np.zeros(len(all_runs), dtype=bool)
    for m in all_metrics:
        diverged |= np.isinf(all_runs[m].to_numpy(dtype=float)) | _logged_nan(rows, m)
    all_runs["diverged"] = diverged & (all_runs["state"] == DONE).to_numpy()
    # a pipeline: the summary and figures describe one stage (analysis.stage, else the last one)
    stages = [st.get("name") for st in (plan or {}).get("stages") or [] if isinstance(st, dict)] \
        if isinstance(plan, dict) else []
    stage = analysis.get("stage") or (stages[-1] if len(stages) > 1 else "")
    if stage:
        rows = [r for r in rows if r["stage"] == stage]
        if not rows:
            warnings.append(("spec", f"analysis.stage: no run of stage {stage!r}"
                                     f"{schema.did_you_mean(stage, stages)}; stages: {', '.join(stages)}"))
        present = {k for r in rows for k in r}
        config_keys = [k for k in config_keys if f"config:{k}" in present]
        varied = [k for k in varied if f"config:{k}" in present]
        metric_order = {m: None for m in metric_order if f"metric:{m}" in present}
    runs, metrics = _frame(rows, config_keys, list(metric_order), warnings)
    nonfinite = {}
    finite = np.ones(len(runs), dtype=bool)
    for m in metrics:
        col = runs[m].to_numpy(dtype=float)
        bad = np.isinf(col) | _logged_nan(rows, m)
        if bad.any():
            nonfinite[m] = set(runs["run_id"][bad])
        finite &= ~bad
    runs["diverged"] = (~finite) & (runs["state"] == DONE).to_numpy()
    analysis["group_by"] = _group_by(analysis, varied, runs, warnings)
    analysis["metrics"] = _metrics(analysis, metrics, runs, warnings)
    usage = _usage(sweep_dir, warnings)
    runs, all_runs = _with_usage(runs, usage), _with_usage(all_runs, usage)
    return Sweep(sdir, spec, analysis, runs, config_keys, varied, metrics, lists, warnings, nonfinite,
                 all_runs, stage)


def _usage(sweep_dir, warnings) -> dict:
    """run_id -> what the sweep's usage record (written by `usage` and `aggregate`) says it used."""
    record, err = read_json(sweep_dir.usage)
    if err:
        warnings.append(("usage", f"{sweep_dir.usage}: unreadable ({err}); no usage_ columns"))
    if not isinstance(record, dict) or not isinstance(record.get("runs"), list):
        return {}
    return {r["run_id"]: r for r in record["runs"] if isinstance(r, dict) and r.get("run_id") and r.get("source")}


def _with_usage(runs, usage: dict):
    """`runs` with a `usage_<figure>` column per figure of the usage record (elapsed_s, cpu_eff,
    max_rss_mb, req_mem_mb, gpu_hours, queue_wait_s, requeues...); none when there is no record."""
    if not usage:
        return runs
    keys = list(dict.fromkeys(k for r in usage.values() for k, v in r.items()
                              if k not in ("run_id", "label", "stage") and not isinstance(v, (list, dict))))
    extra = pd.DataFrame([{f"usage_{k}": usage.get(rid, {}).get(k) for k in keys} for rid in runs["run_id"]],
                         index=runs.index)
    for col in extra.columns:
        if col != "usage_source":
            extra[col] = pd.to_numeric(extra[col], errors="coerce")
    return pd.concat([runs, extra], axis=1)


def _logged_nan(rows, metric) -> np.ndarray:
    """Per row: the run's result reported this metric as NaN (not: the metric is missing)."""
    name = metric[len("metrics."):] if metric.startswith("metrics.") and not any(
        f"nan:{metric}" in r for r in rows) else metric
    return np.array([bool(r.get(f"nan:{name}")) for r in rows], dtype=bool)


def _label_order(varied, entries):
    """The varied keys in the order the spec gives them, read off the labels (`method=bp,k=2,seed=1`):
    plan.json is written with sorted keys, labels keep the spec's order."""
    order = {}
    for entry, _ in entries[:50]:
        for part in str(entry.get("label") or "").split(","):
            key = part.split("=", 1)[0]
            if key in varied:
                order.setdefault(key, None)
    return list(order) + [k for k in varied if k not in order]


def _frame(rows, config_keys, metric_names, warnings):
    """The runs table with plain column names: config keys as they are, metrics renamed on a clash."""
    taken = set(BASE_COLUMNS) | set(SEARCH_COLUMNS) | {"error", "in_plan"} | set(config_keys)
    rename, metrics = {}, []
    for name in metric_names:
        col = name if name not in taken else f"metrics.{name}"
        if col != name:
            warnings.append(("metric", f"final metric {name!r} has the name of a config key or column; "
                                       f"it is `{col}` in the tables"))
        rename[f"metric:{name}"] = col
        metrics.append(col)
    rename.update({f"config:{k}": k for k in config_keys})
    searched = SEARCH_COLUMNS if any("rung" in r for r in rows) else []
    columns = (BASE_COLUMNS + searched + [f"config:{k}" for k in config_keys] + [f"metric:{m}" for m in metric_names]
               + ["error", "in_plan"])
    runs = pd.DataFrame.from_records(rows, columns=columns).rename(columns=rename)
    for col in searched:
        runs[col] = pd.to_numeric(runs[col], errors="coerce").astype("Int64")
    runs["attempts"] = pd.to_numeric(runs["attempts"], errors="coerce").astype("Int64")
    runs["wall_time_s"] = pd.to_numeric(runs["wall_time_s"], errors="coerce").astype(float)
    runs["in_plan"] = runs["in_plan"].astype(bool)
    numeric = []
    for m in metrics:
        col = runs[m]
        as_num = pd.to_numeric(col.map(lambda v: float(v) if isinstance(v, bool) else v), errors="coerce")
        if as_num.notna().sum() == col.notna().sum() and col.notna().any():
            runs[m] = as_num.astype(float)
            numeric.append(m)
    return runs, numeric


def _group_by(analysis, varied, runs, warnings):
    keys = analysis["group_by"]
    if keys is None:
        return [k for k in varied if k != SEED]
    out = []
    for k in keys:
        if k in runs.columns:
            out.append(k)
        else:
            options = [c for c in runs.columns if c not in ("run_id", "label", "state", "error", "in_plan")]
            warnings.append(("spec", f"analysis.group_by: {k!r} is no config key of this sweep"
                                     f"{schema.did_you_mean(k, options)}; ignored"))
    return out


def _metrics(analysis, metrics, runs, warnings):
    wanted = analysis["metrics"]
    explicit = wanted is not None
    wanted = wanted if explicit else list(metrics)
    out = []
    done = runs["state"] == DONE
    for m in wanted:
        if m not in runs.columns:
            if done.any():
                warnings.append(("metric", f"analysis.metrics: {m!r} is in no result.json"
                                           f"{schema.did_you_mean(m, metrics)}; known: {', '.join(metrics) or 'none'}"))
            continue
        if m not in metrics and m not in ("wall_time_s", "attempts"):
            warnings.append(("metric", f"analysis.metrics: {m!r} is not a number in every result; left out"))
            continue
        missing = runs.loc[done, m].isna()
        if missing.any():
            labels = runs.loc[done, "label"][missing]
            warnings.append(("metric", f"metric {m!r} is missing from {int(missing.sum())} of {int(done.sum())} "
                                       f"finished runs (e.g. {labels.iloc[0]}); their groups have a smaller n"))
        out.append(m)
    return out


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v))
