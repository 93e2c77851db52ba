"""Typed settings of a sweep: `resources:`, `checkpoint:`, `logging:` and a cluster profile; one copy of each default.

    res = Resources.model_validate(spec.get("resources") or {})     # errors: settings_error(...)
    res.time_min, res.world_size, Checkpoint().margin_s_for(res.time_min)
    Logging.model_validate(spec.get("logging") or {}).tensorboard

pydantic models with `extra="forbid"` and strict types: an unknown key or a "4" where 4 belongs is
an error that names the key. Nothing else in the repository spells these defaults.
"""
from __future__ import annotations

import os
import re
import typing
from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from jobs.spec.errors import did_you_mean

# a value that may reach an #SBATCH line: no blanks, no shell syntax
SLURM_WORD_PATTERN = r"^[A-Za-z0-9_.:,+\-]{1,128}$"
CONSTRAINT_PATTERN = r"^[A-Za-z0-9_.&|\[\]*,:\-]{1,128}$"
# a W&B project or entity name
WANDB_NAME_PATTERN = r"^[A-Za-z0-9_.+\-]{1,128}$"
SlurmWord = Annotated[str, StringConstraints(pattern=SLURM_WORD_PATTERN)]
WandbName = Annotated[str, StringConstraints(pattern=WANDB_NAME_PATTERN)]
Constraint = Annotated[str, StringConstraints(pattern=CONSTRAINT_PATTERN)]
MailType = Literal["NONE", "BEGIN", "END", "FAIL", "REQUEUE", "ALL", "INVALID_DEPEND", "STAGE_OUT",
                   "TIME_LIMIT", "TIME_LIMIT_90", "TIME_LIMIT_80", "TIME_LIMIT_50", "ARRAY_TASKS"]
MAIL_USER = re.compile(r"^[A-Za-z0-9_.+\-]+@[A-Za-z0-9.\-]+$")
NODE_LIST = re.compile(r"^[A-Za-z0-9_.,\[\]\-]{1,256}$")
# an ssh destination: [user@]host, never read as an option (no leading -)
SSH_HOST = re.compile(r"^([A-Za-z0-9_][A-Za-z0-9_.\-]*@)?[A-Za-z0-9_][A-Za-z0-9_.\-]{0,252}$")
REMOTE_DIR = re.compile(r"^(~/)?[A-Za-z0-9_./+\-]{1,512}$")


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Sbatch(Settings):
    """Extra sbatch options, each checked: what a site needs beyond the resources (allow-list)."""
    mail_type: Optional[list[MailType]] = Field(None, description="--mail-type (e.g. [END, FAIL])")
    mail_user: Optional[str] = Field(None, description="--mail-user (an e-mail address)")
    exclude: Optional[str] = Field(None, description="--exclude: nodes to avoid (a node list)")
    nodelist: Optional[str] = Field(None, description="--nodelist: nodes to use (a node list)")
    reservation: Optional[SlurmWord] = Field(None, description="--reservation")
    licenses: Optional[SlurmWord] = Field(None, description="--licenses")
    comment: Optional[SlurmWord] = Field(None, description="--comment (one word)")
    exclusive: Optional[bool] = Field(None, description="--exclusive")
    nice: Optional[int] = Field(None, ge=0, le=2147483645, description="--nice")

    @model_validator(mode="after")
    def _words(self):
        if self.mail_user is not None and not MAIL_USER.match(self.mail_user):
            raise ValueError(f"mail_user: {self.mail_user!r} is not an e-mail address")
        for key in ("exclude", "nodelist"):
            value = getattr(self, key)
            if value is not None and not NODE_LIST.match(value):
                raise ValueError(f"{key}: {value!r} is not a node list (letters, digits, _.,[]-)")
        return self

    def additional_parameters(self) -> dict:
        """submitit's additional_parameters for these options (names as sbatch spells them)."""
        out = {}
        for key, value in self.model_dump(exclude_none=True).items():
            if key == "mail_type":
                out[key] = ",".join(value)
            elif key == "exclusive":
                if value:
                    out[key] = True
            else:
                out[key] = value
        return out


class Resources(Settings):
    """What one job asks for, and how a sweep's runs are spread over jobs."""
    gpus: int = Field(0, ge=0, description="GPUs per node")
    cpus: int = Field(1, ge=1, description="CPU cores per process (torch threads of a run)")
    mem_gb: float = Field(4.0, gt=0, description="memory per job, GB")
    time_min: float = Field(60.0, gt=0, description="wall-time limit per job, minutes (longer runs requeue or chain)")
    nodes: int = Field(1, ge=1, description="nodes per job; nodes x tasks_per_node > 1 is a distributed run")
    tasks_per_node: int = Field(1, ge=1, description="processes per node (one per GPU is the usual choice)")
    pack: int = Field(1, ge=1, description="runs per job")
    pack_concurrent: bool = Field(False, description="run a pack's runs side by side instead of one after another")
    max_parallel: Optional[int] = Field(None, ge=1, description="jobs at once (default: the machine's cores / cpus locally, unthrottled on SLURM)")
    max_requeue: int = Field(3, ge=0, description="requeues per job before the runs go on in a chained job")
    max_chain: int = Field(20, ge=0, description="chained jobs per pack at most")
    fail_fast: int = Field(3, ge=0, description="stop starting runs of a submission once this many failed with the same error (0: never)")
    signal_delay_s: Optional[int] = Field(None, ge=0, description="seconds before the limit at which SLURM sends USR2")
    partition: Optional[SlurmWord] = None
    account: Optional[SlurmWord] = None
    qos: Optional[SlurmWord] = None
    constraint: Optional[Constraint] = None
    sbatch: Sbatch = Field(default_factory=Sbatch, description="extra sbatch options (allow-listed)")

    @property
    def world_size(self) -> int:
        """Processes of one run: nodes x tasks_per_node (1: an ordinary run)."""
        return self.nodes * self.tasks_per_node

    @model_validator(mode="after")
    def _distributed(self):
        if self.world_size > 1 and self.pack > 1:
            raise ValueError("pack: a distributed run (nodes x tasks_per_node > 1) takes the whole "
                             "allocation; set pack: 1")
        return self

    def parallel_jobs(self, executor: str) -> int:
        """max_parallel, else what the executor allows: this machine's cores locally, 1000 on SLURM."""
        if self.max_parallel is not None:
            return self.max_parallel
        if executor == "slurm":
            return 1000
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // (self.cpus * self.world_size))


class Checkpoint(Settings):
    """When a run saves, and which checkpoints it keeps."""
    every_min: Optional[float] = Field(10.0, ge=0, description="minutes between checkpoints (null: only on steps/stop)")
    every_steps: Optional[int] = Field(None, ge=1, description="steps between checkpoints")
    keep_last: int = Field(2, ge=1, description="newest checkpoints kept")
    keep_every: Optional[int] = Field(None, ge=1, description="also keep every checkpoint whose step is a multiple of this")
    margin_s: Optional[float] = Field(None, ge=0, description="seconds before the wall clock at which a run saves and stops")

    def margin_s_for(self, time_min: float) -> float:
        """margin_s, else 10% of the limit within [5 s, 120 s]."""
        if self.margin_s is not None:
            return float(self.margin_s)
        return float(min(120.0, max(5.0, 6.0 * time_min)))

    def for_context(self) -> dict:
        """What RunContext needs (the retention and interval keys)."""
        return self.model_dump(include={"every_min", "every_steps", "keep_last", "keep_every"})


class WandB(Settings):
    """One Weights & Biases run per run: id = the run_id (a requeued run goes on in the same W&B run),
    name = the run's label, config = the run's config; files in <run dir>/wandb/."""
    project: Optional[WandbName] = Field(None, description="W&B project (null: the sweep's name)")
    entity: Optional[WandbName] = Field(None, description="W&B user or team (null: the account's default)")
    mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="offline: no network, `wandb sync` the offline-run dirs later from a machine that "
                               "has it; $WANDB_MODE, where set, wins")


class Logging(Settings):
    """Where ctx.log's metrics go besides metrics.jsonl (jobs/runtime/loggers.py); everything off by default."""
    tensorboard: bool = Field(False, description="TensorBoard event files in <run dir>/tensorboard/")
    wandb: Optional[WandB] = Field(None, description="a W&B run per run: a mapping, or true for the defaults "
                                                     "(false / null: off)")
    system: Optional[float] = Field(None, gt=0, description="seconds between samples of the run's CPU %, RSS and "
                                    "(NVML) GPU utilisation, memory, power, logged as sys_* metrics (null: off)")

    @field_validator("wandb", mode="before")
    @classmethod
    def _switch(cls, value):
        if value is True:
            return {}
        if value is False:
            return None
        if value is None or isinstance(value, (dict, WandB)):
            return value
        raise ValueError(f"expected true, false or a mapping {{project, entity, mode}}, got {value!r}")

    @field_validator("system", mode="before")
    @classmethod
    def _seconds(cls, value):
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)           # `system: 30` is as good as 30.0
        return value

    @property
    def enabled(self) -> bool:
        """Is any backend on?"""
        return self.tensorboard or self.wandb is not None

    @field_validator("tensorboard", "wandb", mode="after")
    @classmethod
    def _extra_installed(cls, value, info):
        # said when the spec is read (plan, submit), not in a job hours later
        if value not in (None, False) and not extra_installed(info.field_name):
            raise ValueError(f"{info.field_name} is on, but the {info.field_name} package is not installed here: "
                             f"pip install 'hpcsweep[{info.field_name}]' (or turn it off)")
        return value


class Budget(Settings):
    """`search.budget`: the config key that says how far a trial trains, and its rungs."""
    key: str = Field(..., min_length=1, description="the task's config key raised by promotion (epochs, steps)")
    min: int = Field(..., ge=1, description="the first rung's budget")
    max: int = Field(..., ge=1, description="the last rung's budget (a trial never trains beyond it)")
    reduction: int = Field(3, ge=2, description="eta: a rung keeps its top 1/reduction; budgets grow by this factor")

    @model_validator(mode="after")
    def _order(self):
        if self.min >= self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        return self

    def rungs(self) -> list[int]:
        """The budget of each rung: min * reduction**r while below max, then max."""
        out, b = [], self.min
        while b < self.max:
            out.append(b)
            b *= self.reduction
        return out + [self.max]


class Search(Settings):
    """`search:` of a stage: adaptive search over `space`, decided where each result lands."""
    method: Literal["asha", "tpe"] = Field(..., description="asha: asynchronous successive halving; tpe: Optuna's TPE")
    metric: str = Field(..., min_length=1, description="the metric the task logs with ctx.log (its last value counts)")
    mode: Literal["min", "max"] = Field("min", description="whether a smaller or a larger metric is better")
    budget: Optional[Budget] = Field(None, description="asha: the rungs (required); tpe: each trial trains to max")
    trials: int = Field(..., ge=1, le=100_000, description="configurations sampled")
    parallel: int = Field(1, ge=1, le=1000, description="at most this many trials run at once (worker jobs)")
    seed: int = Field(0, description="the sampler's seed: the same spec samples the same trials")
    space: dict = Field(..., description="key -> {uniform|loguniform|choice|randint: ...}")

    @model_validator(mode="after")
    def _budget(self):
        if self.method == "asha" and self.budget is None:
            raise ValueError("asha needs budget: {key, min, max, reduction}")
        return self

    def rungs(self) -> list[int]:
        return self.budget.rungs() if self.budget is not None else []


def extra_installed(module: str) -> bool:
    """Is an optional package importable here (looked up, not imported)?"""
    import importlib.util
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class Partition(Settings):
    max_time_min: Optional[float] = Field(None, gt=0)
    requeue: Optional[bool] = None


class ClusterProfile(Settings):
    """One entry of env/clusters.yaml."""
    name: str = "local"
    description: str = ""
    partition: Optional[SlurmWord] = None
    account: Optional[SlurmWord] = None
    qos: Optional[SlurmWord] = None
    constraint: Optional[Constraint] = None
    gpu_syntax: Literal["gres", "gpus"] = Field("gres", description="--gres=gpu:[type:]N or --gpus=[type:]N")
    gpu_type: Optional[SlurmWord] = None
    max_time_min: Optional[float] = Field(None, gt=0, description="the partition's wall-time limit")
    signal_delay_s: Optional[int] = Field(None, ge=0)
    array_limit: Optional[int] = Field(None, ge=1)
    requeue: bool = True
    setup: list[str] = Field(default_factory=list, description="shell lines run before the job")
    watch_every_s: float = Field(10.0, gt=0, description="`watch` refreshes at most this often (each refresh: one "
                                 "squeue and one sacct call; a shared login node thanks you for a long one)")
    root: Optional[str] = Field(None, description="where sweep dirs live (with `ssh`: on the cluster)")
    partitions: dict[str, Partition] = Field(default_factory=dict)
    sbatch: Sbatch = Field(default_factory=Sbatch)
    # a cluster reached from a laptop (jobs/sched/remote.py)
    ssh: Optional[str] = Field(None, description="the login host (user@host, or a Host of ~/.ssh/config): submit, "
                               "resume, status, cancel, logs and watch run there over one SSH connection")
    ssh_config: Optional[str] = Field(None, description="an ssh config file to use (ssh -F) instead of ~/.ssh/config")
    remote_dir: str = Field("hpcsweep-projects", description="on the login host: where the laptop's project is "
                            "copied before a submit (relative to the home, or absolute)")
    remote_command: list[str] = Field(["hpcsweep"], description="on the login host: the command that runs hpcsweep, "
                                      "run in the project's copy (e.g. [~/venv/bin/hpcsweep])")
    sync_max_mb: float = Field(200.0, gt=0, description="a project larger than this is not copied to the login "
                               "host (a data file left in it, most likely): the error names the largest files")
    mirror: Optional[str] = Field(None, description="on the laptop: where pull and aggregate keep copies of this "
                                  "cluster's sweep dirs (default: <the local root>/<profile name>)")

    @field_validator("remote_command", mode="before")
    @classmethod
    def _command_words(cls, value):
        if isinstance(value, str):          # one line, split as a shell would: `~/venv/bin/python main.py`
            import shlex
            try:
                return shlex.split(value)
            except ValueError as e:
                raise ValueError(f"cannot split {value!r} into words: {e}")
        return value

    @model_validator(mode="after")
    def _setup_lines(self):
        for line in self.setup:
            if "\n" in line or line.lstrip().startswith("#SBATCH"):
                raise ValueError("setup: expected single shell lines (no newline, no #SBATCH lines)")
        if self.ssh is not None and not SSH_HOST.match(self.ssh):
            raise ValueError(f"ssh: {self.ssh!r} is not a login host (user@host or a Host name: letters, digits, _.-)")
        if not REMOTE_DIR.match(self.remote_dir) or ".." in self.remote_dir.split("/"):
            raise ValueError(f"remote_dir: {self.remote_dir!r} is not a plain path (letters, digits, _./+-, a "
                             "leading ~/ for the home; no ..)")
        if not self.remote_command or any(not w or "\n" in w or "\0" in w for w in self.remote_command):
            raise ValueError(f"remote_command: expected a command (a word list or one line), got {self.remote_command!r}")
        return self

    def limits(self, partition) -> tuple[Optional[float], bool]:
        """(wall-time limit in minutes, requeue allowed) on `partition`."""
        part = self.partitions.get(partition) or Partition()
        limit = part.max_time_min if part.max_time_min is not None else self.max_time_min
        return limit, part.requeue if part.requeue is not None else self.requeue


PATTERN_WORDS = {SLURM_WORD_PATTERN: "a plain SLURM name (letters, digits, _.:,+-)",
                 CONSTRAINT_PATTERN: "a constraint expression (letters, digits, _.&|[]*,:-)",
                 WANDB_NAME_PATTERN: "a W&B name (letters, digits, _.+-; 128 at most)"}


def settings_error(e: ValidationError) -> tuple[tuple, str]:
    """(key path, message) of the first problem in a ValidationError, said for people."""
    err = e.errors()[0]
    loc = tuple(p for p in err["loc"] if p != "__root__")
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "extra_forbidden":
        return loc, "unknown key"
    if kind == "missing":
        return loc, "missing key"
    if kind == "value_error":
        return loc, err["msg"].removeprefix("Value error, ")
    if kind == "literal_error":
        options = re.findall(r"'([^']*)'", ctx.get("expected", ""))
        return loc, f"expected one of {ctx.get('expected')}, got {got!r}{did_you_mean(got, options)}"
    expected = {
        "int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
        "string_type": "a string", "list_type": "a list", "dict_type": "a mapping",
        "model_type": "a mapping", "model_attributes_type": "a mapping",
        "string_pattern_mismatch": PATTERN_WORDS.get(ctx.get("pattern"), f"text matching {ctx.get('pattern')}"),
        "greater_than": "a positive number" if ctx.get("gt") == 0 else f"a number > {ctx.get('gt')}",
        "greater_than_equal": ("a non-negative number" if ctx.get("ge") == 0 else
                               "a positive integer" if ctx.get("ge") == 1 else f"a number >= {ctx.get('ge')}"),
        "less_than_equal": f"a number <= {ctx.get('le')}",
    }.get(kind)
    if expected is None:
        return loc, f"{err['msg']}, got {got!r}"
    return loc, f"expected {expected}, got {got!r}"


def known_keys(model) -> list[str]:
    return list(model.model_fields)


def model_at(model, path):
    """The settings model that holds the keys at `path` inside `model` (("sbatch",) in Resources: Sbatch)."""
    for key in path:
        field = model.model_fields.get(key) if isinstance(key, str) else None
        if field is None:
            return model
        inner = [a for a in (typing.get_args(field.annotation) or (field.annotation,))
                 if isinstance(a, type) and issubclass(a, BaseModel)]
        if not inner:
            return model
        model = inner[0]
    return model
