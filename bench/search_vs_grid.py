"""ASHA against the full grid on the same question: the best configuration each selects (on val_loss),
its test accuracy, and the epochs each spent, side by side (the ratio is the figure of merit).

    python bench/search_vs_grid.py                 # sweeps/resmlp_asha.yaml vs sweeps/resmlp_grid.yaml, local executor
    python bench/search_vs_grid.py --root /tmp/x   # where the sweep dirs go (default: results/)
    python bench/search_vs_grid.py --tiny          # a 9-trial search to 3 epochs vs a 2x2 grid: that it runs

Sweeps already finished are not run again (submit skips done runs); the table is read from the sweep dirs.
"""
import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TINY_ASHA = ["--set", "search.trials=9", "--set", "search.parallel=2", "--set", "search.budget.max=3",
             "--set", "base.epochs=3", "--set", "base.schedule_epochs=3",
             "--set", "search.space.d_hidden={choice: [16, 32]}"]
TINY_GRID = ["--set", "grid.lr=[0.001, 0.01]", "--set", "grid.d_hidden=[16, 32]", "--set", "seeds=[0]",
             "--set", "base.epochs=3"]


def main(sys_mode, *cmd):
    out = subprocess.run([sys.executable, str(REPO / "main.py"), *cmd], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"main.py {' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return out.stdout


def compare(root, asha_name="resmlp_asha", grid_name="resmlp_grid") -> dict:
    import analysis
    from analysis import search as search_mod
    from jobs.store import SweepDir
    asha_dir, grid_dir = Path(root) / asha_name, Path(root) / grid_name
    runs = analysis.runs(str(asha_dir))
    labels = dict(zip(runs["run_id"], runs["label"]))
    spec = SweepDir(asha_dir).read_spec()
    (stage, block), = search_mod.searches(spec)
    frame = search_mod.rung_results(asha_dir, stage, labels)
    best = search_mod.best(frame, block.get("mode", "min"))
    row = runs[runs["run_id"] == best["run_id"]].iloc[0]
    spent_asha = int(frame.groupby("trial")["budget"].max().sum())
    grid = analysis.runs(str(grid_dir))
    grid = grid[grid["state"] == "done"]
    budget_key = block["budget"]["key"]
    spent_grid = int(grid[budget_key].sum())
    by = grid.groupby(["lr", "d_hidden"]).agg(val_loss=("val_loss", "mean"), test_acc=("test_acc", "mean"),
                                              test_std=("test_acc", "std"), n=("test_acc", "size"))
    (lr, width), g = by["val_loss"].idxmin(), by.loc[by["val_loss"].idxmin()]
    return {"asha": {"config": f"lr={row['lr']:.3g}, d_hidden={row['d_hidden']}", "val_loss": float(best["value"]),
                     "test_acc": float(row["test_acc"]), "epochs": spent_asha, "trials": int(frame["trial"].nunique())},
            "grid": {"config": f"lr={lr:.3g}, d_hidden={width}", "val_loss": float(g["val_loss"]),
                     "test_acc": float(g["test_acc"]), "test_std": float(g["test_std"]) if g["n"] > 1 else float("nan"),
                     "epochs": spent_grid, "runs": len(grid), "n": int(g["n"]),
                     "acc_range": (float(by["test_acc"].min()), float(by["test_acc"].max()))}}


def table(c) -> str:
    a, g = c["asha"], c["grid"]
    noise = f" ± {g['test_std']:.4f} (std over {g['n']} seeds)" if g["test_std"] == g["test_std"] else ""
    return "\n".join([
        "| | best configuration (on val_loss) | val_loss | test_acc | epochs spent |",
        "| --- | --- | --- | --- | --- |",
        f"| ASHA ({a['trials']} trials) | {a['config']} | {a['val_loss']:.4f} | {a['test_acc']:.4f} | {a['epochs']} |",
        f"| full grid ({g['runs']} runs) | {g['config']} | {g['val_loss']:.4f} | {g['test_acc']:.4f}{noise} | {g['epochs']} |",
        f"| ratio ASHA / grid | | | {a['test_acc'] / g['test_acc']:.3f} | {a['epochs'] / g['epochs']:.3f} |",
    ])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=None, help="where the two sweep dirs live (default: results/, or a temp dir with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="a small search and grid, only to show the bench runs")
    args = ap.parse_args()
    root = args.root
    if args.tiny and root is None:
        import tempfile
        root = tempfile.mkdtemp(prefix="search_vs_grid.")
    root = root or str(REPO / "results")
    for spec, extra in (("sweeps/resmlp_asha.yaml", TINY_ASHA), ("sweeps/resmlp_grid.yaml", TINY_GRID)):
        main(None, "submit", spec, "--root", root, "--executor", "local", "--wait", *(extra if args.tiny else []))
    c = compare(root)
    print(table(c))
    g = c["grid"]
    print(f"\ngrid test_acc over its configurations: {g['acc_range'][0]:.4f} .. {g['acc_range'][1]:.4f}")
