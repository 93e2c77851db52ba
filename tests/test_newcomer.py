"""The README's newcomer path, from a fresh clone, as a new user walks it.

    git clone <this repository> clone            # the committed HEAD: what a newcomer gets
    python -m venv venv && pip install -e clone  # here: offline, reusing the installed packages
    project/toy_task.py, project/toy.yaml        # a task of one's own, outside the clone
    cd elsewhere && hpcsweep plan|submit|status|cancel|status|resume --wait|status|aggregate

(pyproject.toml's ranges against the lock of env/requirements.txt, and a wheel install: tests/test_install.py.)

The virtual environment reuses the packages of the interpreter running the tests (a .pth file adds
its site-packages), so nothing is downloaded: `pip install --no-deps --no-build-isolation --no-index`.
HPCSWEEP_NEWCOMER_REPO names another repository (path or URL) to clone instead of this one.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the newcomer path

TASK = '''\
"""A task of my own, outside the repository: moves w towards a target, step by step, checkpointing."""
import time
from dataclasses import dataclass, field


@dataclass
class Optim:
    lr: float = 0.2
    momentum: float = 0.0


@dataclass
class Config:
    seed: int = 0
    steps: int = 100
    sleep_s: float = 0.1
    target: float = 1.0
    optim: Optim = field(default_factory=Optim)


CONFIG = Config


def train(cfg, ctx):
    state = ctx.restore()
    step, w, v = (0, 0.0, 0.0) if state is None else (state["step"], state["w"], state["v"])
    started_at = step
    goal = cfg["target"] + cfg["seed"]
    while step < cfg["steps"]:
        v = cfg["optim"]["momentum"] * v + cfg["optim"]["lr"] * (goal - w)
        w += v
        step += 1
        ctx.log(step, loss=(goal - w) ** 2, w=w)
        time.sleep(cfg["sleep_s"])
        if ctx.should_checkpoint(step):
            ctx.save(step, {"step": step, "w": w, "v": v})
    return {"loss": (goal - w) ** 2, "w": w, "started_at": started_at}
'''

SPEC = """\
name: toy
task: toy_task.py:train          # relative to this file
base: {steps: 100, sleep_s: 0.1, optim.momentum: 0.1}   # 10 s a run
grid:
  optim.lr: [0.1, 0.3]
seeds: [1, 2]
resources: {cpus: 1, time_min: 5, pack: 1, max_parallel: 2}
checkpoint: {every_steps: 5, every_min: null}
analysis:
  group_by: [optim.lr]
  figures: [{kind: line, x: optim.lr, y: loss}]
"""
RUNS = 4
STEPS = 100
STOP_S = 5          # cancel -> every process of the sweep gone (a run would need ~8 s more to finish)


def _sh(cmd, cwd, env=None, timeout=120):
    t0 = time.time()
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    p.seconds = time.time() - t0
    return p


def _ok(p, what):
    assert p.returncode == 0, f"{what}: exit {p.returncode}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}"
    return p


def sweep_processes(sweep_dir: Path) -> list[psutil.Process]:
    """Live processes whose command line names the sweep dir: the local driver, submitit's controllers
    and the workers (`python -u -m submitit.core._submit <sweep dir>/logs`)."""
    key = str(sweep_dir)
    out = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and key in " ".join(proc.info["cmdline"] or ()):
                out.append(proc)
        except (psutil.Error, TypeError):
            pass
    return out


def _describe(procs) -> str:
    lines = []
    for p in procs:
        try:
            lines.append(f"pid {p.pid} (parent {p.ppid()}): {' '.join(p.cmdline())}")
        except psutil.Error:
            pass
    return "\n  ".join(lines)


def _wait_until(cond, timeout, step=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


def test_newcomer_path(tmp_path):
    timings = {}
    problems = []                   # wrong but not blocking: reported together at the end
    source = os.environ.get("HPCSWEEP_NEWCOMER_REPO") or str(REPO)
    clone, venv, project, elsewhere, root = (tmp_path / n for n in ("clone", "venv", "project", "elsewhere", "root"))
    assert " " not in str(tmp_path), f"{tmp_path}: SLURM paths must be plain"

    # 1. clone the committed HEAD
    p = _ok(_sh(["git", "clone", "--quiet", source, str(clone)], cwd=tmp_path), "git clone")
    timings["git clone"] = p.seconds
    missing = [f for f in ("pyproject.toml", "main.py", "env/requirements.txt", "jobs", "analysis", "models")
               if not (clone / f).exists()]
    assert not missing, f"the clone of {source} lacks {missing}: not committed yet?"
    head = _ok(_sh(["git", "rev-parse", "HEAD"], cwd=clone), "git rev-parse").stdout.strip()

    # 2. a fresh virtual environment that reuses the installed packages (no download), then pip install -e
    t0 = time.time()
    _ok(_sh([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path), "python -m venv")
    vpy = venv / "bin" / "python"
    purelib = _ok(_sh([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path),
                  "venv python").stdout.strip()
    reuse = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    # named to sort after pip's __editable__*.pth: the clone's finder comes first on sys.meta_path
    (Path(purelib) / "zz_reuse_installed_packages.pth").write_text(
        "import site; " + "; ".join(f"site.addsitedir({d!r})" for d in reuse) + "\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "HPCSWEEP_ROOT", "HPCSWEEP_CLUSTER", "HPCSWEEP_REGISTRY")
           and not k.startswith(("PIP_", "SUBMITIT_", "SLURM_"))}
    env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    timings["venv"] = time.time() - t0
    p = _ok(_sh(["python", "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-e", str(clone)],
                cwd=tmp_path, env=env, timeout=300), "pip install -e <clone>")
    timings["pip install -e"] = p.seconds
    assert (venv / "bin" / "hpcsweep").is_file(), f"pip installed no `hpcsweep` script:\n{p.stdout}"
    # every pinned dependency is satisfied by what the environment holds
    _ok(_sh(["python", "-m", "pip", "check"], cwd=tmp_path, env=env), "pip check")

    # 3. a task and a spec of one's own, outside the clone; commands from a third directory
    project.mkdir()
    elsewhere.mkdir()
    (project / "toy_task.py").write_text(TASK)
    spec = project / "toy.yaml"
    spec.write_text(SPEC)
    where = _ok(_sh(["python", "-c", "import main, jobs; print(main.__file__); print(jobs.__file__)"],
                    cwd=elsewhere, env=env), "import main").stdout.split()
    assert all(Path(f).resolve().is_relative_to(clone.resolve()) for f in where), f"imported from {where}, not {clone}"

    def hpcsweep(*args, timeout=120):
        t0 = time.time()
        p = _sh(["hpcsweep", *args], cwd=elsewhere, env=env, timeout=timeout)
        name = " ".join(args[:1])
        timings[name] = timings.get(name, 0.0) + (time.time() - t0)
        return p

    def hint_check(p, what):
        # a hint must be a command that works where the user is: no `python main.py` outside the repository
        for line in (p.stdout + p.stderr).splitlines():
            if "python main.py" in line and not (elsewhere / "main.py").exists():
                problems.append(f"`hpcsweep {what}` run from {elsewhere} hints a command that does not work there "
                                f"(no main.py): {line.strip()!r}; expected `hpcsweep ...`")
                return

    rel = os.path.relpath(spec, elsewhere)          # as a user types it: ../project/toy.yaml
    at = ["--root", str(root)]
    sweep_dir = root / "toy"

    # the console script is `python main.py`: the same help (under its own name), main()'s return code
    helped = _ok(hpcsweep("--help"), "hpcsweep --help")
    direct = _ok(_sh(["python", str(clone / "main.py"), "--help"], cwd=elsewhere, env=env), "python main.py --help")
    assert helped.stdout.replace("hpcsweep", "python main.py") == direct.stdout.replace("hpcsweep", "python main.py")
    assert helped.stdout.startswith("usage: hpcsweep")
    p = hpcsweep("plan", "no_such_spec.yaml", *at)
    assert p.returncode == 2 and "file not found" in p.stderr, (p.returncode, p.stderr)

    try:
        p = _ok(hpcsweep("plan", rel, *at), "hpcsweep plan")
        assert f"sweep toy (task {(project / 'toy_task.py').resolve()}:train)" in p.stdout, p.stdout
        assert f": {RUNS} runs" in p.stdout and "not created yet" in p.stdout, p.stdout
        for label in ("optim.lr=0.1,seed=1", "optim.lr=0.3,seed=2"):
            assert label in p.stdout, p.stdout
        assert not sweep_dir.exists(), "plan wrote the sweep dir"

        p = _ok(hpcsweep("submit", rel, *at, "--executor", "local"), "hpcsweep submit")
        assert f"submitted {RUNS} runs" in p.stdout and f"sweep dir: {sweep_dir}" in p.stdout, p.stdout
        hint_check(p, "submit")
        # a run is under way once its first checkpoint exists; then the sweep is cancelled mid-way
        assert _wait_until(lambda: any(sweep_dir.glob("runs/*/checkpoints/step_*.pt")), 45), \
            "no run wrote a checkpoint within 45 s of submit\n" + "\n".join(
                f"{f}:\n{f.read_text()[-2000:]}" for f in sweep_dir.glob("logs/*.log*"))
        workers = [q for q in sweep_processes(sweep_dir) if "submitit.core._submit" in " ".join(q.cmdline())]
        assert workers, "no local worker process of the sweep found while its runs write checkpoints"

        p = _ok(hpcsweep("status", rel, *at), "hpcsweep status")
        assert p.stdout.startswith(f"toy: {RUNS} runs: ") and "in flight" in p.stdout, p.stdout
        hint_check(p, "status")

        t0 = time.time()
        p = _ok(hpcsweep("cancel", rel, *at), "hpcsweep cancel")
        assert "cancelling" in p.stdout, p.stdout
        # cancel stops the local workers: each run checkpoints at its next step and its process ends,
        # well before the run would have finished on its own
        stopped = _wait_until(lambda: not sweep_processes(sweep_dir), STOP_S)
        timings["cancel -> no process"] = time.time() - t0
        if not stopped:
            left = sweep_processes(sweep_dir)
            problems.append(f"`hpcsweep cancel` left {len(left)} processes of the sweep running {STOP_S} s later:\n  "
                            + _describe(left))
            for q in left:          # ours (they name this test's sweep dir): end them so the path can go on
                try:
                    q.send_signal(signal.SIGKILL)
                except psutil.Error:
                    pass
            psutil.wait_procs(left, timeout=10)
        attempts = [json.loads(line) for f in sweep_dir.glob("runs/*/attempts.jsonl") for line in f.read_text().splitlines()]
        interrupted = [a for a in attempts if a.get("event") == "end" and a.get("outcome") == "interrupted"]
        if not interrupted:
            problems.append("after `hpcsweep cancel` no run attempt ended `interrupted` (runs in flight should checkpoint "
                            f"and stop); attempts: {[(a.get('event'), a.get('outcome')) for a in attempts]}")

        p = _ok(hpcsweep("status", rel, *at), "hpcsweep status (after cancel)")
        assert "in flight" not in p.stdout.splitlines()[0], p.stdout
        done_after_cancel = len(list(sweep_dir.glob("runs/*/result.json")))
        if done_after_cancel == RUNS:
            problems.append("every run finished although the sweep was cancelled after the first checkpoint:\n" + p.stdout)
        else:
            assert "pending" in p.stdout.splitlines()[0] and "resume" in p.stdout, p.stdout

        p = _ok(hpcsweep("resume", rel, *at, "--executor", "local", "--wait", timeout=180), "hpcsweep resume --wait")
        assert f"{RUNS}/{RUNS} done" in p.stderr, p.stderr
        results = {f.parent.name: json.loads(f.read_text()) for f in sweep_dir.glob("runs/*/result.json")}
        assert len(results) == RUNS, sorted(results)
        for rid, res in results.items():
            steps = [json.loads(line)["step"] for line in (sweep_dir / "runs" / rid / "metrics.jsonl").read_text().splitlines()]
            assert steps and steps[-1] == STEPS and res["finished"], (rid, res, steps[-5:])
        resumed = [r for r in results.values() if r["metrics"]["started_at"] > 0]
        if interrupted and not resumed:
            problems.append("runs were interrupted, but none resumed from its checkpoint: "
                            f"{[r['metrics'] for r in results.values()]}")

        p = _ok(hpcsweep("status", rel, *at), "hpcsweep status (after resume)")
        assert p.stdout.splitlines()[0] == f"toy: {RUNS} runs: {RUNS} done", p.stdout
        assert "aggregate" in p.stdout.splitlines()[-1], p.stdout
        # --wait returns once every result.json exists; the workers and the driver exit moments later
        assert _wait_until(lambda: not sweep_processes(sweep_dir), 15), \
            "processes of the sweep still alive 15 s after resume --wait returned:\n  " + _describe(sweep_processes(sweep_dir))

        p = _ok(hpcsweep("aggregate", rel, *at), "hpcsweep aggregate")
        out = sweep_dir / "analysis"
        for name in ("runs.csv", "summary.csv", "summary.md", "summary.tex", "line.png", "line.pdf"):
            assert (out / name).is_file() and (out / name).stat().st_size > 0, f"{out / name} missing\n{p.stdout}"
        table = re.sub(r" {2,}", " ", (out / "summary.md").read_text())      # to_markdown pads the columns
        assert "optim.lr" in table and "| 0.1 | 2/2 |" in table and "| 0.3 | 2/2 |" in table, table
        assert len((out / "runs.csv").read_text().strip().splitlines()) == RUNS + 1

        # what ran is what the newcomer cloned: hpcsweep at the clone's commit, clean (installing dirtied
        # nothing); the task's own folder is no git repository, so it has no commit
        versions = [json.loads(f.read_text()) for f in (sweep_dir / "code").glob("*.json")]
        assert versions and all(v["hpcsweep"]["commit"] == head and v["hpcsweep"]["dirty"] is False
                                and v["commit"] is None for v in versions), \
            [(v["hpcsweep"], v.get("commit")) for v in versions]
    finally:
        for q in sweep_processes(sweep_dir):          # never leave this test's processes behind
            try:
                q.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))

    assert not problems, "the newcomer path works, but:\n- " + "\n- ".join(problems)
