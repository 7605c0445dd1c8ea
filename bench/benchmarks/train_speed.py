"""`ferbench bench train METHOD [KEY=VALUE ...]`: images/s of training end to end against the pure-compute ceiling.

In one process, on synthfer generated locally: N steps of the method through the real engine (`StageRun.step`,
the trainer's own step: the feed of `data.augment_on`, then autocast + `training_step` + backward + optimiser + EMA
and the method's hooks), and N steps of the same model and step on random tensors already on the device (no data
path at all: the ceiling). The ratio end_to_end / ceiling says how much of the accelerator the data path leaves
unused. Also measured: the CPU path (`augment_on: cpu`, views made in DataLoader workers) and, on CUDA, the
CUDA-graph variant (`compile: reduce-overhead`). The run is any config (dotted overrides) on top of the benchmark's
defaults (`BENCH_DEFAULTS`). Prints a table; optionally writes JSON.

`--contention` measures instead how the step holds up when another process takes a core: for each OpenMP wait policy
and thread count, a fresh process (OpenMP reads its settings when torch loads it) times the same steps idle and then
with CPU-bound busy processes running, and the table gives both rates, their ratio and the idle rate against libgomp's
default at the same thread count, with the CPU the other processes of the machine used meanwhile.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from bench.checks import check_value
from bench.config import Count, NonNegative, NonNegativeInt, RunConfig, build_config, config_from_dict
from bench.data.datasets import get_dataset
from bench.engine.stage import RunSetup, StageRun, build_stage_model
from bench.engine.trainer import make_accelerator, set_up_run, validate
from bench.errors import FERBenchError
from bench.method import Batch
from bench.startup import MARKER, SPIN_COUNT, VARIABLES, default_threads, users_own

#: the benchmark's run, under the user's overrides: FixMatch's resnet18 at 112 px, B=128, mu=7, on 2,000 generated
#: synthfer images; bf16 and channels-last on CUDA
BENCH_DEFAULTS = {"model.backbone": "resnet18", "data.image_size": 112, "train.batch_size": 128, "train.mu": 7,
                  "data.synthfer": "{n_train: 2000, n_test: 70, seed: 0}"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _random_like(batch: Batch) -> Batch:
    """The batch's shapes as random images already on the device; labels and indices kept."""
    def rnd(group: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        if group is None:
            return None
        return {k: torch.randn_like(v) if v.is_floating_point() else v.clone() for k, v in group.items()}
    return Batch(rnd(batch.labeled), rnd(batch.unlabeled))


#: the ranges of the benchmark's settings (the CLI checks its flags against the same types as it parses them)
SETTINGS = {"steps": Count, "warmup": NonNegativeInt, "busy": Count, "repeats": Count, "rounds": Count,
            "wait_quiet": NonNegative, "threads": list[Count]}


def check_settings(**values: Any) -> None:
    """Each setting in its range (`SETTINGS`), by the config's checker: one line naming the flag and the value."""
    for name, value in values.items():
        check_value(value, SETTINGS[name], f"bench train --{name.replace('_', '-')}")


def _rate(step: Callable[[], Any], steps: int, warmup: int, images_per_step: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return images_per_step * steps / (time.perf_counter() - t0)


def bench_config(method: str, overrides: list[str], timed: int) -> RunConfig:
    """The benchmark's run config: its defaults, CUDA's speed settings, then `overrides`; long enough for `timed`
    steps twice (end to end, then the ceiling on the same model)."""
    cuda = torch.cuda.is_available()
    defaults = {**BENCH_DEFAULTS, "data.workers": max(1, (os.cpu_count() or 2) - 1),
                "train.channels_last": str(cuda).lower(), "train.mixed_precision": "bf16" if cuda else "no"}
    return build_config(overrides=[f"method={method}", *(f"{k}={v}" for k, v in defaults.items()), *overrides,
                                   f"train.iterations={2 * timed}"])


def _stage_setup(cfg: RunConfig, stage_name: str | None) -> tuple[RunSetup, int]:
    """The run's set-up as the trainer makes it, and the index of the stage to measure (default: the last)."""
    method_cls = validate(cfg)
    classes = get_dataset(cfg.data.name).num_classes_for(cfg.data.label_protocol)
    names = [st.name for st in method_cls(num_classes=classes, **cfg.method_args).stages()]
    if stage_name is not None and stage_name not in names:  # before any data is generated
        raise FERBenchError(f"bench train --stage {stage_name}: method {cfg.method!r} trains the stages "
                            f"{', '.join(names)}")
    run = set_up_run(cfg, make_accelerator(cfg), method_cls)
    stages = run.method.stages()
    return run, [st.name for st in stages].index(stage_name) if stage_name else len(stages) - 1


def _stage_run(run: RunSetup, index: int, augment_on: str, compile_mode: str) -> StageRun:
    """A fresh set-up of stage `index` on the path `augment_on`: each earlier stage's (untrained) model handed on,
    as a run builds them."""
    cfg = config_from_dict(run.cfg.to_dict())
    cfg.data.augment_on = augment_on
    variant = dataclasses.replace(run, cfg=cfg)
    stages = variant.method.stages()
    previous = None
    for st in stages[: index + 1]:
        previous, _ = build_stage_model(variant, st, previous)
    sr = StageRun(variant, stages[index], previous, compile_mode=compile_mode)
    sr.model.train()
    return sr


def run_train_benchmark(method: str = "fixmatch", overrides: list[str] | None = None, *, steps: int = 20,
                        warmup: int = 3, cpu_path: bool = True, json_path: str | None = None,
                        stage: str | None = None) -> dict[str, Any]:
    """Measure and print end-to-end vs ceiling images/s; returns (and optionally writes) the results."""
    from rich.console import Console

    check_settings(steps=steps, warmup=warmup)
    cfg = bench_config(method, list(overrides or []), warmup + steps)
    if cfg.data.name != "synthfer" or cfg.data.synthfer.get("n_train", 14) < 14:
        raise FERBenchError("bench train: measures on synthfer with data.synthfer.n_train >= 14")
    run, index = _stage_setup(cfg, stage)
    cuda, device, console = torch.cuda.is_available(), run.accelerator.device, Console()
    measured: list[StageRun] = []

    def measure(aug: str, mode: str, ceiling: bool = True) -> dict[str, Any]:
        sr = _stage_run(run, index, aug, mode)
        measured.append(sr)
        with console.status(f"{aug} path, compile {mode}: {warmup} + {steps} steps"):
            e2e = _rate(sr.step, steps, warmup, sr.images_per_step, device)
            fixed = _random_like(sr.feed.batch(0)) if ceiling else None
            sr.feed.close()
            ceil = _rate(lambda: sr.step(fixed), steps, warmup, sr.images_per_step, device) if ceiling else None
        return {"augment_on": aug, "images_on": sr.feed.where, "workers": sr.cfg.data.workers if aug == "cpu" else 0,
                "compile": mode, "end_to_end_images_per_s": e2e, "ceiling_images_per_s": ceil,
                "ratio": e2e / ceil if ceil else None, "fused_optimizer": sr.fused[0],
                "fused_optimizer_note": sr.fused[1]}

    rows = [measure(cfg.data.augment_on, cfg.train.compile)]
    if cpu_path and cfg.data.augment_on != "cpu":  # the classic pipeline, against the same ceiling
        row = measure("cpu", cfg.train.compile, ceiling=False)
        row["ceiling_images_per_s"] = rows[0]["ceiling_images_per_s"]
        row["ratio"] = row["end_to_end_images_per_s"] / row["ceiling_images_per_s"]
        rows.append(row)
    if cuda and cfg.train.compile != "reduce-overhead":  # CUDA graphs: what launch-bound small batches gain
        rows.append(measure(cfg.data.augment_on, "reduce-overhead"))
    first = measured[0]
    head = rows[0]
    results = {
        "method": cfg.method, "stage": first.stage.name, "backbone": cfg.model.backbone,
        "image_size": cfg.data.image_size,
        "batch_size": first.cfg.train.batch_size, "mu": first.cfg.train.mu,  # the stage's own, as a run trains
        "images_per_step": first.images_per_step, "steps": steps, "warmup": warmup,
        "n_train": cfg.data.synthfer.get("n_train"), "device": str(device),
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "mixed_precision": cfg.train.mixed_precision, "channels_last": cfg.train.channels_last,
        "end_to_end_images_per_s": head["end_to_end_images_per_s"],
        "ceiling_images_per_s": head["ceiling_images_per_s"], "ratio": head["ratio"], "rows": rows,
    }
    return _report(console, _table(results), results, json_path)


def _report(console: Any, table: Any, results: dict[str, Any], json_path: str | None) -> dict[str, Any]:
    """Print a benchmark's table and, with `json_path`, write its results there."""
    console.print(table)
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
    return results


def _table(results: dict[str, Any]) -> Any:
    from rich.table import Table

    r = results
    stage = "" if r["stage"] == "main" else f" (stage {r['stage']})"
    table = Table(title=f"{r['method']}{stage} {r['backbone']} {r['image_size']}px B={r['batch_size']} mu={r['mu']}: "
                        f"{r['images_per_step']} images/step on {r['device_name']} ({r['steps']} timed steps after "
                        f"{r['warmup']})")
    for col in ("data path", "images on", "compile", "end to end (img/s)", "ceiling (img/s)", "ratio"):
        table.add_column(col, justify="right")
    for row in r["rows"]:
        path = f"{row['augment_on']}" + (f" ({row['workers']} workers)" if row["augment_on"] == "cpu" else "")
        table.add_row(path, row["images_on"], row["compile"], f"{row['end_to_end_images_per_s']:,.0f}",
                      f"{row['ceiling_images_per_s']:,.0f}", f"{row['ratio']:.2f}")
    return table


# ---- contention: idle vs another process holding a core, per OpenMP wait policy and thread count -------------------

#: the wait policies compared by default: libgomp's default (spin 300,000 times, then sleep), passive (sleep at once)
#: and bounded spin counts in between
POLICIES = ("spin", "passive", "spincount=0", "spincount=1000", f"spincount={SPIN_COUNT}", "spincount=10000",
            "spincount=100000")


def policy_env(policy: str) -> dict[str, str]:
    """The variables a process starts with under `policy`: spin | passive | active | spincount=N."""
    fixed = {"spin": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "active": {"OMP_WAIT_POLICY": "ACTIVE"}}
    if policy in fixed:
        return fixed[policy]
    name, _, count = policy.partition("=")
    if name == "spincount" and count.isdigit():
        return {"GOMP_SPINCOUNT": count}
    raise FERBenchError(f"bench train --policies: {policy!r}: expected spin, passive, active or spincount=N "
                        "(N a whole number)")


def _machine_cpu_s() -> tuple[float, float] | None:
    """CPU seconds the CPUs this process may use have spent busy (by anyone) and stolen by the hypervisor (a virtual
    machine's CPUs running something else), from /proc/stat; None off Linux."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    mine, busy, steal = {f"cpu{c}" for c in os.sched_getaffinity(0)}, 0, 0
    for line in lines:
        name, *fields = line.split()
        if name in mine:
            user, nice, system, _idle, _iowait, irq, softirq, stolen = map(int, fields[:8])
            busy += user + nice + system + irq + softirq
            steal += stolen
    hz = os.sysconf("SC_CLK_TCK")
    return busy / hz, steal / hz


def _process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def busy_processes(n: int, pinned: bool) -> Iterator[list[int]]:
    """`n` CPU-bound processes (a Python busy loop each), pinned one to a CPU from the last of this process's
    affinity when `pinned`, else placed by the scheduler; yields their pids and stops them on exit."""
    cpus = sorted(os.sched_getaffinity(0))
    procs: list[subprocess.Popen] = []
    try:
        for i in range(n):
            procs.append(subprocess.Popen([sys.executable, "-I", "-S", "-c", "while True: pass"]))
            if pinned:
                os.sched_setaffinity(procs[-1].pid, {cpus[-1 - i % len(cpus)]})
        time.sleep(0.3)  # past their start-up before the clock starts
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _cores_used(work: Callable[[], Any], busy: list[int]) -> dict[str, float | None]:
    """Run `work`; the seconds it took and the cores used meanwhile by this process, by the busy processes and by
    every other process on this process's CPUs (None where /proc cannot tell)."""
    machine0, own0, busy0 = _machine_cpu_s(), time.process_time(), sum(map(_process_cpu_s, busy))
    t0 = time.perf_counter()
    work()
    wall = time.perf_counter() - t0
    own, busy_s = time.process_time() - own0, sum(map(_process_cpu_s, busy)) - busy0
    machine = _machine_cpu_s()
    others = steal = None
    if machine is not None and machine0 is not None:
        others = max(0.0, machine[0] - machine0[0] - own - busy_s) / wall
        steal = (machine[1] - machine0[1]) / wall
    return {"wall_s": wall, "own_cores": own / wall, "busy_cores": busy_s / wall if busy else None,
            "others_cores": others, "steal_cores": steal}


#: the CPU other processes may use for the machine to count as quiet (`wait_quiet`). Stolen time is reported, not
#: counted: on a virtual machine, threads that sleep often halt its CPUs, and waking them shows up as stolen time
QUIET_CORES = 0.2
#: measurements of one kind in a process, at most, when the machine was not quiet during the first ones
TRIES = 3


def _disturbance(used: dict[str, float | None]) -> float:
    """Cores the other processes used meanwhile (0 where /proc cannot tell)."""
    return used["others_cores"] or 0.0


def _await_quiet(limit_s: float, busy: list[int]) -> float:
    """Wait, up to `limit_s`, until the other processes (not this one, not the busy ones) use under `QUIET_CORES`
    of this process's CPUs over a second; returns the seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        if _disturbance(_cores_used(lambda: time.sleep(1.0), busy)) < QUIET_CORES:
            break
    return time.perf_counter() - t0


def _timed_steps(sr: StageRun, steps: int, busy: list[int], wait_quiet: float) -> dict[str, Any]:
    """images/s of `steps` steps, with the cores used meanwhile (`_cores_used`). With `wait_quiet`, each try first
    waits up to that many seconds for the machine to be quiet, and a measurement the machine was not quiet during
    is made again, up to `TRIES` times; `disturbed` says whether the one kept was."""
    waited = 0.0

    def work() -> None:
        for _ in range(steps):
            sr.step()
        _sync(sr.accelerator.device)

    for _ in range(TRIES if wait_quiet > 0 else 1):
        waited += _await_quiet(wait_quiet, busy) if wait_quiet > 0 else 0.0
        used = _cores_used(work, busy)
        if _disturbance(used) < QUIET_CORES:
            break
    return {"images_per_s": sr.images_per_step * steps / used.pop("wall_s"), **used, "waited_s": waited,
            "disturbed": _disturbance(used) >= QUIET_CORES}


def _contention_child(request: dict[str, Any]) -> dict[str, Any]:
    """One setting, in a process started with it: warm-up, then `repeats` x (idle, contended) timings."""
    timed = request["warmup"] + request["repeats"] * request["steps"] * TRIES
    cfg = bench_config(request["method"], request["overrides"], timed)
    run, index = _stage_setup(cfg, request["stage"])
    sr = _stage_run(run, index, cfg.data.augment_on, cfg.train.compile)
    for _ in range(request["warmup"]):
        sr.step()
    idle, contended = [], []
    for _ in range(request["repeats"]):
        idle.append(_timed_steps(sr, request["steps"], [], request["wait_quiet"]))
        with busy_processes(request["busy"], request["pinned"]) as pids:
            contended.append(_timed_steps(sr, request["steps"], pids, request["wait_quiet"]))
    sr.feed.close()
    return {"torch_threads": torch.get_num_threads(), "env": {k: os.environ.get(k) for k in VARIABLES},
            "images_per_step": sr.images_per_step, "idle": idle, "contended": contended}


def _child_env(setting: dict[str, str]) -> dict[str, str]:
    """This environment without any OpenMP setting (the user's or FERBench's), with `setting` instead, and this
    checkout's `bench` first on the path."""
    env = {k: v for k, v in os.environ.items() if k not in (*VARIABLES, MARKER)}
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return {**env, **setting}


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def run_contention_benchmark(method: str = "fixmatch", overrides: list[str] | None = None, *, steps: int = 40,
                             warmup: int = 5, policies: list[str] | None = None, threads: list[int] | None = None,
                             busy: int = 1, pinned: bool = False, repeats: int = 1, rounds: int = 1,
                             wait_quiet: float = 0.0, json_path: str | None = None,
                             stage: str | None = None) -> dict[str, Any]:
    """Idle vs contended images/s for each wait policy x thread count (one thread: one row, as it never waits for
    another); `rounds` passes over the settings, each setting's median shown; on a shared machine, `wait_quiet`
    seconds at most before each measurement for the other processes to go quiet. Prints a table; returns (and
    optionally writes) the results."""
    from rich.console import Console

    policies = list(policies or POLICIES)
    threads = list(threads or dict.fromkeys([default_threads(), 1]))
    envs = {p: policy_env(p) for p in policies}
    check_settings(steps=steps, warmup=warmup, busy=busy, repeats=repeats, rounds=rounds, wait_quiet=wait_quiet,
                   threads=threads)
    overrides = list(overrides or [])
    cfg = bench_config(method, overrides, warmup + repeats * steps)
    if cfg.data.name != "synthfer" or cfg.data.synthfer.get("n_train", 14) < 14:
        raise FERBenchError("bench train: measures on synthfer with data.synthfer.n_train >= 14")
    _stage_setup(cfg, stage)  # checks the stage and prepares the data once, before the measuring processes
    console = Console(width=200 if not sys.stdout.isatty() else None)
    settings = [(t, p) for t in threads for p in (policies if t > 1 else policies[:1])]
    request = {"method": method, "overrides": overrides, "steps": steps, "warmup": warmup, "repeats": repeats,
               "busy": busy, "pinned": pinned, "stage": stage, "wait_quiet": wait_quiet}
    own = {k: os.environ[k] for k in VARIABLES if users_own(k)}
    if own:
        console.print(f"your {', '.join(f'{k}={v}' for k, v in own.items())} is replaced by each setting here")
    load = os.getloadavg()
    measured: dict[tuple[int, str], list[dict[str, Any]]] = {s: [] for s in settings}
    for r in range(rounds):
        for t, p in settings:
            env = _child_env({**envs[p], "OMP_NUM_THREADS": str(t)})
            with console.status(f"round {r + 1}/{rounds}: {t} threads, {p}: {warmup} + {repeats} x 2 x {steps} "
                                f"steps"):
                res = subprocess.run([sys.executable, "-m", "bench.benchmarks.train_speed"], input=json.dumps(request),
                                     capture_output=True, text=True, env=env)
            if res.returncode != 0:
                tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
                raise FERBenchError(f"bench train --contention: the process measuring {t} threads, {p} failed: {tail}")
            measured[(t, p)].append(json.loads(res.stdout.strip().splitlines()[-1]))
    rows = []
    for (t, p), results in measured.items():
        pairs = [(i, c) for res in results for i, c in zip(res["idle"], res["contended"])]
        quiet = [(i, c) for i, c in pairs if not i["disturbed"] and not c["disturbed"]]
        idle, cont = (list(kind) for kind in zip(*(quiet or pairs)))  # medians over the undisturbed pairs, if any
        rows.append({
            "threads": t, "policy": p, "env": results[0]["env"], "torch_threads": results[0]["torch_threads"],
            "ferbench_default": envs[p] == {"GOMP_SPINCOUNT": str(SPIN_COUNT)} and t == default_threads(),
            "idle_images_per_s": _median([m["images_per_s"] for m in idle]),
            "contended_images_per_s": _median([m["images_per_s"] for m in cont]),
            "ratio": _median([c["images_per_s"] / i["images_per_s"] for i, c in zip(idle, cont)]),
            "idle_own_cores": _median([m["own_cores"] for m in idle]),
            "contended_own_cores": _median([m["own_cores"] for m in cont]),
            "busy_cores": _median([m["busy_cores"] for m in cont]),
            "idle_others_cores": _median([m["others_cores"] for m in idle]),
            "contended_others_cores": _median([m["others_cores"] for m in cont]),
            "idle_steal_cores": _median([m["steal_cores"] for m in idle]),
            "contended_steal_cores": _median([m["steal_cores"] for m in cont]),
            "waited_s": sum(m["waited_s"] for m in idle + cont),
            "pairs": len(pairs), "disturbed_pairs": len(pairs) - len(quiet),
            "measurements": {"idle": [i for i, _ in pairs], "contended": [c for _, c in pairs]}})
    # idle against what runs used before FERBench chose a policy: libgomp's default with one thread per core
    base = next((b for b in rows if b["threads"] == default_threads() and b["policy"] == "spin"), None)
    for row in rows:
        row["idle_vs_spin"] = row["idle_images_per_s"] / base["idle_images_per_s"] if base else None
    results = {"method": cfg.method, "backbone": cfg.model.backbone, "image_size": cfg.data.image_size,
               "batch_size": cfg.train.batch_size, "mu": cfg.train.mu, "augment_on": cfg.data.augment_on,
               "images_per_step": next(iter(measured.values()))[0]["images_per_step"], "steps": steps,
               "warmup": warmup, "repeats": repeats, "rounds": rounds, "busy": busy, "busy_pinned": pinned,
               "wait_quiet_s": wait_quiet,
               "cpu_count": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0)),
               "loadavg_before": load, "loadavg_after": os.getloadavg(), "torch": torch.__version__,
               "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "rows": rows}
    return _report(console, _contention_table(results), results, json_path)


def _contention_table(results: dict[str, Any]) -> Any:
    from rich.table import Table

    r = results
    table = Table(title=f"{r['method']} {r['backbone']} {r['image_size']}px B={r['batch_size']} mu={r['mu']} "
                        f"({r['images_per_step']} images/step, {r['augment_on']} path) on {r['device_name']}, "
                        f"{r['cpu_affinity']} CPUs: {r['steps']} steps idle, then with {r['busy']} busy "
                        f"process{'es' if r['busy'] > 1 else ''}{' (pinned)' if r['busy_pinned'] else ''}, "
                        f"x{r['repeats']}, {r['rounds']} round(s), medians; load average "
                        f"{r['loadavg_before'][0]:.2f} before, {r['loadavg_after'][0]:.2f} after"
                        + (f"; waited {sum(row['waited_s'] for row in r['rows']):.0f} s in all for the other "
                           f"processes to go quiet" if r["wait_quiet_s"] else ""))

    def cores(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    for col in ("threads", "wait policy", "pairs (disturbed)", "idle (img/s)", "contended (img/s)", "ratio",
                f"idle vs spin, {default_threads()} threads",
                "own cores idle/contended", "busy cores", "others' cores idle/contended",
                "stolen cores idle/contended"):
        table.add_column(col, justify="right")
    for row in r["rows"]:
        name = row["policy"] + (" (FERBench's default)" if row["ferbench_default"] else "")
        table.add_row(str(row["torch_threads"]), name, f"{row['pairs']} ({row['disturbed_pairs']})",
                      f"{row['idle_images_per_s']:,.0f}",
                      f"{row['contended_images_per_s']:,.0f}", f"{row['ratio']:.2f}",
                      "-" if row["idle_vs_spin"] is None else f"{row['idle_vs_spin']:.2f}",
                      f"{cores(row['idle_own_cores'])}/{cores(row['contended_own_cores'])}", cores(row["busy_cores"]),
                      f"{cores(row['idle_others_cores'])}/{cores(row['contended_others_cores'])}",
                      f"{cores(row['idle_steal_cores'])}/{cores(row['contended_steal_cores'])}")
    return table


if __name__ == "__main__":  # one setting of the contention benchmark: the request (JSON) on stdin, the result on stdout
    print(json.dumps(_contention_child(json.loads(sys.stdin.read()))))
