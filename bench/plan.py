"""Time to parse and expand a 100,000-run spec and hash its run ids (target: under 1 s).

    python bench/plan.py [--runs-per-axis 10]

Prints the time for the whole of load_sweep (YAML, validation, expansion, ids, labels), best
of 3, and beside it the reference: the same ids computed one by one with run_id_of (plain
json.dumps + sha256 per run), which is also checked to give the same ids.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from jobs.spec import load_sweep  # noqa: E402
from jobs.spec.grammar import run_id_of  # noqa: E402

TASK = """CONFIG = {"seed": 0, "method": "bp", "d_hidden": 256, "num_blocks": 4, "k": 4, "lr": 1e-3,
          "weight_decay": 0.01, "epochs": 100, "batch_size": 128, "dataset": "digits", "data_dir": None,
          "mlp_ratio": 4, "eval_every": 1, "warmup": 0}
CHOICES = {"method": ["bp", "fa", "dfa"]}
"""

SPEC = """name: bench_plan
task: bench
max_runs: 200000
base: {epochs: 10, dataset: digits}
grid:
  method: [bp, fa, dfa]
  arch:
    - {d_hidden: 256, num_blocks: 4, k: {range: [0, 5]}}
    - {d_hidden: 512, num_blocks: 2, k: {range: [0, 3]}}
  lr: {logspace: [-4, -2, 25]}
  weight_decay: {linspace: [0.0, 0.1, 10]}
seeds: {range: [0, 17]}
exclude:
  - {method: dfa, k: 4, seed: 16}
"""


def main():
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "models").mkdir()
        (tmp / "models" / "bench.py").write_text(TASK)
        (tmp / "spec.yaml").write_text(SPEC)
        best, sweep = float("inf"), None
        for _ in range(3):
            t0 = time.perf_counter()
            sweep = load_sweep(tmp / "spec.yaml", models_dir=tmp / "models")
            best = min(best, time.perf_counter() - t0)
        t0 = time.perf_counter()
        ids = [run_id_of("bench", r.config, sweep.defaults) for r in sweep.runs]
        reference = time.perf_counter() - t0
    assert ids == [r.run_id for r in sweep.runs], "expansion ids differ from run_id_of"
    print(f"runs                                   {len(sweep.runs):,}")
    print(f"parse+validate+expand+ids+labels       {best:.3f} s  (best of 3; target < 1 s)")
    print(f"reference: run_id_of per run (ids only) {reference:.3f} s  (ratio {best / reference:.2f})")
    print(f"per run                                {best / len(sweep.runs) * 1e6:.1f} us")


if __name__ == "__main__":
    main()
