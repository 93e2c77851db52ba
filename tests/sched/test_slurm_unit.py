"""SLURM pieces that need no cluster: profiles, sbatch text checks, sacct parsing, hostile specs."""
import json
import os
import textwrap
from pathlib import Path

import pytest

from jobs.sched import slurm
from jobs.spec import Resources, SpecError, load_sweep

REPO = Path(__file__).resolve().parents[2]


def test_shipped_profiles_load():
    local = slurm.load_profile("local")
    uni = slurm.load_profile("university")
    assert local.partition == "debug"
    assert uni.partitions["scavenger"].requeue is True
    assert any("PYTORCH_CUDA_ALLOC_CONF" in line for line in uni.setup)


def test_profile_from_environment(monkeypatch):
    monkeypatch.setenv("HPCSWEEP_CLUSTER", "university")
    assert slurm.load_profile().name == "university"


@pytest.mark.parametrize("body, words", [
    ("x: {partition: \"gpu\\n#SBATCH --account=evil\"}", "a plain SLURM name"),
    ("x: {setup: [\"#SBATCH --exclusive\"]}", "single shell lines"),
    ("x: {gpu_syntax: cuda}", "gpu_syntax"),
    ("x: {partion: gpu}", "unknown key"),
])
def test_bad_profiles_are_refused(tmp_path, body, words):
    p = tmp_path / "clusters.yaml"
    p.write_text(body)
    with pytest.raises(slurm.ProfileError, match=words):
        slurm.load_profile("x", path=p)


def test_gpu_syntax_and_partition_limits():
    uni = slurm.load_profile("university")
    res = Resources(gpus=2, cpus=4, mem_gb=16, time_min=3000, max_parallel=8, partition="a100")
    out = slurm.resources_for(res, uni)
    assert out["time_min"] == 2880                       # capped at the partition's limit: chaining does the rest
    params = slurm.executor_params(out, res, uni, "sweep")
    assert params["gres"] == "gpu:l4:2" and params["array_parallelism"] == 8
    assert params["additional_parameters"] == {"account": "mylab", "requeue": True}
    gpus = slurm.executor_params(out, res, uni.model_copy(update={"gpu_syntax": "gpus", "gpu_type": None}), "sweep")
    assert gpus["gpus_per_node"] == "2" and "gres" not in gpus


def test_generated_sbatch_lines_are_checked(tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string    # what SlurmExecutor writes (it needs srun to exist)
    res = Resources(cpus=1, mem_gb=2, time_min=10, max_parallel=2, partition="debug", gpus=1)
    profile = slurm.load_profile("local")
    params = slurm.executor_params(slurm.resources_for(res, profile), res, profile, "name")
    params.pop("array_parallelism")
    text = _make_sbatch_string(command="python -c pass", folder=tmp_path / "logs" / "%j", **params)
    slurm.check_sbatch_text(text)                      # what we generate passes
    assert "#SBATCH --requeue" in text and "#SBATCH --gres=gpu:1" in text
    for bad in ("#SBATCH --job-name=$(rm -rf ~)", "#SBATCH --job-name=x;id",
                "#SBATCH --partition=a b", "#SBATCH --comment=`id`"):
        with pytest.raises(ValueError, match="unsafe sbatch line"):
            slurm.check_sbatch_text(text + "\n" + bad)


def test_paths_with_blanks_or_shell_syntax_cannot_reach_sbatch():
    slurm.check_path(Path("/scratch/me/results/sweep_1"))
    for bad in ("/scratch/my results/x", "/tmp/$(id)/x", "/tmp/a\nb"):
        with pytest.raises(ValueError, match="cannot go into an sbatch file"):
            slurm.check_path(Path(bad))


def test_parse_sacct_output():
    out = textwrap.dedent("""\
        101_0|COMPLETED
        101_1|RUNNING
        101_[2-4%2]|PENDING
        102|CANCELLED by 0
        103|NODE_FAIL
    """)
    states = slurm.parse_sacct(out)
    assert states == {"101_0": "COMPLETED", "101_1": "RUNNING", "101_2": "PENDING", "101_3": "PENDING",
                      "101_4": "PENDING", "102": "CANCELLED", "103": "NODE_FAIL"}
    assert [slurm.is_live(states[j]) for j in ("101_0", "101_1", "101_3", "103")] == [False, True, True, False]


@pytest.mark.parametrize("resources, key", [
    ({"partition": "gpu\n#SBATCH --account=evil"}, "resources.partition"),
    ({"qos": "normal; rm -rf ~"}, "resources.qos"),
    ({"account": "$(whoami)"}, "resources.account"),
])
def test_hostile_resources_are_rejected_at_plan_time(tmp_path, resources, key):
    p = tmp_path / "hostile.yaml"
    p.write_text(json.dumps({"task": "resmlp", "grid": {"k": [0, 1]}, "resources": resources}))
    with pytest.raises(SpecError) as e:
        load_sweep(p)
    assert e.value.key == key


def test_hostile_names_are_rejected(tmp_path):
    for name in ("x$(id)", "../../etc", "a b", "a\nb"):
        p = tmp_path / "h.yaml"
        p.write_text(json.dumps({"name": name, "task": "resmlp"}))
        with pytest.raises(SpecError, match="not a safe sweep name"):
            load_sweep(p)


GOLDEN = REPO / "tests" / "fixtures" / "sbatch_university_2nodes_4gpus.sh"


def sbatch_for_distributed_run():
    """The sbatch file of a 2-node x 4-GPU run (one process per GPU) on the university profile."""
    from submitit.slurm.slurm import _make_sbatch_string
    res = Resources(nodes=2, tasks_per_node=4, gpus=4, cpus=8, mem_gb=64, time_min=1440, partition="a100",
                    sbatch={"mail_type": ["END", "FAIL"], "mail_user": "me@uni.edu", "exclude": "gpu[01-02]"})
    profile = slurm.load_profile("university")
    params = slurm.executor_params(slurm.resources_for(res, profile), res, profile, "cotformer.train")
    text = _make_sbatch_string(command="python -u -m submitit.core._submit /sweeps/x/logs/%j",
                               folder="/sweeps/x/logs/%j", **params)
    return text.replace(str(REPO), "<repo>")


def test_a_distributed_run_sbatch_file_matches_the_golden_one():
    text = sbatch_for_distributed_run()
    slurm.check_sbatch_text(text)
    if os.environ.get("HPCSWEEP_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "regenerate with HPCSWEEP_UPDATE_GOLDEN=1 after checking the difference"
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gres=gpu:l4:4",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --partition=a100", "#SBATCH --time=1440",
                 "#SBATCH --mail-type=END,FAIL", "#SBATCH --exclude='gpu[01-02]'"):
        assert line in text, line
    assert "srun --unbuffered" in text and "--kill-on-bad-exit=1" in text


@pytest.mark.parametrize("sbatch, words", [
    ({"mail_type": ["SOMETIMES"]}, "mail_type"),
    ({"mail_user": "me; rm -rf ~"}, "e-mail"),
    ({"exclude": "node1 node2"}, "node list"),
    ({"account": "x"}, "unknown key"),
])
def test_extra_sbatch_options_are_checked(tmp_path, sbatch, words):
    p = tmp_path / "s.yaml"
    p.write_text(json.dumps({"task": "resmlp", "resources": {"sbatch": sbatch}}))
    with pytest.raises(SpecError, match=words) as e:
        load_sweep(p)
    assert e.value.key.startswith("resources.sbatch")


def test_profiles_are_looked_up_where_a_user_keeps_them(tmp_path, monkeypatch):
    project, home = tmp_path / "lab", tmp_path / "config"
    (project / ".git").mkdir(parents=True)
    (project / "sub").mkdir()
    spec = project / "sub" / "s.yaml"
    spec.write_text("task: resmlp\n")
    (home / "hpcsweep").mkdir(parents=True)
    (home / "hpcsweep" / "clusters.yaml").write_text("mine: {partition: fromhome}\nhomeonly: {partition: h}\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.delenv("HPCSWEEP_CLUSTERS", raising=False)
    assert slurm.load_profile("mine", spec=spec).partition == "fromhome"
    (project / "pyproject.toml").write_text('[tool.hpcsweep.clusters.mine]\npartition = "frompyproject"\n')
    assert slurm.load_profile("mine", spec=spec).partition == "frompyproject"
    (project / "clusters.yaml").write_text("mine: {partition: fromproject}\n")
    assert slurm.load_profile("mine", spec=spec).partition == "fromproject"
    assert slurm.load_profile("homeonly", spec=spec).partition == "h"            # per name: the first file naming it
    assert slurm.load_profile("local", spec=spec).partition is None              # built in: SLURM's defaults
    other = tmp_path / "other.yaml"
    other.write_text("mine: {partition: fromenv}\n")
    monkeypatch.setenv("HPCSWEEP_CLUSTERS", str(other))
    assert slurm.load_profile("mine", spec=spec).partition == "fromenv"
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text("mine: {partition: explicit}\n")
    assert slurm.load_profile("mine", explicit, spec=spec).partition == "explicit"
    with pytest.raises(slurm.ProfileError, match="no cluster profile 'nope' in .*have: .*homeonly.*hpcsweep init"):
        slurm.load_profile("nope", spec=spec)
    with pytest.raises(slurm.ProfileError, match="no such cluster profiles file"):
        slurm.load_profile("mine", tmp_path / "missing.yaml", spec=spec)
