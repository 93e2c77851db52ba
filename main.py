"""hpcsweep: YAML sweep specs -> checkpointed, auto-resuming cluster jobs -> tables and figures.

    python main.py plan sweeps/depth_ladder_digits.yaml          # which runs the spec means
    python main.py submit sweeps/depth_ladder_digits.yaml --wait # run them (SLURM, or locally)
    python main.py status sweeps/depth_ladder_digits.yaml        # what state each run is in
    python main.py aggregate sweeps/depth_ladder_digits.yaml     # tables and figures

Run from the repository root. `python main.py COMMAND --help` says more.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jobs import spec as specs
from jobs import sweepdir


def _load(args):
    return specs.load_sweep(args.spec, max_runs=getattr(args, "max_runs", None))


# ---------------------------------------------------------------- plan

def cmd_plan(args) -> int:
    sweep = _load(args)
    sdir = sweepdir.sweep_dir(args.root, sweep.name)
    exists = (sdir / "plan.json").exists() or (sdir / "journal.jsonl").exists()
    states = {r.run_id: sweepdir.run_state(sdir, r.run_id) for r in sweep.runs} if exists else {}
    before = sweepdir.previous_plan(sdir) if exists else {}
    now = {r.run_id for r in sweep.runs}
    changes = {"added": [r.run_id for r in sweep.runs if r.run_id not in before],
               "removed": [rid for rid in before if rid not in now],
               "unchanged": [r.run_id for r in sweep.runs if r.run_id in before]}
    if args.json:
        out = {"name": sweep.name, "task": sweep.task, "spec": str(sweep.path), "count": len(sweep.runs),
               "sweep_dir": str(sdir), "exists": exists,
               "axes": sweep.axes,
               "runs": [{"run_id": r.run_id, "label": r.label, "config": r.config, "varied": r.varied,
                         **({"state": states[r.run_id]} if exists else {})} for r in sweep.runs]}
        if exists:
            out["changes"] = changes
        json.dump(out, sys.stdout, indent=1, default=list)
        print()
        return 0

    print(f"sweep {sweep.name} (task {sweep.task}) from {sweep.path}: {len(sweep.runs)} runs")
    if sweep.axes:
        width = max(len(k) for k in sweep.axes)
        print("axes:")
        for key, values in sweep.axes.items():
            print(f"  {key:<{width}}  {', '.join(specs.format_value(list(v) if isinstance(v, tuple) else v) for v in values)}")
    if exists:
        counts = {}
        for s in states.values():
            counts[s] = counts.get(s, 0) + 1
        print(f"sweep dir {sdir}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        print(f"since the last submit: {len(changes['added'])} added, {len(changes['removed'])} removed, "
              f"{len(changes['unchanged'])} unchanged")
    else:
        print(f"sweep dir {sdir}: not created yet (submit creates it)")
    print()
    lw = max([5] + [len(r.label) for r in sweep.runs])
    header = f"{'#':>5}  {'label':<{lw}}  run_id"
    print(header + ("        state" if exists else ""))
    for i, r in enumerate(sweep.runs, 1):
        line = f"{i:>5}  {r.label or '(single run)':<{lw}}  {r.run_id}"
        if exists:
            line += f"  {states[r.run_id]}"
        print(line)
    if exists and changes["removed"]:
        print(f"\nremoved since the last submit ({len(changes['removed'])}): "
              + ", ".join(before[rid] or rid for rid in changes["removed"][:20])
              + (" ..." if len(changes["removed"]) > 20 else ""))
    return 0


# ---------------------------------------------------------------- aggregate

def cmd_aggregate(args) -> int:
    from analysis.aggregate import aggregate
    target = Path(args.target)
    if target.is_file():
        sweep = specs.load_sweep(target)
        sdir = sweepdir.sweep_dir(args.root, sweep.name)
    else:
        sdir = target
    if not (sdir / "spec.yaml").exists():
        print(f"error: {sdir} is not a sweep dir (no spec.yaml); submit the spec first", file=sys.stderr)
        return 2
    formats = args.format.split(",") if args.format else None
    aggregate(sdir, out=args.out, formats=formats)
    return 0


# ---------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python main.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[2:]))
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, help_, func):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=func)
        sp.add_argument("--root", help="where sweep dirs live (default: $HPCSWEEP_ROOT, else ./results)")
        return sp

    sp = add("plan", "show which runs a spec means (and their state if the sweep dir exists); submits nothing", cmd_plan)
    sp.add_argument("spec", help="a sweep spec, e.g. sweeps/depth_ladder_digits.yaml")
    sp.add_argument("--json", action="store_true", help="print an object with a `runs` list for scripts")
    sp.add_argument("--max-runs", type=int, help=f"cap on the number of runs (default: the spec's max_runs, else {specs.DEFAULT_MAX_RUNS:,})")

    sp = add("aggregate", "turn a sweep dir into tables (CSV, Markdown, LaTeX) and figures (PNG, PDF)", cmd_aggregate)
    sp.add_argument("target", help="a sweep spec or a sweep dir")
    sp.add_argument("--out", help="where to write (default: <sweep dir>/analysis)")
    sp.add_argument("--format", help="comma list of csv,md,tex,png,pdf (default: all)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except specs.SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
