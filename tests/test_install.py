"""hpcsweep installed as a lab installs it: ranges the lock satisfies, a wheel (no editable install) in an
environment of its own used from a project of its own with its own clusters.yaml, `hpcsweep init`,
an environment whose torch and pandas already satisfy the ranges, a logging backend whose extra is missing.

The environments reuse the packages of the interpreter running the tests (a .pth file adds its
site-packages), so nothing is downloaded: pip runs with --no-index.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "env" / "requirements.txt"

TASK = '''\
CONFIG = {"seed": 0, "steps": 5, "lr": 0.5}


def train(cfg, ctx):
    state = ctx.restore()
    step, w = (0, 0.0) if state is None else (state["step"], state["w"])
    while step < cfg["steps"]:
        w += cfg["lr"] * (1.0 + cfg["seed"] - w)
        step += 1
        ctx.log(step, w=w)
        if ctx.should_checkpoint(step):
            ctx.save(step, {"step": step, "w": w})
    return {"w": w}
'''


def lock() -> dict:
    """name -> version of every pin of env/requirements.txt."""
    out = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{LOCK}: {line!r} is not an exact pin"
            out[name.lower().replace("_", "-")] = version
    return out


def test_the_lock_satisfies_the_ranges_and_names_nothing_else():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = lock()
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    for req in wanted:
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{LOCK} pins no {req.name} (pyproject.toml asks for {req})"
        assert req.specifier.contains(pins[name]), f"{LOCK}: {name}=={pins[name]} is outside pyproject.toml's {req}"
        assert not any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), f"{req}: a lower bound only"
    assert set(pins) <= {r.name.lower().replace("_", "-") for r in wanted}, "the lock pins a package no range names"
    assert set(project["optional-dependencies"]) >= {"wandb", "tensorboard", "test", "studies"}
    assert all(not r.name.lower() in ("wandb", "tensorboard") for r in map(Requirement, project["dependencies"]))


def sh(cmd, cwd, env, timeout=300):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def ok(p, what):
    assert p.returncode == 0, f"{what} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of this working tree, built offline from a copy (a build writes into its source tree)."""
    where = tmp_path_factory.mktemp("wheel")
    src = where / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "results", "__pycache__", "out",
                                                              "*.egg-info", "build", ".pytest_cache", ".hypothesis"))
    ok(sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w",
           str(where / "dist"), str(src)], cwd=where, env=os.environ), "pip wheel")
    return next((where / "dist").glob("hpcsweep-*.whl"))


def environment(tmp_path) -> tuple[Path, dict]:
    """A fresh virtual environment holding only what this interpreter has installed (via a .pth), and its env vars."""
    venv = tmp_path / "venv"
    ok(sh([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path, env=os.environ), "venv")
    purelib = ok(sh([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    cwd=tmp_path, env=os.environ), "venv python").stdout.strip()
    reuse = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    (Path(purelib) / "zz_reuse_installed_packages.pth").write_text(
        "import site; " + "; ".join(f"site.addsitedir({d!r})" for d in reuse) + "\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "HPCSWEEP_ROOT", "HPCSWEEP_CLUSTER", "HPCSWEEP_REGISTRY",
                        "HPCSWEEP_CLUSTERS") and not k.startswith(("PIP_", "SUBMITIT_", "SLURM_"))}
    env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", PIP_DISABLE_PIP_VERSION_CHECK="1",
               XDG_CONFIG_HOME=str(tmp_path / "config"))
    return venv, env


def test_pip_keeps_a_torch_and_pandas_that_satisfy_the_ranges(tmp_path, wheel):
    venv, env = environment(tmp_path)
    # --no-index: a dependency pip wanted to replace could not be found, and the install would fail
    p = ok(sh(["python", "-m", "pip", "install", "--no-index", str(wheel)], cwd=tmp_path, env=env), "pip install <wheel>")
    for name in ("torch", "pandas"):
        assert re.search(rf"Requirement already satisfied: {name}[ >=]", p.stdout), p.stdout
    installed = re.search(r"Successfully installed (.*)", p.stdout).group(1).split()
    assert [x.rsplit("-", 1)[0] for x in installed] == ["hpcsweep"], installed


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_a_wheel_works_from_a_users_project_with_its_own_profiles_and_init(tmp_path, wheel):
    venv, env = environment(tmp_path)
    ok(sh(["python", "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path, env=env), "pip install")
    imported = ok(sh(["python", "-c", "import jobs, main; print(jobs.__file__)"], cwd=tmp_path, env=env), "import").stdout
    assert str(venv) in imported and str(REPO) not in imported, imported
    assert "hpcsweep 0." in ok(sh(["hpcsweep", "--version"], cwd=tmp_path, env=env), "--version").stdout

    project = tmp_path / "lab"
    project.mkdir()
    ok(sh(["git", "init", "-q"], cwd=project, env=env), "git init")
    (project / "task.py").write_text(TASK)
    (project / "sweep.yaml").write_text(json.dumps({"name": "mine", "task": "task.py:train", "seeds": [1, 2],
                                                     "resources": {"time_min": 5, "mem_gb": 1}}))
    (project / "clusters.yaml").write_text("labcluster:\n  partition: debug\n  max_time_min: 60\n  signal_delay_s: 20\n")
    work = project / "notebooks"          # commands from inside the project, not its top
    work.mkdir()
    ok(sh(["hpcsweep", "plan", "../sweep.yaml"], cwd=work, env=env), "plan")
    p = ok(sh(["hpcsweep", "submit", "../sweep.yaml", "--executor", "slurm", "--cluster", "labcluster", "--wait"],
              cwd=work, env=env, timeout=600), "submit --wait")
    assert "submitted 2 runs" in p.stdout, p.stdout
    status = ok(sh(["hpcsweep", "status", "../sweep.yaml"], cwd=work, env=env), "status").stdout
    assert "2 runs: 2 done" in status, status
    code = json.loads(next((project / "results" / "mine" / "code").glob("*.json")).read_text())
    assert code["hpcsweep"]["version"].startswith("0.")
    ok(sh(["hpcsweep", "aggregate", "../sweep.yaml"], cwd=work, env=env), "aggregate")
    assert (project / "results" / "mine" / "analysis" / "summary.csv").exists()
    missing = sh(["hpcsweep", "submit", "../sweep.yaml", "--executor", "slurm", "--cluster", "nosuch"], cwd=work, env=env)
    assert missing.returncode == 2 and "labcluster" in missing.stderr and "hpcsweep init" in missing.stderr

    # init on a project with no profile yet: read off the cluster, used as is, never overwritten
    other = tmp_path / "other"
    other.mkdir()
    (other / "task.py").write_text(TASK)
    (other / "sweep.yaml").write_text(json.dumps({"name": "fresh", "task": "task.py:train", "resources": {"time_min": 5}}))
    p = ok(sh(["hpcsweep", "init"], cwd=other, env=env), "init")
    name = re.search(r"--cluster (\S+)", p.stdout).group(1)
    assert (other / "clusters.yaml").exists() and "partition: debug" in (other / "clusters.yaml").read_text()
    again = sh(["hpcsweep", "init"], cwd=other, env=env)
    assert again.returncode == 2 and "never overwrites" in again.stderr
    p = ok(sh(["hpcsweep", "submit", "sweep.yaml", "--executor", "slurm", "--cluster", name, "--wait"], cwd=other,
              env=env, timeout=600), "submit with the profile init wrote")
    assert "submitted 1 runs" in p.stdout


def test_a_logging_backend_whose_extra_is_missing_says_which_extra(tmp_path):
    spec = tmp_path / "logs.yaml"
    spec.write_text("name: logs\ntask: resmlp\nlogging:\n  wandb: {mode: offline}\n")
    # wandb made unimportable in this process, as in an environment installed without the extra
    code = (f"import sys; sys.modules['wandb'] = None; sys.path.insert(0, {str(REPO)!r}); import main; "
            f"sys.exit(main.main(['plan', {str(spec)!r}]))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr.strip().splitlines() == [
        f"error: {spec}:4: logging.wandb: wandb is on, but the wandb package is not installed here: "
        "pip install 'hpcsweep[wandb]' (or turn it off)"], p.stderr
