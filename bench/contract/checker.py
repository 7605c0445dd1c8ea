"""`ferbench check-method NAME`: the plugin contract, run on any registered method (FERBench's own or a third
party's) on a tiny generated dataset, one line a check.

The test suite holds every registered method to it through this same code, so a new method, built-in or a plugin,
is covered by what its author can run."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from bench.config import build_config
from bench.contract.arguments import argument_problems, describe_argument_set
from bench.contract.compare import first_difference
from bench.contract.observe import Observation, model_output_problem, watching
from bench.contract.runs import final_weights, interruptions, launch_two_processes, tiny_settings, train_tiny
from bench.data.cache import default_cache_dir
from bench.errors import FERBenchError
from bench.method import Method
from bench.registry import BUILTIN, get_method_class, method_origin
from bench.results.record import fingerprint_problem

#: the checks, in the order they are reported
CHECKS = ("arguments", "fingerprint", "views", "host-reads", "state", "round-trip", "evaluation", "resume",
          "two-process")


@dataclass(frozen=True)
class CheckResult:
    check: str
    status: Literal["pass", "fail", "skip"]
    why: str

    def line(self) -> str:
        return f"{self.status.upper():4}  {self.check:<11} {self.why}"


@dataclass(frozen=True)
class CheckOptions:
    """cache_dir: where the tiny synthfer is prepared (default: the FERBench cache); work_dir: where the runs go
    (default: a temporary folder, removed after); settings: KEY=VALUE overrides on top of the tiny run and the method's
    `check_settings`; skip: checks not to run."""

    cache_dir: Path | None = None
    work_dir: Path | None = None
    settings: tuple[str, ...] = ()
    skip: frozenset[str] = field(default_factory=frozenset)


@dataclass
class _Context:
    name: str
    cls: type[Method]
    settings: list[str]  # the straight run's overrides, without output_dir
    work: Path
    seen: Observation = field(default_factory=Observation)
    straight: dict[str, Any] | None = None
    failure: str | None = None  # why the straight run did not finish

    def run_settings(self, folder: str, *extra: str) -> list[str]:
        return [*self.settings, f"output_dir={self.work / folder}", *extra]


def _run_error(e: BaseException) -> str:
    if isinstance(e, FERBenchError):
        return str(e)
    tb = e.__traceback__
    where = ""
    while tb is not None:
        where = f" ({Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno} in {tb.tb_frame.f_code.co_name})"
        tb = tb.tb_next
    return f"{type(e).__name__}: {e}{where}"


def _settings(cls: type[Method], name: str, options: CheckOptions, cache: Path) -> list[str]:
    return [*tiny_settings(cache, None, method=name, **cls.check_settings), *options.settings]


@contextmanager
def _work_dir(options: CheckOptions) -> Iterator[Path]:
    if options.work_dir is not None:
        options.work_dir.mkdir(parents=True, exist_ok=True)
        yield options.work_dir
        return
    tmp = Path(tempfile.mkdtemp(prefix="ferbench-check-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- the checks: each takes the context and returns (passed, why) ------------------------------------------------


def _arguments(ctx: _Context) -> tuple[bool, str]:
    problems = argument_problems(ctx.cls)
    return (False, "; ".join(problems)) if problems else (True, describe_argument_set(ctx.cls))


def _fingerprint(ctx: _Context) -> tuple[bool, str]:
    from bench.engine.fingerprint import current_fingerprint

    fp = current_fingerprint(build_config(overrides=ctx.run_settings("fingerprint")))
    if "unavailable" in fp:
        return False, f"the behavioural probe could not run: {fp['unavailable']}"
    problem = fingerprint_problem(fp)
    return (False, problem) if problem else (True, f"probed: digest {fp['digest'][:12]} over {len(fp['vector'])} "
                                                   "values")


def _straight_run(ctx: _Context) -> None:
    """The uninterrupted run, watched; its record (or why it failed) is kept for the later checks."""
    with watching(ctx.cls) as ctx.seen:
        try:
            ctx.straight = train_tiny(ctx.run_settings("straight"))
        except Exception as e:  # noqa: BLE001 - a plugin's failure is a check's result
            ctx.failure = _run_error(e)


def _needs_run(ctx: _Context) -> str | None:
    return None if ctx.straight is not None else f"not run: the tiny run failed: {ctx.failure}"


def _views(ctx: _Context) -> tuple[bool, str]:
    if not ctx.seen.stages:
        return False, f"no training step ran: {ctx.failure}"
    declared = {s.name: s for s in ctx.seen.method.stages()} if ctx.seen.method else {}
    problems, notes = [], []
    for name, seen in ctx.seen.stages.items():
        stage = declared.get(name)
        views, labeled = (set(stage.views), set(stage.labeled_views)) if stage else (set(), {"weak"})
        missing = (views - seen.unlabeled_given) | (labeled - seen.labeled_given)
        undeclared = (seen.unlabeled_read - views - {"idx"}) | (seen.labeled_read - labeled - {"y", "idx", "pos"})
        unread = (views - seen.unlabeled_read) | (labeled - seen.labeled_read)
        if missing:
            problems.append(f"stage {name}: declared view(s) {', '.join(sorted(missing))} were not produced")
        if undeclared:
            problems.append(f"stage {name}: reads view(s) {', '.join(sorted(undeclared))} it does not declare "
                            "(declare them in `views` / `labeled_views`)")
        notes.append(f"{name}: unlabeled {', '.join(sorted(views)) or '-'}, labeled {', '.join(sorted(labeled)) or '-'}"
                     + (f" (never read: {', '.join(sorted(unread))})" if unread else ""))
    return (False, "; ".join(problems)) if problems else (True, "declared and produced: " + "; ".join(notes))


def _host_reads(ctx: _Context) -> tuple[bool, str]:
    if not ctx.seen.stages:
        return False, f"no training step ran: {ctx.failure}"
    reads, steps = ctx.seen.host_reads, sum(s.steps for s in ctx.seen.stages.values())
    bad = ctx.seen.bad_outputs
    if bad:
        return False, f"training_step's output: {bad[0]}"
    if reads:
        return False, (f"training_step read tensor values on the host {len(reads)} time(s) in {steps} steps "
                       f"(each waits for a GPU): {', '.join(reads[:3])}{' ...' if len(reads) > 3 else ''}; "
                       "use masks over the batch and return logs as tensors")
    return True, f"no host read in {steps} steps"


def _state(ctx: _Context) -> tuple[bool, str]:
    method = ctx.seen.method
    if method is None:
        return False, f"no training step ran: {ctx.failure}"
    stray = method.undeclared_state()
    if stray:
        return False, (f"attribute(s) {', '.join(stray)} hold tensors but are not declared state "
                       "(Method.add_state): a checkpoint would not keep them")
    specs = method.state_specs()
    return True, ("declared: " + ", ".join(f"{s.name} ({s.reduce})" for s in specs)) if specs else "no state"


def _round_trip(ctx: _Context) -> tuple[bool, str]:
    method, info = ctx.seen.method, ctx.seen.setup_info
    if method is None or info is None:
        return False, f"no training step ran: {ctx.failure}"
    saved = method.state_dict()
    fresh = type(method)(num_classes=method.num_classes, **method.hparams)
    fresh.setup(info)
    fresh.load_state_dict(saved)
    again = fresh.state_dict()
    for name, value in saved.items():
        other = again[name]
        if other.dtype != value.dtype or other.shape != value.shape or not torch.equal(other, value):
            return False, f"state {name} comes back as {other.dtype} {tuple(other.shape)}, saved {value.dtype} " \
                          f"{tuple(value.shape)}" + ("" if other.shape != value.shape else " with other values")
    return True, f"{len(saved)} state tensor(s) saved and restored exactly" if saved else "no state to save"


def _evaluation(ctx: _Context) -> tuple[bool, str]:
    if ctx.seen.model is None or ctx.seen.batch is None:
        return False, f"no training step ran: {ctx.failure}"
    images = ctx.seen.batch.labeled["weak"]
    problem = model_output_problem(ctx.seen.model, images, ctx.seen.method.num_classes)
    return (False, problem) if problem else (True, f"logits ({images.shape[0]}, {ctx.seen.method.num_classes}), "
                                                   "features and aux as a ModelOutput")


def _resume(ctx: _Context) -> tuple[bool, str]:
    not_run = _needs_run(ctx)
    if not_run:
        return False, not_run
    cfg = build_config(overrides=ctx.run_settings("resumed"))
    stops = interruptions(ctx.cls, cfg)
    for stop in stops:
        if train_tiny(ctx.run_settings("resumed", f"{stop.key}={stop.at}")) is not None:
            return False, f"the run was not interrupted by {stop.key}={stop.at}"
    resumed = train_tiny(ctx.run_settings("resumed"))
    difference = first_difference(ctx.straight, resumed, final_weights(ctx.work / "straight"),
                                  final_weights(ctx.work / "resumed"))
    where = ", ".join(f"{s.stage} at {s.at}" for s in stops)
    if difference:
        return False, f"stopped ({where}) and resumed, the run differs from the uninterrupted one: {difference}"
    return True, f"stopped ({where}) and resumed: weights and every logged value equal the uninterrupted run's"


def _two_process(ctx: _Context) -> tuple[bool, str] | str:
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        return "this torch has no gloo backend"
    origin = method_origin(ctx.name)
    if origin != BUILTIN and origin.startswith("module "):
        return False, (f"registered at run time by {origin.removeprefix('module ')}: another process cannot find it; "
                       "put it in methods/ or install it with a `ferbench.methods` entry point")
    launched = launch_two_processes(ctx.run_settings("two-process"))
    records = list((ctx.work / "two-process" / "records").glob("*.json"))
    if launched.returncode != 0 or len(records) != 1:
        return False, f"the 2-process run failed: {_last_error_line(launched.stderr)}"
    record = json.loads(records[0].read_text())
    checks = (record.get("distributed") or {}).get("method_state_checks", 0)
    return True, f"2 processes (gloo): the method state agreed at {checks} checkpoint(s)"


def _last_error_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in reversed(lines):  # FERBench's own one-line error, else the traceback's last line
        if ln.startswith("ferbench:") or ln.startswith("error:"):
            return ln
    return lines[-1] if lines else "no output"


_CHECKS: dict[str, Callable[[_Context], tuple[bool, str] | str]] = {
    "arguments": _arguments, "fingerprint": _fingerprint, "views": _views, "host-reads": _host_reads,
    "state": _state, "round-trip": _round_trip, "evaluation": _evaluation, "resume": _resume,
    "two-process": _two_process,
}
_NEED_RUN = frozenset({"views", "host-reads", "state", "round-trip", "evaluation", "resume"})


def _run_one(check: str, ctx: _Context) -> CheckResult:
    try:
        outcome = _CHECKS[check](ctx)
    except Exception as e:  # noqa: BLE001 - a check that raises is a failed check, named
        return CheckResult(check, "fail", _run_error(e))
    if isinstance(outcome, str):
        return CheckResult(check, "skip", outcome)
    passed, why = outcome
    return CheckResult(check, "pass" if passed else "fail", why)


def check_method(name: str, options: CheckOptions | None = None,
                 report: Callable[[CheckResult], None] | None = None) -> list[CheckResult]:
    """Run the contract's checks on method `name`, in `CHECKS` order, telling `report` each result as it comes.
    An unknown method or a bad setting is a FERBenchError before anything runs."""
    options = options or CheckOptions()
    cls = get_method_class(name)
    unknown = sorted(options.skip - set(CHECKS))
    if unknown:
        raise FERBenchError(f"--skip {', '.join(unknown)}: no such check; the checks are {', '.join(CHECKS)}")
    cache = options.cache_dir or default_cache_dir(None)
    settings = _settings(cls, name, options, cache)
    build_config(overrides=settings)  # a bad setting is one line here, before any run
    results = []
    with _work_dir(options) as work:
        ctx = _Context(name, cls, settings, work)
        for check in CHECKS:
            if check in options.skip:
                result = CheckResult(check, "skip", "skipped (--skip)")
            else:
                if check in _NEED_RUN and ctx.straight is None and ctx.failure is None:
                    _straight_run(ctx)
                result = _run_one(check, ctx)
            results.append(result)
            if report is not None:
                report(result)
    return results
