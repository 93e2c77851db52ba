"""The cost of a distributed run on this machine: the same resmlp run as 1 process and as 2 processes
(gloo, spawned as the local executor and `main.py run` do). Prints, side by side: seconds from the
command's start to the first training step logged (process start, imports, rendezvous), and
training seconds per optimizer step (each of the 2 ranks takes half of every batch and all-reduces
the gradients). Asserts nothing.

    .venv/bin/python bench/distributed.py [--epochs 8] [--d-hidden 256]
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def measure(tmp: Path, tasks: int, epochs: int, d_hidden: int) -> tuple:
    root = tmp / f"w{tasks}"
    root.mkdir()
    spec = root / "bench.yaml"
    spec.write_text(json.dumps({"name": "bench", "task": "resmlp",
                                "base": {"d_hidden": d_hidden, "num_blocks": 4, "k": 4, "dataset": "digits",
                                         "epochs": epochs, "method": "bp"},
                                "resources": {"tasks_per_node": tasks, "cpus": 1, "time_min": 30},
                                "checkpoint": {"every_min": None, "every_steps": 10 ** 6}}))
    started = time.time()
    proc = subprocess.Popen([sys.executable, "main.py", "run", str(spec), "--root", str(root), "--only", ""], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = None
    while proc.poll() is None:
        runs = list((root / "bench" / "runs").glob("*/attempts.jsonl")) if (root / "bench" / "runs").exists() else []
        if first is None and runs and runs[0].read_text().strip():
            first = time.time() - started
        time.sleep(0.01)
    out, err = proc.communicate()
    if proc.returncode:
        sys.exit(err)
    result = json.loads(next((root / "bench" / "runs").glob("*/result.json")).read_text())["metrics"]
    return first, result["train_time_s"] / result["steps"], time.time() - started, result["test_acc"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--d-hidden", type=int, default=256)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as t:
        one = measure(Path(t), 1, args.epochs, args.d_hidden)
        two = measure(Path(t), 2, args.epochs, args.d_hidden)
    print(f"{'':40}{'1 process':>12}{'2 processes':>13}{'ratio':>8}")
    print(f"{'start to the run started (s)':40}{one[0]:>12.2f}{two[0]:>13.2f}{two[0] / one[0]:>8.2f}")
    print(f"{'training time per step (ms)':40}{1e3 * one[1]:>12.2f}{1e3 * two[1]:>13.2f}{two[1] / one[1]:>8.2f}")
    print(f"{'whole command (s)':40}{one[2]:>12.2f}{two[2]:>13.2f}{two[2] / one[2]:>8.2f}")
    print(f"{'test accuracy':40}{one[3]:>12.4f}{two[3]:>13.4f}")


if __name__ == "__main__":
    main()
