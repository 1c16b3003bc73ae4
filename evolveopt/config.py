"""Run configurations (``experiments/*.yaml``): strict parsing into frozen dataclasses.

Every section is a dataclass; an unknown key, a wrong type or an out-of-range value is a
:class:`ConfigError` naming the file, the dotted key and what is allowed. ``--set a.b=value``
overrides apply to the raw mapping before validation, so they are checked the same way.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from evolveopt.errors import EvolveOptError
from evolveopt.genome.genes import as_written_number
from evolveopt.genome.io import resolve_genome_path
from evolveopt.search.algorithm import GAConfig
from evolveopt.search.space import SearchSpace, allowed_choices


class ConfigError(EvolveOptError, ValueError):
    """A run configuration is malformed."""


@dataclass(frozen=True)
class FitnessConfig:
    tasks: tuple[dict[str, Any], ...] = ({"name": "digits_mlp"},)
    budget: int = 300
    seeds: tuple[int, ...] = (0, 1)
    eta: int = 3
    rungs: int = 3
    max_members: int | None = None  # None: 256 on CPU, what fits in half the free memory on CUDA
    objective: str = "heldout_loss"  # train_loss | heldout_loss | combined (evaluation/fitness.py; docs/fitness.md)
    lr_sweep: tuple[float, ...] = (1.0,)  # each genome also trains at lr·m for every m; (1.0,): its own lr only
    lr_aggregate: str = "soft_min"  # best | soft_min: a task's score over the sweep (evaluation/fitness.py)
    funnel: tuple[dict[str, Any], ...] = ()  # stages {tasks, top, budget} of larger tasks (evaluation/funnel.py)


@dataclass(frozen=True)
class BackendConfig:
    kind: str = "local"  # local | ray
    address: str | None = None  # Ray cluster to join (implies kind ray); None: RAY_ADDRESS, else a new local one
    num_cpus: int | None = None  # CPUs of a local Ray cluster (default: all)
    gpus_per_actor: float = 0.0  # > 0: long-lived GPU actors with this share of a GPU each
    unit_timeout: float = 1800.0  # seconds before a unit of work is abandoned
    max_retries: int = 3  # retries of a unit whose worker died
    object_store_mb: int = 128
    threads: int | None = None  # CPU threads per unit; None: the CPUs free to it (evolveopt/evaluation/threads.py)
    runtime_env: dict[str, Any] = field(default_factory=dict)  # Ray's runtime_env for the workers (working_dir, ...)
    speculate: bool = True  # generational, several workers: start likely promotions' next rung early (same results)


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    seed: int = 0
    device: str = "cpu"
    search: GAConfig = field(default_factory=GAConfig)
    space: SearchSpace = field(default_factory=SearchSpace)
    fitness: FitnessConfig = field(default_factory=FitnessConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)


# (low, high) for numbers; a tuple of strings for choices
RULES: dict[str, Any] = {
    "seed": (0, 2**63 - 1),
    "device": lambda v: v == "cpu" or v.startswith("cuda"),
    "search.population": (2, 100_000),
    "search.generations": (0, 100_000),
    "search.elites": (0, 100_000),
    "search.tournament": (1, 1000),
    "search.crossover_rate": (0.0, 1.0),
    "search.mutation_rate": (0.0, 1.0),
    "search.gene_mutation_rate": (0.0, 1.0),
    "search.gene_probability": (0.0, 1.0),
    "search.gene_sigma": (0.0, 10.0),
    "search.hall_of_fame": (1, 10_000),
    "search.seed_variants": (0, 100),
    "search.dedupe_tries": (0, 1000),
    "search.mode": ("generational", "steady_state"),
    "search.in_flight_per_worker": (1, 1000),
    "search.islands": (1, 1000),
    "search.migration_interval": (0, 100_000_000),
    "search.migrants": (1, 100_000),
    "space.max_terms": (1, 6),
    "space.max_buffers": (1, 64),
    "space.stale_probability": (0.0, 1.0),
    "space.normalize_first_probability": (0.0, 1.0),
    "space.normalized_clip_probability": (0.0, 1.0),
    "fitness.budget": (1, 10_000_000),
    "fitness.eta": (2, 100),
    "fitness.rungs": (1, 10),
    "fitness.max_members": (1, 1_000_000),
    "fitness.objective": ("train_loss", "heldout_loss", "combined"),  # read by evaluation/fitness.py
    "fitness.lr_sweep": (1e-3, 1e3),  # each multiplier; 1..MAX_LR_SWEEP of them, no two equal
    "fitness.lr_aggregate": ("best", "soft_min"),  # read by evaluation/fitness.py
    "fitness.funnel.top": (1, 100_000),  # candidates entering a stage, per generation (steady state: per epoch)
    "backend.kind": ("local", "ray"),
    "backend.num_cpus": (1, 100_000),
    "backend.gpus_per_actor": (0.0, 64.0),
    "backend.unit_timeout": (1.0, 7 * 24 * 3600.0),
    "backend.max_retries": (0, 100),
    "backend.object_store_mb": (64, 1_000_000),
    "backend.threads": (1, 4096),
}


def parse_config(data: Any, source: str = "config") -> RunConfig:
    """Validate a mapping into a :class:`RunConfig`. A ``backend.address`` means the Ray backend:
    ``kind`` left out becomes ``ray``; ``kind: local`` next to an address is an error."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a run config must be a mapping, got {type(data).__name__}")
    backend = data.get("backend")
    if isinstance(backend, dict) and backend.get("address"):
        if "kind" not in backend:
            data = {**data, "backend": {**backend, "kind": "ray"}}
        elif backend["kind"] == "local":
            raise ConfigError(f"{source}: backend.address: {backend['address']!r} is a Ray cluster to join, but "
                              "backend.kind is local (in-process); set backend.kind: ray or drop backend.address")
    config = _build(RunConfig, data, "", source)
    _check_cross_fields(config, source)
    return config


# Fields added after runs were first recorded, with the value every run recorded before them ran with:
# a run's resolved config.yaml that lacks one is read with that value, never with today's default.
RECORDED_BEFORE: dict[str, Any] = {"fitness.objective": "train_loss", "fitness.lr_sweep": [1.0]}
MAX_LR_SWEEP = 8  # learning-rate multipliers per genome at most (each one is a full evaluation)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (), recorded: bool = False) -> RunConfig:
    """Read a YAML run config and apply ``key.sub=value`` overrides. ``recorded``: the file is a run's
    resolved config.yaml, so a field it lacks is one it predates (:data:`RECORDED_BEFORE`)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise ConfigError(f"{path}: {where}not valid YAML ({getattr(exc, 'problem', exc)})") from None
    data = {} if data is None else data
    if recorded and isinstance(data, dict):
        for key, value in RECORDED_BEFORE.items():
            section, name = key.split(".")
            if isinstance(data.get(section), dict) and name not in data[section]:
                data = {**data, section: {**data[section], name: value}}
    for item in overrides:
        data = apply_override(data, item, str(path))
    return parse_config(data, str(path))


def apply_override(data: Any, item: str, source: str) -> dict[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got '{item}'")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a run config must be a mapping")
    value = yaml.safe_load(raw) if raw else ""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: '{part}' is not a section")
    node[parts[-1]] = value
    return data


def backend_flags(backend: str | None, address: str | None) -> list[str]:
    """``--backend`` and ``--address`` as config overrides. ``--address`` alone means the Ray backend;
    ``--backend local`` drops a config's address (it runs in this process); both together are refused."""
    if address and backend == "local":
        raise ConfigError(f"--address {address} joins a Ray cluster, --backend local runs in this process: "
                          "give one of them (--address alone means --backend ray)")
    if address:
        return ["backend.kind=ray", f"backend.address={json.dumps(address)}"]  # quoted: YAML reads [::1]:6379 as a list
    if backend == "local":
        return ["backend.kind=local", "backend.address=null"]
    return [f"backend.kind={backend}"] if backend else []


def to_plain(config: Any) -> Any:
    """A config as plain YAML-able data (the resolved config written into a run directory)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_plain(getattr(config, f.name)) for f in fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_plain(v) for v in config]
    if isinstance(config, dict):
        return {k: to_plain(v) for k, v in config.items()}
    return config


# ----------------------------------------------------------------------------- internals


def _build(cls: type, data: Any, prefix: str, source: str) -> Any:
    where = prefix.rstrip(".") or "top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    for key in data:
        if key not in known:
            raise ConfigError(f"{source}: {prefix}{key}: unknown key (allowed: {', '.join(known)})")
    defaults = cls()
    values = {name: _value(getattr(defaults, name), value, f"{prefix}{name}", source) for name, value in data.items()}
    return cls(**values)


def _value(default: Any, value: Any, key: str, source: str) -> Any:
    if dataclasses.is_dataclass(default):
        return _build(type(default), value, f"{key}.", source)
    rule = RULES.get(key)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key}: expected true or false, got {value!r}")
        return value
    if isinstance(default, (int, float)) or (default is None and isinstance(rule, tuple) and
                                               isinstance(rule[0], (int, float))):
        return _number(default, value, key, source, rule)
    if isinstance(default, tuple):
        if not isinstance(value, list) or (not value and key not in ("search.seed_genomes", "fitness.funnel")):
            raise ConfigError(f"{source}: {key}: expected a non-empty list, got {value!r}")
        return _list(key, value, source)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}: expected a mapping, got {value!r}")
        return value
    if value is None and default is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{source}: {key}: expected a string, got {value!r}")
    if isinstance(rule, tuple) and value not in rule:
        raise ConfigError(f"{source}: {key}: '{value}' is not allowed (allowed: {', '.join(rule)})")
    if callable(rule) and not rule(value):
        raise ConfigError(f"{source}: {key}: '{value}' is not allowed")
    return value


def _number(default: Any, value: Any, key: str, source: str, rule: Any) -> Any:
    if value is None and default is None:
        return None
    integer = isinstance(default, int) or (default is None and isinstance(rule[0], int))
    value = as_written_number(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{source}: {key}: expected {kind}, got {value!r}")
    if rule is not None and not rule[0] <= value <= rule[1]:
        raise ConfigError(f"{source}: {key}: {value!r} is out of range [{rule[0]}, {rule[1]}]")
    return int(value) if integer else float(value)


def _list(key: str, value: list, source: str) -> tuple:
    if key == "fitness.tasks":
        return _tasks(key, value, source)
    if key == "fitness.funnel":
        return tuple(_funnel_stage(f"{key}[{i}]", stage, source) for i, stage in enumerate(value))
    if key == "fitness.seeds":
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
            raise ConfigError(f"{source}: {key}: expected non-negative integers, got {value!r}")
        return tuple(value)
    if key == "fitness.lr_sweep":
        return _lr_sweep(key, value, source)
    if key == "search.seed_genomes":
        for i, name in enumerate(value):
            try:
                resolve_genome_path(str(name))
            except EvolveOptError as exc:
                raise ConfigError(f"{source}: {key}[{i}]: {exc}") from None
        return tuple(str(v) for v in value)
    if not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{source}: {key}: expected a list of strings, got {value!r}")
    if key.startswith("space."):
        allowed = allowed_choices(key.split(".", 1)[1])
        for v in value:
            if v not in allowed:
                raise ConfigError(f"{source}: {key}: '{v}' is not allowed (allowed: {', '.join(sorted(allowed))})")
    return tuple(value)


def _tasks(key: str, value: list, source: str) -> tuple[dict[str, Any], ...]:
    from evolveopt.tasks import make_task  # validates names and options

    specs = []
    for i, item in enumerate(value):
        spec = {"name": item} if isinstance(item, str) else item
        try:
            make_task(spec)
        except EvolveOptError as exc:
            raise ConfigError(f"{source}: {key}[{i}]: {exc}") from None
        specs.append(dict(spec))
    return tuple(specs)


FUNNEL_STAGE_KEYS = ("tasks", "top", "budget")


def _funnel_stage(key: str, stage: Any, source: str) -> dict[str, Any]:
    """A funnel stage: ``tasks`` (as fitness.tasks), ``top`` (candidates that enter it) and an optional
    ``budget`` (default: fitness.budget)."""
    if not isinstance(stage, dict):
        raise ConfigError(f"{source}: {key}: expected a mapping with tasks and top, got {stage!r}")
    for name in stage:
        if name not in FUNNEL_STAGE_KEYS:
            raise ConfigError(f"{source}: {key}.{name}: unknown key (allowed: {', '.join(FUNNEL_STAGE_KEYS)})")
    for name in ("tasks", "top"):
        if name not in stage:
            raise ConfigError(f"{source}: {key}.{name}: missing (a stage needs tasks and top)")
    tasks = stage["tasks"]
    if not isinstance(tasks, list) or not tasks:
        raise ConfigError(f"{source}: {key}.tasks: expected a non-empty list, got {tasks!r}")
    out = {"tasks": list(_tasks(f"{key}.tasks", tasks, source)),
           "top": _number(1, stage["top"], f"{key}.top", source, RULES["fitness.funnel.top"])}
    if stage.get("budget") is not None:
        out["budget"] = _number(1, stage["budget"], f"{key}.budget", source, RULES["fitness.budget"])
    return out


def _lr_sweep(key: str, value: list, source: str) -> tuple[float, ...]:
    """1..MAX_LR_SWEEP distinct multipliers, each in RULES' range."""
    low, high = RULES[key]
    multipliers = [as_written_number(v) for v in value]
    for v in multipliers:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high:
            raise ConfigError(f"{source}: {key}: expected positive learning-rate multipliers in [{low}, {high}], "
                              f"got {v!r}")
    if len(multipliers) > MAX_LR_SWEEP:
        raise ConfigError(f"{source}: {key}: {len(multipliers)} multipliers, at most {MAX_LR_SWEEP} allowed")
    if len(set(map(float, multipliers))) < len(multipliers):
        raise ConfigError(f"{source}: {key}: a multiplier appears twice in {value!r}")
    return tuple(float(v) for v in multipliers)


def _check_cross_fields(config: RunConfig, source: str) -> None:
    funnel = config.fitness.funnel
    for i in range(1, len(funnel)):
        if funnel[i]["top"] > funnel[i - 1]["top"]:
            raise ConfigError(f"{source}: fitness.funnel[{i}].top: {funnel[i]['top']} exceeds the previous stage's "
                              f"top ({funnel[i - 1]['top']}): only a stage's entrants can climb to the next")
    if config.search.elites >= config.search.population:
        raise ConfigError(f"{source}: search.elites: {config.search.elites} must be below search.population "
                          f"({config.search.population})")
    if config.search.tournament > config.search.population:
        raise ConfigError(f"{source}: search.tournament: {config.search.tournament} exceeds search.population")
    search = config.search
    if search.islands > 1:
        if search.mode != "steady_state":
            raise ConfigError(f"{source}: search.islands: {search.islands} islands need search.mode: steady_state "
                              f"(the {search.mode} mode has one population)")
        if search.islands > search.population:
            raise ConfigError(f"{source}: search.islands: {search.islands} exceeds search.population "
                              f"({search.population}): every island needs an individual")
        if search.migrants > search.population // search.islands:
            raise ConfigError(f"{source}: search.migrants: {search.migrants} exceeds search.population / "
                              f"search.islands ({search.population} // {search.islands} = "
                              f"{search.population // search.islands}, the smallest island)")
