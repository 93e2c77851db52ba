"""hpcsweep: YAML sweep specs -> checkpointed, auto-resuming cluster jobs -> tables and figures.

    python main.py plan sweeps/depth_ladder_digits.yaml          # which runs the spec means
    python main.py submit sweeps/depth_ladder_digits.yaml --wait # run them (SLURM, or locally)
    python main.py status sweeps/depth_ladder_digits.yaml        # what state each run is in
    python main.py aggregate sweeps/depth_ladder_digits.yaml     # tables and figures

Run from the repository root, or anywhere as `hpcsweep` after `pip install -e .`; COMMAND --help says more.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from jobs import spec as specs
from jobs.store import RunState, SweepDir

# how the user runs us, for the commands our hints print: the console script or the file
PROG = "hpcsweep" if Path(sys.argv[0]).name == "hpcsweep" else "python main.py"


def _load(args):
    """The sweep the command is about: from a spec file, or from a sweep dir's frozen spec.yaml (read
    with the folder of the spec it was submitted from, where its task files are). A sweep dir given
    is remembered in args.sweep_dir: it is where the sweep is, whatever --root says."""
    import dataclasses
    from jobs.store import project_top, registry
    target = Path(args.spec)
    args.sweep_dir = None
    spec_dir = original = None
    if target.is_dir():
        sweep_dir = SweepDir(target.resolve())
        if not sweep_dir.spec.is_file():
            raise specs.SpecError(f"{target}: a folder, but not a sweep dir (no {sweep_dir.spec.name}); "
                                  "give a sweep spec, e.g. sweeps/depth_ladder_digits.yaml, or a sweep dir")
        original = sweep_dir.read_plan().get("spec")
        spec_dir = Path(original).parent if original else sweep_dir.path
        args.sweep_dir, spec_file = sweep_dir, sweep_dir.spec
    elif target.is_file():
        spec_file = target
    else:
        raise specs.SpecError(f"{target}: file not found (a sweep spec, e.g. sweeps/depth_ladder_digits.yaml, or a sweep dir)")
    try:
        names = registry.read(registry.path(project_top(spec_dir or spec_file)))
    except registry.RegistryError as e:
        raise specs.SpecError(str(e))
    sweep = specs.load_sweep(spec_file, max_runs=getattr(args, "max_runs", None), registry=names,
                             overrides=getattr(args, "set", None) or (), spec_dir=spec_dir)
    if args.sweep_dir is not None and original:
        sweep = dataclasses.replace(sweep, path=Path(original))     # its project, profiles and task files
    return sweep


def _selected(args, sweep) -> list:
    """The runs --only / --stage name (every run when neither is given)."""
    return specs.select(sweep, getattr(args, "only", None) or (), getattr(args, "stage", None))


def _chosen(args, sweep):
    """The run ids --only / --stage name, or None when neither narrows the sweep."""
    if not (getattr(args, "only", None) or getattr(args, "stage", None)):
        return None
    return {r.run_id for r in _selected(args, sweep)}


# ---------------------------------------------------------------- plan

def cmd_plan(args) -> int:
    sweep = _load(args)
    sweep_dir = _sweep_dir(args, sweep)
    exists = sweep_dir.exists()
    if exists:
        from jobs.sched import submit
        states = submit.states(sweep, sweep_dir)
    else:
        states = {}
    before = sweep_dir.previous_plan() if exists else {}
    changed = _changed_configs(sweep, sweep_dir) if exists else []
    now = {r.run_id for r in sweep.runs}
    shown = _selected(args, sweep)
    changes = {"added": [r.run_id for r in sweep.runs if r.run_id not in before],
               "removed": [rid for rid in before if rid not in now],
               "unchanged": [r.run_id for r in sweep.runs if r.run_id in before]}
    found = _cost(args, sweep, sweep_dir, states)
    if args.json:
        out = {"name": sweep.name, "task": sweep.task, "spec": str(sweep.path), "count": len(sweep.runs),
               "cost": found,
               "sweep_dir": str(sweep_dir), "exists": exists,
               "axes": sweep.axes,
               "stages": [{"name": st.name, "task": st.task, "after": st.after, "runs": len(st.runs)} for st in sweep.stages],
               "runs": [{"run_id": r.run_id, "label": r.label, "stage": r.stage, "config": r.config, "varied": r.varied,
                         **({"state": str(states[r.run_id])} if exists else {})} for r in shown]}
        if exists:
            out["changes"] = {**changes, "config_changed": [r.run_id for r in changed]}
        if _schedules(sweep):
            out["search"] = _schedules(sweep)
        json.dump(out, sys.stdout, indent=1, default=list)
        print()
        return 0

    if len(sweep.stages) > 1:
        print(f"sweep {sweep.name} from {sweep.path}: {len(sweep.runs)} runs in {len(sweep.stages)} stages")
        for st in sweep.stages:
            source = f" after {st.after}" if st.after else (f" from {', '.join(st.from_manifest)}" if st.from_manifest else "")
            print(f"  stage {st.name}: {len(st.runs)} runs of task {st.task}{source}")
    else:
        print(f"sweep {sweep.name} (task {sweep.task}) from {sweep.path}: {len(sweep.runs)} runs")
    if sweep.axes:
        width = max(len(k) for k in sweep.axes)
        print("axes:")
        for key, values in sweep.axes.items():
            print(f"  {key:<{width}}  {', '.join(specs.format_value(list(v) if isinstance(v, tuple) else v) for v in values)}")
    if _schedules(sweep):
        from jobs.search import engine
        for s in _schedules(sweep):
            print("\n".join(engine.schedule_lines(s)))
    if exists:
        counts = {}
        for s in states.values():
            counts[s] = counts.get(s, 0) + 1
        print(f"sweep dir {sweep_dir}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        print(f"since the last submit: {len(changes['added'])} added, {len(changes['removed'])} removed, "
              f"{len(changes['unchanged'])} unchanged")
    else:
        print(f"sweep dir {sweep_dir}: not created yet (submit creates it)")
    print()
    lw = max([5] + [len(r.label) for r in shown])
    staged = len(sweep.stages) > 1
    sw = max(len(st.name) for st in sweep.stages) if staged else 0
    header = f"{'#':>5}  " + (f"{'stage':<{sw}}  " if staged else "") + f"{'label':<{lw}}  run_id"
    print(header + ("        state" if exists else ""))
    number = {r.run_id: i for i, r in enumerate(sweep.runs, 1)}
    for r in shown:
        i = number[r.run_id]
        line = f"{i:>5}  " + (f"{r.stage:<{sw}}  " if staged else "") + f"{r.label or '(single run)':<{lw}}  {r.run_id}"
        if exists:
            line += f"  {states[r.run_id]}"
        print(line)
    if changed:
        print(f"\n{len(changed)} runs ran with values the spec no longer resolves to (a task default changed?): "
              + ", ".join(r.label or r.run_id for r in changed[:10]) + (" ..." if len(changed) > 10 else "")
              + f"\n  their results describe what ran; rerun them with: {PROG} submit {_named(args)} "
              + " ".join(f"--force {r.run_id}" for r in changed[:10]))
    if exists and changes["removed"]:
        print(f"\nremoved since the last submit ({len(changes['removed'])}): "
              + ", ".join(before[rid] or rid for rid in changes["removed"][:20])
              + (" ..." if len(changes["removed"]) > 20 else ""))
    from jobs.sched import usage
    lines = usage.cost_lines(found)
    if lines:
        print("\ncost:\n" + "\n".join(f"  {line}" for line in lines))
    return 0


def _cost(args, sweep, sweep_dir, states) -> dict:
    """usage.cost for plan: from the runs done so far in this sweep; SLURM's expected start where sbatch is."""
    from jobs.sched import slurm, usage
    try:
        profile = slurm.load_profile(getattr(args, "cluster", None), getattr(args, "profiles", None), spec=sweep.path)
    except slurm.ProfileError:
        profile = None
    probe, notes = _probe(sweep, sweep_dir, states, args.probe) if getattr(args, "probe", None) else (None, [])
    found = usage.cost(sweep, sweep_dir, states if sweep_dir.exists() else {}, profile, probe)
    found["notes"] = notes
    return found


def _probe(sweep, sweep_dir, states, seconds) -> tuple:
    """plan --probe S: one run not done of each stage runs here for at most S seconds, in a scratch
    sweep dir deleted after (the sweep dir is not touched); ({stage: seconds per run}, notes)."""
    import shutil
    import tempfile
    import time
    from jobs.runtime import context, runner  # noqa: F401  (torch imported before the clock starts)
    from jobs.sched import submit, usage
    from jobs.store import atomic
    out, notes = {}, []
    for stage in sweep.stages:
        run = next((r for r in stage.runs if states.get(r.run_id) != RunState.DONE), None)
        if run is None or any(states.get(r.run_id) == RunState.DONE for r in stage.runs):
            continue                     # nothing left, or finished runs give the basis already
        if submit.resources_of(sweep, stage).world_size > 1:
            notes.append(f"stage {stage.name}: a distributed run is not probed here; submit some runs first")
            continue
        scratch = SweepDir(Path(tempfile.mkdtemp(prefix="hpcsweep-probe-")) / sweep.name)
        try:
            submit.prepare(sweep, scratch, submit.new_submission_id(), runs=[run], code=False)
            res = submit.resources_of(sweep, stage)
            started = time.time()
            outcome = runner.run_any(scratch.path, run.run_id, gpus=res.gpus, cpus=res.cpus,
                                     checkpoint=submit.checkpoint_of(sweep, stage).for_context(),
                                     deadline=started + seconds, margin_s=0.0)
            took, why = usage.probed_seconds(started, atomic.read_jsonl(scratch.run(run.run_id).metrics), time.time(),
                                             outcome == "done")
        finally:
            shutil.rmtree(scratch.path.parent, ignore_errors=True)
        if outcome not in ("done", "interrupted"):
            notes.append(f"probe of {run.label or run.run_id} ({stage.name}): {outcome}; `{PROG} run` it to see why")
        elif took is None:
            notes.append(f"probe of {run.label or run.run_id} ({stage.name}): {why}")
        else:
            out[stage.name] = took
    return out, notes


def _changed_configs(sweep, sweep_dir) -> list:
    """Runs whose frozen config.yaml differs from the config the spec resolves to now (a task's
    default changed: run ids leave defaults out, so the id stayed while the values moved)."""
    out = []
    for r in sweep.runs:
        run_dir = sweep_dir.run(r.run_id)
        try:
            if not run_dir.config.exists():
                continue
            frozen = run_dir.read_config()["config"]
        except (OSError, ValueError, KeyError):      # unreadable: its state says so
            continue
        if frozen != r.config:
            out.append(r)
    return out


# ---------------------------------------------------------------- submit / resume / status / cancel / run

def _sweep_dir(args, sweep) -> SweepDir:
    """The sweep dir: the one given as the target, else under --root / the cluster profile's root."""
    if getattr(args, "sweep_dir", None) is not None:
        return args.sweep_dir
    profile_root = None
    if getattr(args, "cluster", None) or os.environ.get("HPCSWEEP_CLUSTER"):
        from jobs.sched import slurm
        try:
            profile_root = slurm.load_profile(getattr(args, "cluster", None), getattr(args, "profiles", None),
                                              spec=sweep.path).root
        except slurm.ProfileError as e:
            raise specs.SpecError(str(e))
    # absolute (SweepDir makes every path so): a job runs in another working directory
    return SweepDir.under(args.root, sweep.name, profile_root, spec=sweep.path)


def _named(args) -> str:
    """How the user named the sweep, with the flags that locate it: repeated in every hint."""
    import shlex
    out = [str(args.spec)]
    for flag in ("root", "cluster", "profiles"):
        if getattr(args, flag, None):
            out += [f"--{flag}", str(getattr(args, flag))]
    for item in getattr(args, "set", None) or ():
        out += ["--set", item]
    return " ".join(shlex.quote(x) for x in out)


def cmd_submit(args, retry_failed=False) -> int:
    from jobs.runtime.runner import PackJob
    from jobs.sched import submit
    sweep = _load(args)
    sweep_dir = _sweep_dir(args, sweep)
    try:
        forced = [r for name in args.force or () for r in specs.select(sweep, [name])]
        entry = submit.submit(sweep, sweep_dir, job_class=PackJob, executor=args.executor, force=forced,
                              retry_failed=retry_failed or getattr(args, "retry_failed", False),
                              cluster=args.cluster, profiles=args.profiles, only=_chosen(args, sweep))
    except submit.SubmitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"sweep dir: {sweep_dir}")
    if args.wait:
        return _wait(sweep, sweep_dir, _named(args))
    if entry and entry.get("executor") != "debug":
        print(f"watch it: {PROG} status {_named(args)}")
    return 0


def cmd_resume(args) -> int:
    args.force = None
    return cmd_submit(args, retry_failed=args.retry_failed)


WAIT_SHARE = 0.02     # --wait sleeps long enough between looks to use at most this share of a core


def _wait(sweep, sweep_dir, named) -> int:
    """Show progress until no run of the sweep is in flight; non-zero unless every run is done."""
    import time
    from jobs.sched import progress, submit
    tty = sys.stderr.isatty()
    last, last_print = None, 0.0
    watch = progress.Watch(sweep, sweep_dir, submit.states)
    try:
        while True:
            spent = sum(os.times()[:4])          # ours and sacct's
            st = watch.refresh()
            counts = submit.count(st.values())
            if not counts.get(RunState.IN_FLIGHT):
                st = watch.full()                # what ends the wait is read in full
                counts = submit.count(st.values())
            spent = sum(os.times()[:4]) - spent
            line = _bar(counts, len(st))
            if tty:
                print("\r" + line, end="", file=sys.stderr, flush=True)
            elif line != last and time.time() - last_print > 5 or not counts.get(RunState.IN_FLIGHT):
                print(line, file=sys.stderr, flush=True)
                last_print = time.time()
            last = line
            if not counts.get(RunState.IN_FLIGHT):
                break
            time.sleep(max(1.0, spent / WAIT_SHARE))
    except KeyboardInterrupt:
        print(f"\nstopped waiting; the jobs keep running. Watch them: {PROG} status {named}"
              f" (or stop them: {PROG} cancel {named})", file=sys.stderr)
        return 130
    if tty:
        print(file=sys.stderr)
    unfinished = len(st) - counts.get(RunState.DONE, 0)
    if unfinished:
        print(f"{unfinished} of {len(st)} runs did not finish ({submit.describe(counts)})\n"
              + progress.next_step(counts, named, PROG))
    return 1 if unfinished else 0


def _bar(counts, total, width=30):
    done = counts.get(RunState.DONE, 0)
    filled = int(width * done / max(total, 1))
    rest = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if s != RunState.DONE)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} done" + (f", {rest}" if rest else "")


def cmd_status(args) -> int:
    import shutil
    from jobs.sched import progress, submit
    sweep = _load(args)
    sweep_dir = _sweep_dir(args, sweep)
    if not sweep_dir.plan.exists():
        print(f"{sweep.name}: not submitted yet ({sweep_dir} does not exist)\nnext: {PROG} submit {_named(args)}")
        return 0
    if args.wait and _wait(sweep, sweep_dir, _named(args)) == 130:
        return 130
    selected = _selected(args, sweep)
    seen = progress.look(sweep, sweep_dir, selected)
    st = seen.states
    counts = submit.count(st[r.run_id] for r in selected)
    by_state = progress.counts(seen, selected)

    def row(r):
        return _row(progress, sweep_dir, r, st[r.run_id], seen.failures.get(r.run_id, ""),
                    seen.notes.get(r.run_id, ""), seen.places.get(r.run_id))
    if args.json:
        json.dump({"name": sweep.name, "sweep_dir": str(sweep_dir.path), "runs_total": len(sweep.runs),
                   "counts": by_state, **({"search": _searches(sweep, sweep_dir)} if _searches(sweep, sweep_dir) else {}), "runs": [{k: v for k, v in row(r).items() if k not in ("shown",)} for r in selected]},
                  sys.stdout, indent=1, default=str)
        print()
        return 0
    chosen = "" if len(selected) == len(sweep.runs) else f" (of {len(sweep.runs)})"
    print(f"{sweep.name}: {len(selected)} runs{chosen}: {progress.describe(by_state)}")
    if len(sweep.stages) > 1 and not args.stage:
        for stage in sweep.stages:
            print(f"  stage {stage.name}: {progress.describe(progress.counts(seen, [r for r in selected if r.stage == stage.name]))}")
    for line in _search_lines(sweep, sweep_dir):
        print(line)
    size = shutil.get_terminal_size((120, 40))
    order = {RunState.FAILED: 0, RunState.CORRUPT: 0, RunState.UNREADABLE: 0, RunState.IN_FLIGHT: 1, RunState.BLOCKED: 2,
             RunState.STALE: 2, RunState.PENDING: 2, RunState.NEW: 3, RunState.DONE: 4}
    shown = selected if args.all else [selected[i] for i in sorted(sorted(
        range(len(selected)), key=lambda i: order.get(st[selected[i].run_id], 5))[:max(5, size.lines - 8)])]
    # a row reads the run's files: only for the runs shown (a 10,000-run sweep shows a screenful)
    # cut to the terminal's width at a terminal; whole rows into a pipe or a file (grep, scripts, logs)
    print(progress.table([row(r) for r in shown], size.columns if sys.stdout.isatty() else 1_000))
    if len(shown) < len(selected):
        print(f"... {len(selected) - len(shown)} more runs (--all shows every run)")
    print(progress.next_step(counts, _named(args), PROG))
    return 0


def _schedules(sweep) -> list:
    """Each search stage's rung schedule and budget (jobs/search/engine.py), before anything runs."""
    from jobs.search import engine
    return [engine.schedule(st.name, st.search, len(st.runs)) for st in sweep.stages if st.search]


def _searches(sweep, sweep_dir) -> list:
    """Each search stage's summary (jobs/search/engine.py): rungs, running and paused trials, the best."""
    from jobs.search import engine
    return [engine.summary(engine.Engine(sweep_dir, st.name, st.search, [r.run_id for r in st.runs]),
                           {r.run_id: r.label for r in st.runs}) for st in sweep.stages if st.search]


def _search_lines(sweep, sweep_dir) -> list:
    from jobs.search import engine
    return [line for s in _searches(sweep, sweep_dir) for line in engine.describe(s)]


def _row(progress, sweep_dir, run, state, failure, note, place=None) -> dict:
    """progress.run_row, or, where the run's files hold what it cannot make sense of (a hand edit, a
    foreign tool), that run with the error: one odd run dir never hides the rest of the sweep."""
    try:
        return progress.run_row(sweep_dir, run, state, failure, note, place)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        return {"label": run.label or run.run_id, "run_id": run.run_id, "state": str(state), "shown": str(state),
                "job_id": "", "attempts": "?", "progress": "", "rate": "", "eta": "", "elapsed": "",
                "error": f"cannot read {sweep_dir.run(run.run_id).path}: {type(e).__name__}: {e}"}


def cmd_cancel(args) -> int:
    from jobs.sched import submit
    sweep = _load(args)
    try:
        submit.cancel(_sweep_dir(args, sweep), runs=_chosen(args, sweep))
    except submit.SubmitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_run(args) -> int:
    from jobs.runtime import runner
    from jobs.sched import submit
    sweep = _load(args)
    run = _one_run(args, sweep, "run")
    if run is None:
        return 2
    sweep_dir = _sweep_dir(args, sweep)
    submit.prepare(sweep, sweep_dir, submit.new_submission_id(), runs=[run])     # this run's files only
    res, ckpt = submit.resources_of(sweep), submit.checkpoint_of(sweep)
    stop = runner.Stop()
    stop.install()                  # USR2 / TERM: the run checkpoints and stops, as in a job
    debug = args.pdb and sys.stdin.isatty()
    if args.pdb and not debug:
        print("note: --pdb needs a terminal (stdin is not one): the error is recorded, no debugger", file=sys.stderr)
    try:
        outcome = runner.run_any(sweep_dir.path, run.run_id, world_size=res.world_size, stop=stop, gpus=res.gpus,
                                 cpus=res.cpus, checkpoint=ckpt.for_context(), margin_s=ckpt.margin_s_for(res.time_min),
                                 reraise=debug)
    except Exception:       # only with --pdb at a terminal: error.txt is written, the lock let go
        import pdb
        import traceback
        traceback.print_exc()
        print("\n--pdb: post-mortem in the frame that raised (p NAME shows a variable, up/down move, q leaves)",
              file=sys.stderr)
        pdb.post_mortem(sys.exc_info()[2])
        outcome = "failed"
    run_dir = sweep_dir.run(run.run_id)
    if outcome != "done" and run_dir.error.exists():
        tail = run_dir.error.read_text(errors="replace").rstrip().splitlines()[-8:]
        print("\n".join(["the run's error (" + str(run_dir.error) + "):"] + ["  " + line for line in tail]), file=sys.stderr)
    print(f"{run.label or run.run_id}: {outcome} ({run_dir.path})")
    return 0 if outcome == "done" else 1


def _one_run(args, sweep, command):
    """The one run --only / --stage name (a one-run sweep needs neither); None after saying why not."""
    runs = _selected(args, sweep)
    if len(runs) == 1:
        return runs[0]
    listed = ", ".join(r.label or r.run_id for r in runs[:6]) + (" ..." if len(runs) > 6 else "")
    given = " ".join([f"--only {o}" for o in args.only or ()] + ([f"--stage {args.stage}"] if args.stage else []))
    what = (f"{len(runs)} match {given} ({listed}): narrow it with --only" if given
            else f"the sweep has {len(runs)} runs ({listed}): name one with --only")
    print(f"error: {command} takes one run; {what}; `{PROG} plan {_named(args)}` lists them "
          "(--only takes a run_id, a label, or key=value pairs in any order)", file=sys.stderr)
    return None


FOLLOW_POLL_S = 0.5      # logs --follow reads new lines this often; asks the scheduler at most every 2 s (cached)


def cmd_logs(args) -> int:
    """Print the output of the run's current (or last) job; --follow: as it grows, until the run ends."""
    import time
    from jobs.sched import progress
    sweep = _load(args)
    run = _one_run(args, sweep, "logs")
    if run is None:
        return 2
    sweep_dir = _sweep_dir(args, sweep)

    def current():
        seen = progress.look(sweep, sweep_dir, [run])
        place = seen.places.get(run.run_id) or {}
        starts = sweep_dir.run(run.run_id).starts()
        job = place.get("job_id") or (str(starts[-1].get("job_id") or "") if starts else "")
        return job, seen.states[run.run_id] == RunState.IN_FLIGHT
    job, flying = current()
    if args.metrics:
        job = job or "-"                     # the run's own file: no job needed to read it
    if not job:
        print(f"error: {run.label or run.run_id} has no job yet ({'queued' if flying else 'never started'}); "
              f"`{PROG} status {_named(args)}` says where it is", file=sys.stderr)
        return 2 if not (flying and args.follow) else _follow_start(args, current)
    offset, shown = 0, None
    while True:
        path = sweep_dir.run(run.run_id).metrics if args.metrics else sweep_dir.job_log(job, args.err)
        if path != shown:                    # a chained job: its own file, from its start
            if shown is not None:
                print(f"--- job {job} ({path})", file=sys.stderr)
            shown, offset = path, 0
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
                offset += len(data)
        except FileNotFoundError:
            data = b""
        if data:
            sys.stdout.write(data.decode("utf-8", errors="replace"))
            sys.stdout.flush()
        if not args.follow:
            if shown is not None and not path.exists():
                print(f"error: {path}: nothing logged yet" + ("" if args.metrics else f" (job {job})"), file=sys.stderr)
                return 1
            return 0
        job_now, flying = current()
        if not flying and not data:          # ended, and everything it wrote is printed
            return 0
        job = job_now or job
        time.sleep(FOLLOW_POLL_S)


def _follow_start(args, current) -> int:
    """logs --follow of a queued run: wait for its job to start, then follow it."""
    import time
    while True:
        job, flying = current()
        if job or not flying:
            return cmd_logs(args) if job else 0
        time.sleep(1.0)


def cmd_watch(args) -> int:
    """A live view, rebuilt from one scheduler look per refresh, until Ctrl-C."""
    import time
    from rich.console import Console
    from rich.live import Live
    from jobs.sched import progress, slurm
    sweep = _load(args)
    sweep_dir = _sweep_dir(args, sweep)
    runs = _selected(args, sweep)
    every = args.every
    if every is None:
        try:
            every = slurm.load_profile(args.cluster, args.profiles, spec=sweep.path).watch_every_s
        except slurm.ProfileError as e:
            raise specs.SpecError(str(e))
    if not sweep_dir.plan.exists():
        print(f"{sweep.name}: not submitted yet ({sweep_dir} does not exist)\nnext: {PROG} submit {_named(args)}")
        return 0
    console = Console()

    def frame(n):
        with slurm.poll.one_look():            # one squeue and one sacct call for all the view shows
            seen = progress.look(sweep, sweep_dir, runs)
        return progress.live_view(sweep, sweep_dir, seen, runs, console.width,
                                  f"refresh {n}, {time.strftime('%H:%M:%S')}, every {every:g} s; Ctrl-C leaves")
    n = 1
    try:
        # auto_refresh off: the screen changes only when we have read anew (a plain ssh terminal gets
        # one redraw per refresh, nothing in between)
        with Live(frame(n), console=console, auto_refresh=False, transient=False) as live:
            live.refresh()
            while True:
                time.sleep(every)
                n += 1
                live.update(frame(n), refresh=True)
    except KeyboardInterrupt:
        pass
    print(f"left the view; the jobs keep running ({PROG} status {_named(args)})")
    return 0


def cmd_export(args) -> int:
    """Register one run's checkpoint under a name in checkpoints_manifest.yaml."""
    from jobs.runtime import checkpoint
    from jobs.store import now_iso, project_top, registry
    sweep = _load(args)
    sweep_dir = _sweep_dir(args, sweep)
    run = _one_run(args, sweep, "export")
    if run is None:
        return 2
    run_dir = sweep_dir.run(run.run_id)
    steps = checkpoint.list_steps(run_dir.checkpoints)
    step = args.step if args.step is not None else (steps[-1] if steps else None)
    path = checkpoint.ckpt_path(run_dir.checkpoints, step) if step is not None else None
    # pinned before it is registered: a run still training never deletes it by retention
    digest = checkpoint.pin(run_dir.checkpoints, step, args.name) if path is not None else None
    if digest is None:
        print(f"error: {run.label or run.run_id}: no valid checkpoint" + (f" at step {step}" if step is not None else "")
              + f" in {run_dir.checkpoints} (kept: {steps or 'none'})", file=sys.stderr)
        return 2
    entry = {"sweep": sweep.name, "sweep_dir": str(sweep_dir.path.resolve()), "stage": run.stage, "run_id": run.run_id,
             "label": run.label, "task": run.task, "varied": run.varied, "run_dir": str(run_dir.path.resolve()),
             "step": int(step), "path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": digest,
             "done": run_dir.result.exists(), "exported": now_iso()}
    try:
        where = registry.register(args.name, entry, replace=args.replace, where=registry.path(project_top(args.spec)))
    except registry.RegistryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"registered {args.name}: {run.label or run.run_id} step {step} ({entry['bytes']:,} bytes, sha256 {digest[:12]}) "
          f"in {where}\nuse it in a stage: from_manifest: {args.name}")
    return 0


# ---------------------------------------------------------------- usage

def cmd_usage(args) -> int:
    """What each run used (sacct on SLURM, the jobs' own measurement locally) and what to change."""
    import shutil
    from jobs.sched import progress, usage
    sweep = _load(args)
    sweep_dir = _sweep_dir(args, sweep)
    if not sweep_dir.exists():
        print(f"{sweep.name}: not submitted yet ({sweep_dir} does not exist)\nnext: {PROG} submit {_named(args)}")
        return 0
    chosen = _chosen(args, sweep)
    out = usage.collect(sweep, sweep_dir, None if chosen is None else [r for r in sweep.runs if r.run_id in chosen])
    if args.json:
        json.dump(out, sys.stdout, indent=1, default=str)
        print()
        return 0
    print(f"{sweep.name}: {progress.usage_totals(out['sweep'])}")
    if out.get("scheduler_error"):
        print(f"(sacct could not be asked, the jobs' own measurements stand in: {out['scheduler_error']})")
    width = shutil.get_terminal_size((120, 40)).columns if sys.stdout.isatty() else 1_000   # whole rows into a pipe
    print(progress.usage_table([r for r in out["runs"] if r["source"]], width))
    for line in out["suggestions"]:
        print(f"suggestion: {line}")
    return 0


# ---------------------------------------------------------------- aggregate

def cmd_aggregate(args) -> int:
    from analysis.aggregate import FigureErrors, aggregate
    target = Path(args.spec)
    analysis, runs = None, None
    if not target.exists():
        print(f"error: {target}: file not found (give a sweep spec or a sweep dir)", file=sys.stderr)
        return 2
    # a sweep dir is read as it is; its frozen spec is loaded (its task resolved) only to pick runs
    if target.is_file() or (SweepDir(target).spec.is_file() and (args.only or args.stage or args.set)):
        sweep = _load(args)
        sweep_dir = _sweep_dir(args, sweep)
        runs = _chosen(args, sweep)
        if target.is_file():
            analysis = sweep.spec.get("analysis")   # the spec file's `analysis:` as it is now (edited after submit too)
    else:                                 # a sweep dir (an old layout's too, without spec.yaml): read as it is
        sweep_dir = SweepDir(target)
    if not sweep_dir.is_sweep_dir():
        hint = "; submit the spec first" if target.is_file() else " (no spec.yaml, plan.json or runs/)"
        print(f"error: {sweep_dir} is not a sweep dir{hint}", file=sys.stderr)
        return 2
    _record_usage(args, sweep_dir, locals().get("sweep"))
    try:
        paths = aggregate(sweep_dir.path, out=args.out, formats=args.format, analysis=analysis,
                          spec_file=target if target.is_file() else None, runs=runs)
    except FigureErrors as e:            # a figure's spec is wrong; the tables and other figures are written
        for line in str(e).splitlines():           # one per figure
            print(f"error: {line}", file=sys.stderr)
        return 1
    except ValueError as e:              # --format names something unknown
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = next((Path(p) for p in paths if Path(p).name == "summary.md"), None)
    if args.show and table is not None and table.exists():
        print(f"\n{table}:\n{table.read_text()}", end="")
    return 0


def _record_usage(args, sweep_dir, sweep) -> None:
    """Before aggregate reads the sweep dir: its usage record read anew (sacct, the jobs' own
    measurements), so runs.csv and report.html carry it. A sweep whose spec cannot be loaded here
    keeps its last record; a scheduler that cannot be asked leaves the jobs' own measurements."""
    from jobs.sched import usage
    try:
        sweep = sweep or _load(args)
        usage.collect(sweep, sweep_dir)
    except (specs.SpecError, OSError, ValueError) as e:
        print(f"note: usage not read anew ({str(e).splitlines()[0][:200]})", file=sys.stderr)


# ---------------------------------------------------------------- parser

def cmd_init(args) -> int:
    """Write a starter clusters.yaml for the cluster this runs on, read off it (sinfo, scontrol, sacctmgr)."""
    import socket
    from jobs.sched import slurm
    from jobs.store import atomic, project_top
    out = Path(args.out) if args.out else project_top() / "clusters.yaml"
    if out.exists():
        print(f"error: {out} exists; init never overwrites (edit it, or pass --out ANOTHER_FILE)", file=sys.stderr)
        return 2
    try:
        text = slurm.starter_profiles(slurm.read_cluster(), socket.gethostname())
    except (slurm.SchedulerError, slurm.ProfileError) as e:
        print(f"error: cannot read this cluster ({e}); init runs on a login node of the cluster", file=sys.stderr)
        return 2
    atomic.write_text(out, text)
    name = text.split("\n\n", 1)[1].split(":", 1)[0]
    print(f"wrote {out} (profile {name}):\n\n{text}\nuse it: {PROG} submit SPEC --cluster {name}")
    return 0


class _Version(argparse.Action):
    """--version, asked of the installed package (or the checkout) only when given."""

    def __init__(self, option_strings, dest, help=None):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from jobs.sched.submit import about
        here = about()
        print(f"hpcsweep {here['version']}" + (f" (commit {here['commit'][:12]})" if here["commit"] else ""))
        parser.exit()


def _shared_flags() -> tuple:
    """The flags every command that reads a sweep takes, defined once (argparse parents=[...]):
    where the sweep is, and which of its runs the command is about."""
    where = argparse.ArgumentParser(add_help=False)
    group = where.add_argument_group("where the sweep is")
    group.add_argument("spec", metavar="SPEC", help="a sweep spec (sweeps/depth_ladder_digits.yaml) or a sweep dir "
                       "(then its frozen spec.yaml is read)")
    group.add_argument("--root", help="where sweep dirs live (default: $HPCSWEEP_ROOT, else the root of the cluster "
                       "profile named by --cluster or $HPCSWEEP_CLUSTER, else results/ at the top of the spec's git "
                       "checkout, or beside the spec)")
    group.add_argument("--cluster", help="cluster profile (default: $HPCSWEEP_CLUSTER, else local): its root holds "
                       "the sweep dir, its settings shape the jobs")
    group.add_argument("--profiles", metavar="FILE", help="cluster profiles file (default: $HPCSWEEP_CLUSTERS, else "
                       "clusters.yaml at the top of the spec's project, else ~/.config/hpcsweep/clusters.yaml)")
    group.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override the spec (repeatable): base.lr=0.01, resources.time_min=120, "
                            "grid.seed=[1,2], stages.1.base.iterations=100; values are YAML")
    which = argparse.ArgumentParser(add_help=False)
    group = which.add_argument_group("which runs")
    group.add_argument("--only", action="append", metavar="RUN",
                       help="a run: its run_id, its label, or key=value pairs in any order (lr=0.1,seed=2); "
                            "repeatable, a run matching any is taken")
    group.add_argument("--stage", help="the runs of this stage (a pipeline)")
    return where, which


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[2:]))
    p.add_argument("--version", action=_Version, help="hpcsweep's version (and commit, from a git checkout), then exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    where, which = _shared_flags()

    def add(name, help_, func, parents=(where, which)):
        sp = sub.add_parser(name, help=help_, description=help_, parents=list(parents))
        sp.set_defaults(func=func)
        return sp

    def max_runs(sp):
        sp.add_argument("--max-runs", type=int, help=f"cap on the number of runs (default: the spec's max_runs, "
                                                      f"else {specs.DEFAULT_MAX_RUNS:,})")

    sp = add("plan", "show which runs a spec means (and their state if the sweep dir exists); submits nothing", cmd_plan)
    sp.add_argument("--json", action="store_true", help="print an object with a `runs` list for scripts")
    sp.add_argument("--probe", type=float, metavar="S", help="time one unfinished run of each stage here for at most "
                    "S seconds (in a scratch dir) where no finished run gives the cost a basis")
    max_runs(sp)

    sp = add("submit", "submit every run that is neither done nor in flight (of --only / --stage: those); "
                       "returns at once unless --wait", cmd_submit)
    max_runs(sp)
    sp.add_argument("--executor", choices=["slurm", "local", "debug"],
                    help="slurm (default where sbatch is on PATH); local: subprocesses via submitit; debug: in-process")
    sp.add_argument("--force", action="append", metavar="RUN",
                    help="rerun this run even if done (a run_id, a label or key=value pairs; repeatable, one per flag); "
                         "its old dir is kept aside")
    sp.add_argument("--wait", action="store_true", help="show a progress bar until every run has finished")

    sp = add("resume", "resubmit unfinished runs (and failed ones with --retry-failed); --only: those runs", cmd_resume)
    max_runs(sp)
    sp.add_argument("--executor", choices=["slurm", "local", "debug"])
    sp.add_argument("--retry-failed", action="store_true", help="also resubmit runs whose task raised")
    sp.add_argument("--wait", action="store_true", help="show a progress bar until every run has finished")

    sp = add("status", "counts by state and a table of runs: where each is (queued and why, running where, how "
                       "fast), its job, progress, last error", cmd_status)
    max_runs(sp)
    sp.add_argument("--all", action="store_true", help="list every run, not only what fits the terminal")
    sp.add_argument("--json", action="store_true", help="print an object with the counts and a `runs` list for scripts")
    sp.add_argument("--wait", action="store_true", help="show a progress bar until no run is in flight, then the table")

    sp = add("cancel", "stop the sweep's jobs (--only: exactly those runs'); runs checkpoint and can be resumed", cmd_cancel)
    max_runs(sp)

    sp = add("run", "run one run in this process (for debugging), results in the sweep dir; --only names it", cmd_run)
    max_runs(sp)
    sp.add_argument("--pdb", action="store_true", help="post-mortem debugger in the failing frame (at a terminal)")

    sp = add("logs", "print a run's job output (its current attempt's, across requeues); --only names the run", cmd_logs)
    sp.add_argument("--err", action="store_true", help="the job's stderr (tracebacks, warnings) instead of its stdout")
    sp.add_argument("--metrics", action="store_true", help="the run's metrics lines (metrics.jsonl, every attempt) "
                                                          "instead of its job's output")
    sp.add_argument("--follow", "-f", action="store_true", help="keep printing lines as they come, until the run ends")

    sp = add("watch", "a live view of the sweep: counts by state per stage, running runs with rate and ETA, the "
                      "last errors; Ctrl-C leaves", cmd_watch)
    sp.add_argument("--every", type=float, metavar="S", help="seconds between refreshes (default: the cluster "
                    "profile's watch_every_s, else 10); each refresh asks the scheduler once")

    sp = add("export", "register one run's checkpoint by name in checkpoints_manifest.yaml (for `from_manifest:`)", cmd_export)
    max_runs(sp)
    sp.add_argument("--name", required=True, help="the name a later stage gives in `from_manifest:`")
    sp.add_argument("--step", type=int, help="the checkpoint's step (default: the newest valid one)")
    sp.add_argument("--replace", action="store_true", help="overwrite an entry of the same name")

    sp = sub.add_parser("init", help="write a starter clusters.yaml for the cluster this runs on (read off sinfo, "
                        "scontrol, sacctmgr); never overwrites", description=cmd_init.__doc__)
    sp.set_defaults(func=cmd_init)
    sp.add_argument("--out", help="where to write (default: clusters.yaml at the top of this project: the git checkout "
                                  "of the working directory, else the working directory)")

    sp = add("usage", "what each run used: elapsed, CPU efficiency, peak memory against what it asked, GPU-hours, "
                      "queue waits, requeues (sacct on SLURM; the jobs' own measurement locally), and what to change",
             cmd_usage)
    sp.add_argument("--json", action="store_true", help="print an object with `runs`, `sweep` totals and `suggestions`")

    sp = add("aggregate", "turn a sweep dir into tables (CSV, Markdown, LaTeX) and figures (PNG, PDF)", cmd_aggregate)
    sp.add_argument("--out", help="where to write (default: <sweep dir>/analysis)")
    sp.add_argument("--format", help="comma list of csv,md,tex,png,pdf,html (default: all; html: report.html)")
    sp.add_argument("--show", action="store_true", help="print the summary table (summary.md) at the end")
    add("pull", "copy a sweep dir from a cluster reached over ssh (a profile with `ssh:`) into a local mirror: only "
                "the files analysis reads, only those that changed", cmd_pull, parents=(where,))
    add("files", "list the files of a sweep dir that analysis reads, with size and mtime, as JSON (what `pull` asks "
                 "the cluster side)", cmd_files, parents=(where,))
    p.commands = sub.choices         # name -> its parser: an unknown flag is told with that command's usage
    return p


def cmd_pull(args) -> int:
    print("error: pull copies a sweep dir from a cluster reached over ssh: name a cluster profile with `ssh:` "
          "(--cluster NAME; docs/clusters.md)", file=sys.stderr)
    return 2


def cmd_files(args) -> int:
    """The files of the sweep dir that analysis reads, with their size and mtime, as JSON (what a laptop's pull asks)."""
    sweep_dir = _sweep_dir(args, _load(args))
    json.dump({"sweep_dir": str(sweep_dir.path), "files": sweep_dir.analysis_inputs()}, sys.stdout)
    print()
    return 0


def _over_ssh(args, parser):
    """A cluster profile that names a login host (`ssh:`): the scheduler commands run there, and
    aggregate reads a local copy of the sweep dir (jobs/sched/remote.py). None: the command runs here."""
    from jobs.sched import remote
    profile = remote.profile_of(args)
    if profile is None:
        return None
    try:
        if args.command in remote.FORWARDED:
            return remote.forward(profile, args, parser.commands[args.command])
        mirror = remote.pull(profile, args, parser.commands["files"])
    except remote.RemoteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.command == "pull":
        print(f"{mirror.path}\nread it: analysis.runs({str(mirror.path)!r}), or {PROG} aggregate {mirror.path}")
        return 0
    args.cluster = None                          # aggregate, here, of the copy
    args.root = str(mirror.path.parent)
    if not Path(args.spec).is_file():
        args.spec = str(mirror.path)
    return None


def main(argv=None) -> int:
    import signal
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)     # `plan ... | head` ends quietly
    from jobs.sched.slurm import SchedulerError
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:        # said by the command's own parser, so its usage (not the top-level one) is shown
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        forwarded = _over_ssh(args, parser)
        return forwarded if forwarded is not None else args.func(args)
    except specs.SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SchedulerError as e:   # the scheduler could not be asked: what runs is unknown, so nothing is decided
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:          # a full disk, a read-only or foreign sweep dir: say where, no traceback
        import errno
        where = f"{e.filename}: " if e.filename else ""
        hint = {errno.ENOSPC: "free space is needed there", errno.EDQUOT: "your disk quota there is used up",
                errno.EACCES: "write permission is needed there", errno.EPERM: "write permission is needed there",
                errno.EROFS: "the file system there is read-only",
                errno.ELOOP: "a symbolic link there points back at itself: fix the link or pick another --root"
                }.get(e.errno, "")
        print(f"error: {where}{e.strerror or e}" + (f" ({hint}; nothing was left half-written)" if hint else
                                                     " (nothing was left half-written)"), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
