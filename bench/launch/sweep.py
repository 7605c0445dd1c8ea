"""Sweeps: a YAML spec expanded into runs (methods x budgets x seeds), run in turn, skipping finished ones.

Spec:
    name: demo
    output_dir: runs/demo            # records in <output_dir>/records, run folders in <output_dir>/runs
    leaderboard_dir: leaderboards    # optional: regenerate the leaderboards when the sweep ends
    base: {data: {...}, train: {...}}   # a RunConfig mapping shared by every run
    methods: [supervised, {name: fixmatch, args: {threshold: 0.9}, config: {train: {mu: 2}}}]
    budgets: [0.02, 0.1]
    seeds: [0, 1, 2]
    references: [fullysupervised]    # methods trained on all labels: one run per seed, not per budget
    requires: {model.pretrained_file: "the MS-Celeb-1M ResNet-18"}   # optional: keys every cell must set
A method entry may carry its own `budgets` (a method whose paper uses another budget protocol, set in its
`config`) and its own `requires` (replacing the spec's). A command-line override `key=value` applies to every cell
but those whose entry's `config` sets that key; `METHOD:key=value` applies to that method's cells only.
    extends: demo.yaml               # optional: start from another spec's keys (relative path)
    cluster: {partition: gpu, time_min: 240, cpus_per_task: 8, gpus_per_node: 1, mem_gb: 32,
              array_parallelism: 16}   # optional: resources per job for `--executor slurm|local`
    runs_per_gpu: 4                  # optional: runs packed into one job, sharing its GPU (default 1)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.checks import check_value
from bench.config import NonNegativeInt, RunConfig, apply_mapping, apply_overrides, layered, load_yaml, run_id
from bench.errors import FERBenchError
from bench.launch.pack import check_runs_per_gpu


@dataclass
class SweepSpec:
    name: str
    output_dir: str
    base: dict[str, Any]
    methods: list[dict[str, Any]]
    budgets: list[float]
    seeds: list[int]
    references: list[dict[str, Any]] = field(default_factory=list)
    leaderboard_dir: str | None = None
    cluster: dict[str, Any] = field(default_factory=dict)
    runs_per_gpu: int = 1
    requires: dict[str, str] = field(default_factory=dict)


def _requires(value: Any, where: str) -> dict[str, str]:
    """`requires`: {dotted config key: what it is} (a list of keys is accepted too)."""
    if isinstance(value, list):
        value = {k: "" for k in value}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise FERBenchError(f"{where}: expected a mapping of config keys to what they are")
    return {k: str(v or "") for k, v in value.items()}


def _method_entries(items: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(items, list):
        raise FERBenchError(f"{where}: expected a list of method names or mappings")
    out = []
    for m in items:
        if isinstance(m, str):
            out.append({"name": m, "args": {}, "config": {}, "budgets": None, "requires": None})
        elif isinstance(m, dict) and isinstance(m.get("name"), str):
            unknown = sorted(set(m) - {"name", "args", "config", "budgets", "requires"})
            if unknown:
                raise FERBenchError(f"{where}: entry {m['name']!r}: unknown key(s) {', '.join(unknown)}")
            if isinstance(m.get("config"), dict) and "output_dir" in m["config"]:
                raise FERBenchError(f"{where}: entry {m['name']!r} sets output_dir in its config; a sweep keeps all "
                                    "it writes in one folder: set output_dir at the spec's top level")
            out.append({"name": m["name"], "args": dict(m.get("args") or {}), "config": dict(m.get("config") or {}),
                        "budgets": None if m.get("budgets") is None else
                        check_value(m["budgets"], list[float], f"{where}: {m['name']} budgets"),
                        "requires": None if m.get("requires") is None else
                        _requires(m["requires"], f"{where}: {m['name']} requires")})
        else:
            raise FERBenchError(f"{where}: entry {m!r} must be a method name or a mapping with 'name'")
    return out


def _spec_mapping(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A spec's keys, with those of the spec it `extends` (relative path, recursively) underneath."""
    here = path.resolve()
    if here in chain:
        cycle = " -> ".join(str(p) for p in (*chain[chain.index(here):], here))
        raise FERBenchError(f"{chain[-1]}: `extends` forms a cycle ({cycle}); a spec extends another spec once")
    d = load_yaml(path)
    if "extends" in d:
        d = {**_spec_mapping(path.parent / str(d.pop("extends")), (*chain, here)), **d}
    return d


def load_sweep(path: str | Path) -> SweepSpec:
    d = _spec_mapping(Path(path))
    missing = [k for k in ("methods", "seeds") if k not in d]
    if missing:
        raise FERBenchError(f"{path}: sweep spec is missing {', '.join(missing)}")
    empty = [k for k in ("methods", "seeds") if d[k] in (None, [])]
    if empty:
        raise FERBenchError(f"{path}: sweep spec has no {' and no '.join(empty)}: it would run nothing")
    if isinstance(d.get("base"), dict) and "output_dir" in d["base"]:
        raise FERBenchError(f"{path}: base sets output_dir; a sweep keeps all it writes in one folder: set "
                            "output_dir at the spec's top level")
    known = {"name", "output_dir", "base", "methods", "budgets", "seeds", "references", "leaderboard_dir", "cluster",
             "runs_per_gpu", "requires"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise FERBenchError(f"{path}: unknown sweep key(s) {', '.join(unknown)}; expected {', '.join(sorted(known))}")
    return SweepSpec(
        name=str(d.get("name", Path(path).stem)),
        output_dir=str(d.get("output_dir", f"runs/{Path(path).stem}")),
        base=dict(d.get("base") or {}),
        methods=_method_entries(d["methods"], f"{path}: methods"),
        budgets=check_value(d.get("budgets", []), list[float], f"{path}: budgets"),
        seeds=check_value(d["seeds"], list[NonNegativeInt], f"{path}: seeds"),
        references=_method_entries(d.get("references", []), f"{path}: references"),
        leaderboard_dir=d.get("leaderboard_dir"),
        cluster=dict(d.get("cluster") or {}),
        runs_per_gpu=check_runs_per_gpu(d.get("runs_per_gpu", 1), f"{path}: "),
        requires=_requires(d.get("requires") or {}, f"{path}: requires"),
    )


def expand(spec: SweepSpec, overrides: list[str] | None = None) -> list[RunConfig]:
    """Every run of the sweep, in a stable order (references first, then by budget, method, seed)."""
    return [cfg for _, cfg in cells(spec, overrides)]


def _dotted(mapping: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for k, v in mapping.items():
        keys.add(prefix + k)
        if isinstance(v, dict):
            keys |= _dotted(v, f"{prefix}{k}.")
    return keys


def for_method(overrides: list[str] | None, entry: dict[str, Any], spec: SweepSpec) -> list[str]:
    """The command-line overrides of one method entry's cells: `key=value` for every cell except those whose entry
    sets that key in its `config` (it pins it: e.g. FR-pretraining's ViT takes no ResNet checkpoint), and
    `METHOD:key=value` for that method's cells only (e.g. a checkpoint only one method reads)."""
    names = {e["name"] for e in spec.methods + spec.references}
    pinned = _dotted(entry["config"])
    method = entry["name"]
    out = []
    for item in overrides or []:
        key = item.split("=", 1)[0]
        target, sep, rest = key.partition(":")
        if sep and not rest.strip():
            raise FERBenchError(f"override {item!r}: no config key after {target + ':'!r}; expected "
                                f"METHOD:KEY=VALUE, e.g. {target}:method_args.threshold=0.9")
        if not sep:
            if key.strip() not in pinned:
                out.append(item)
            continue
        if target not in names:
            raise FERBenchError(f"override {item!r}: {target!r} is not a method of sweep {spec.name} "
                                f"({', '.join(sorted(names))})")
        if target == method:
            out.append(rest + item[len(key):])
    return out


def cells(spec: SweepSpec, overrides: list[str] | None = None) -> list[tuple[str, RunConfig]]:
    """(how errors name it, its config) for every run of the sweep, in `expand`'s order."""

    def one(entry: dict[str, Any], budget: float | None, seed: int) -> tuple[str, RunConfig]:
        label = cell_label(entry["name"], budget, seed)

        def user(cfg: RunConfig) -> None:  # what the spec and the command line write (on top of a recipe)
            apply_mapping(cfg, copy.deepcopy(spec.base))
            apply_mapping(cfg, copy.deepcopy(entry["config"]))
            cfg.method = entry["name"]
            cfg.method_args = {**cfg.method_args, **entry["args"]}
            cfg.seed = seed
            cfg.output_dir = spec.output_dir
            cfg.train.tracker_group = spec.name  # the trackers group a sweep's runs (W&B group, MLflow experiment)
            if budget is not None:
                cfg.data.budget = budget
            apply_overrides(cfg, for_method(overrides, entry, spec))
            if budget is None:  # trained on every label: one run id whatever the sweep's budget protocol
                cfg.data.protocol, cfg.data.budget = "fraction", 1.0

        try:
            cfg = layered(user)
            check_required(cfg, spec.requires if entry["requires"] is None else entry["requires"])
            return label, cfg
        except FERBenchError as e:
            raise FERBenchError(f"sweep {spec.name}, {label}: {e}") from e

    runs = [one(r, None, s) for r in spec.references for s in spec.seeds]
    budgets = list(dict.fromkeys([*spec.budgets, *(b for m in spec.methods for b in m["budgets"] or [])]))
    runs += [one(m, b, s) for b in budgets for m in spec.methods
             if b in (spec.budgets if m["budgets"] is None else m["budgets"]) for s in spec.seeds]
    seen: dict[str, str] = {}
    for label, cfg in runs:  # one run id is one run: a cell listed twice would be counted twice
        rid = run_id(cfg)
        if rid in seen:
            raise FERBenchError(f"sweep {spec.name}: {label} is the same run as {seen[rid]} ({rid}); list each cell "
                                "once (a method, budget or seed given twice?)")
        seen[rid] = label
    return runs


def check_required(cfg: RunConfig, requires: dict[str, str]) -> None:
    """Each required dotted key is set (not null, not empty) in `cfg`: one line naming it and what it is if not."""
    for key, what in requires.items():
        value: Any = cfg.to_dict()
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value in (None, "", [], {}):
            raise FERBenchError(f"{key} is required" + (f": {what}" if what else ""))


def settle_output_dir(spec: SweepSpec, runs: list[RunConfig]) -> None:
    """Everything a sweep writes (records, runs, status files, submission log, job logs) goes under one folder: its
    cells' `output_dir`, wherever that was set (the spec, its base, or an override on the command line)."""
    dirs = sorted({c.output_dir for c in runs})
    if len(dirs) > 1:
        raise FERBenchError(f"sweep {spec.name}: its cells write to {len(dirs)} output folders ({', '.join(dirs)}); "
                            "a sweep keeps all it writes in one: set output_dir once, for every cell")
    if dirs:
        spec.output_dir = dirs[0]


def cell_label(method: str, budget: float | None, seed: int) -> str:
    """How errors and listings name one cell of a sweep."""
    return f"cell {method} budget={'all' if budget is None else f'{budget:g}'} seed={seed}"


def validate_cells(spec: SweepSpec, labelled: list[tuple[str, RunConfig]]) -> None:
    """Every cell's checks (bench.engine.trainer.validate) before any data is prepared or job submitted; the
    first bad cell stops the sweep with one line naming it."""
    from bench.engine.trainer import validate

    for label, cfg in labelled:
        try:
            validate(cfg)
        except FERBenchError as e:
            raise FERBenchError(f"sweep {spec.name}, {label}: {e}") from e


def run_local(runs: list[RunConfig], show_progress: bool = True) -> tuple[list[dict], list[tuple[RunConfig, str]]]:
    """Run each config in this process, skipping those with a record; returns (records, failures)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from bench.engine.trainer import run_paths, train

    records: list[dict] = []
    failures: list[tuple[RunConfig, str]] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not show_progress) as progress:
        overall = progress.add_task("sweep", total=len(runs))
        for cfg in runs:
            done = run_paths(cfg).record.exists()
            try:
                rec = train(cfg, progress=None if done else progress)
            except FERBenchError as e:
                failures.append((cfg, str(e)))
                progress.console.print(f"[red]failed[/red] {cfg.method} budget={cfg.data.budget} seed={cfg.seed}: {e}")
                rec = None
            if rec is not None:
                records.append(rec)
                if not done:
                    acc = rec["metrics"]["final"]["accuracy"]
                    progress.console.print(
                        f"{rec['run_id']}: accuracy {acc:.4f} in {rec['wall_time_s']:.0f} s"
                    )
            progress.advance(overall)
    return records, failures
