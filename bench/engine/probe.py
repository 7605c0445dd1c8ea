"""The behavioural probe: a short, deterministic run of a method under a run's settings, end to end through the real
engine, whose numbers make the fingerprint (bench/engine/fingerprint.py).

It runs in a child process whose kernels are pinned to the x86-64 baseline (`fingerprint.PINNED_ENV`: ATen's
default CPU capability, MKL's compatible code path, no oneDNN, one thread), so the same code gives the same bits on
an AVX-512, an AVX2 or any other x86-64 CPU, whatever the run itself trains on. `python -m bench.engine.probe`
reads `{"configs": [probe config dicts], "modules": [plugin module files]}` on stdin and writes one fingerprint
per config (or `{"unavailable": why}`) as JSON on stdout.

What a probe does, per stage of the method:

1. generated images of the run's class count and (capped) image size, with per-image signal strength so that
   predictions range from confident to ambiguous; the run's split protocol and seed handling draw its labeled pool
   (the split manifest's sha256 is part of the fingerprint);
2. a classifier warmed on the labeled pool, then `Method.probe_state` given its predictions, so that the method's
   adaptive state (class-wise thresholds, distribution alignment, per-sample memories) is where a run in
   progress holds it, not at its start;
3. `STEPS` real steps (views, forward, losses, optimiser, schedule, EMA) with the method's hook called every
   `HOOK_EVERY` steps (epochs 1, 2, 3), evaluated every `EVAL_EVERY`, and the record's derived metrics;
4. with synthfer data, a few images generated with the run's generator settings, written in the RAF-DB layout and
   prepared by the real reader: their content identity and pixel statistics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.config import RunConfig, config_from_dict
from bench.data.cache import PreparedDataset, PreparedSplit, content_identity
from bench.engine.codestate import PROBE_VERSION
from bench.engine.run_data import run_data_from
from bench.engine.stage import RunSetup, StageRun, build_stage_model
from bench.method import Method, ProbeView, SetupInfo, frozen_batchnorm_stats
from bench.registry import create_method, get_method_class

STEPS, EVAL_EVERY, HOOK_EVERY = 6, 1, 2
N_TRAIN, N_TEST = 64, 32
#: the classifier's warm-up on the labeled pool: full-batch Adam until the median confidence on the unlabeled pool
#: reaches `WARM_CONFIDENCE` (at most `WARM_STEPS`), so that about half the pseudo-labels pass a typical threshold,
#: as mid-way through a run (from a random start, every pseudo-label threshold is out of reach)
WARM_STEPS, WARM_LR, WARM_CONFIDENCE = 150, 0.03, 0.95
PRETRAINED_MARK = "probe:generated"  # the probe config's stand-in for a run's pretrained file
SYNTHFER_PROBE = {"n_train": 14, "n_test": 7, "seed": 0, "size": 32}


def probe_data(class_names: tuple[str, ...], side: int) -> PreparedDataset:
    """Fixed generated images: each class a colour tint (the 7 non-empty sets of R, G and B; an eighth class adds
    stripes) and a bright bar on the left (even classes) or right (odd), of a strength drawn per image (weak ones
    are ambiguous), over noise. The tint survives the weak view's crop and flip, as a face's expression does; the
    bar does not, so two views of one image are predicted differently, as in a run. Only elementwise float
    arithmetic: the same bits anywhere."""
    k = len(class_names)
    rng = np.random.default_rng(20261207)
    bar = slice(side // 8, side // 4) if side >= 8 else slice(0, 1)
    mirrored = slice(side - bar.stop, side - bar.start)

    def split(n: int, prefix: str) -> PreparedSplit:
        labels = np.arange(n) % k
        strength = rng.uniform(0.15, 1.0, n)
        images = rng.integers(0, 140, (n, side, side, 3)).astype(np.float64)
        for i, c in enumerate(labels):
            bits = (c % 7) + 1
            for channel in range(3):
                if bits >> channel & 1:
                    images[i, :, :, channel] += 90.0 * strength[i]
            if c >= 7:
                images[i, ::2] += 60.0 * strength[i]
            images[i, :, bar if c % 2 == 0 else mirrored] += 60.0 * strength[i]
        pixels = np.clip(images, 0, 255).astype(np.uint8)
        ids = [f"{prefix}{i}" for i in range(n)]
        return PreparedSplit(ids, pixels, labels.astype(np.int64), labels.astype(np.int64))

    train, test = split(N_TRAIN, "train"), split(N_TEST, "test")
    identity = content_identity({"train": train, "test": test}, f"probe-v{PROBE_VERSION}|{side}")
    return PreparedDataset("probe", Path("."), tuple(class_names), identity, {}, train, test)


class ProbeAccelerator:
    """One CPU process, as Accelerate runs it (prepare is the identity, backward the plain one, no collectives).
    The probe cannot build an `Accelerator` of its own: its state is a process-wide singleton. Mixed precision is
    not emulated: a run's `train.mixed_precision` is part of its fingerprint's key, not of the probe's numbers."""

    device = torch.device("cpu")
    num_processes, process_index, is_main_process = 1, 0, True

    class state:  # noqa: N801 - the attribute Accelerate's users read
        deepspeed_plugin = None

    def prepare(self, *objects: Any) -> Any:
        return objects if len(objects) > 1 else objects[0]

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def main_process_first(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def free_memory(self, *objects: Any) -> None:
        pass

    def log(self, values: dict[str, Any], step: int | None = None) -> None:
        pass

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def unwrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model


class Vector:
    """The probe's values in order: floats (compared within tolerance) and exact entries (hashes, compared equal)."""

    def __init__(self) -> None:
        self.labels: list[str] = []
        self.values: list[float] = []
        self.exact: dict[str, str] = {}

    def add(self, label: str, value: float) -> None:
        self.labels.append(label)
        self.values.append(float(value))

    def stats(self, prefix: str, tensors: list[torch.Tensor]) -> None:
        flat = [t.detach().double().reshape(-1) for t in tensors if t.is_floating_point() and t.numel()]
        if flat:
            x = torch.cat(flat)
            self.add(f"{prefix}.sum", float(x.sum()))
            self.add(f"{prefix}.sumsq", float((x * x).sum()))


def _generated_checkpoint(pcfg: RunConfig, num_classes: int, folder: Path) -> str:
    """A checkpoint of the probe's backbone in the lineage's layout (`state_dict`, `module.` prefixes), with
    BatchNorm statistics far from a fresh model's, so that loading a run's pretrained file is part of the probe."""
    from bench.engine.model import build_model

    torch.manual_seed(7)
    backbone = build_model(dataclasses.replace(pcfg.model, pretrained_file=None), num_classes).backbone
    state = {}
    for k, v in backbone.state_dict().items():
        if k.endswith("running_mean"):
            v = torch.randn_like(v) * 0.5
        elif k.endswith("running_var"):
            v = torch.rand_like(v) * 1.5 + 0.5
        state[f"module.{k}"] = v.clone()
    path = folder / "pretrained.pth"
    torch.save({"state_dict": state}, path)
    return str(path)


def _warm_start(model: torch.nn.Module, sr: StageRun) -> None:
    """Full-batch Adam steps of cross-entropy on the labeled pool's unaugmented views, until the median confidence
    on the unlabeled pool's reaches `WARM_CONFIDENCE` (or `WARM_STEPS`)."""
    data = sr.data
    x = sr.views.make("none", data.images[torch.from_numpy(data.labeled_pool)])
    u = sr.views.make("none", data.images[torch.from_numpy(data.unlabeled_pool)])
    y = data.labels[torch.from_numpy(data.labeled_pool)]
    optimizer = torch.optim.Adam(model.parameters(), lr=WARM_LR)
    model.train()
    for _ in range(WARM_STEPS):
        with torch.no_grad(), frozen_batchnorm_stats(model):  # confidence as a training step sees it
            if float(model(u).softmax(-1).max(-1).values.median()) >= WARM_CONFIDENCE:
                break
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@torch.no_grad()
def _probe_view(sr: StageRun) -> ProbeView:
    """The warm model's predictions (unaugmented views) on the unlabeled and the labeled pool."""
    model, data = sr.student, sr.data
    was = model.training
    model.eval()

    def probs(pool: np.ndarray) -> torch.Tensor:
        return torch.softmax(model(sr.views.make("none", data.images[torch.from_numpy(pool)])).float(), -1)

    view = ProbeView(probs(data.unlabeled_pool), probs(data.labeled_pool),
                     data.labels[torch.from_numpy(data.labeled_pool)])
    model.train(was)
    return view


def _train(sr: StageRun, method: Method, out: Vector, live: dict[str, Any]) -> None:
    """The loop of `run_stage_loop` (log and evaluate by the stage's cadence) without checkpoints, the method's
    hook every `HOOK_EVERY` steps."""
    name, when = sr.stage.name, sr.cadence
    sr.hook_every = HOOK_EVERY if method.hook_every() else None
    before = [getattr(method, s.name).clone() for s in method.state_specs()]
    sr.model.train()
    while sr.state.step < when.total:
        sr.step()
        if when.log(sr.state.step):
            sr.log()
        if when.evaluate(sr.state.step):
            sr.evaluate()
    after = [getattr(method, s.name) for s in method.state_specs()]
    live[name] = {
        "mask_rate": [row["mask_rate"] for row in sr.state.curves if "mask_rate" in row],
        "state_moved": [s.name for s, a, b in zip(method.state_specs(), before, after, strict=True)
                        if not torch.equal(a, b)],
        "ema_moved": bool(sr.ema is not None and any(
            not torch.equal(a, b) for a, b in zip(sr.ema.module.state_dict().values(),
                                                  sr.student.state_dict().values(), strict=True)
            if a.is_floating_point())),
    }
    for row in sr.state.curves:
        for k, v in sorted(row.items()):
            if k != "step":
                out.add(f"{name}.{row['step']}.{k}", v)


def _read_stage(sr: StageRun, method: Method, out: Vector) -> None:
    """What a stage's numbers depend on: evaluations, the record's derived metrics, weights, EMA, state, logits."""
    from bench.engine.run_record import derived_metrics

    name = sr.stage.name
    if sr.stage.evaluate:
        for h in sr.state.history:
            for k in ("accuracy", "mean_class_accuracy", "macro_f1"):
                out.add(f"{name}.eval{h['step']}.{k}", h[k])
        final = sr.final_metrics
        for c, r in enumerate(final["per_class_recall"]):
            out.add(f"{name}.final.recall{c}", r)
        for i, row in enumerate(final["confusion_matrix"]):
            for j, v in enumerate(row):
                out.add(f"{name}.final.confusion{i}.{j}", v)
        for k, v in derived_metrics(sr.state.history).items():
            out.add(f"{name}.derived.{k}", v)
        with torch.no_grad():
            model = sr.eval_model.eval()
            images = torch.from_numpy(sr.data.data.test.images).permute(0, 3, 1, 2)
            out.stats(f"{name}.eval.logits", [model(sr.views.make("none", images)).float()])
    out.stats(f"{name}.weights", list(sr.student.state_dict().values()))
    if sr.ema is not None:
        out.stats(f"{name}.ema", list(sr.ema.module.state_dict().values()))
    out.stats(f"{name}.state", [getattr(method, s.name).float() for s in method.state_specs()])


def _synthfer_section(pcfg: RunConfig, out: Vector, folder: Path) -> None:
    """A few synthfer images from the run's generator settings, through the RAF-DB reader and the cache: their
    content identity (exact) and per-class pixel means."""
    from bench.data.cache import load_prepared, prepare_dataset
    from bench.data.synthfer import ensure_synthfer

    raw = ensure_synthfer(folder / "raw", workers=1, progress=False, **{**pcfg.data.synthfer, **SYNTHFER_PROBE})
    path = prepare_dataset("synthfer", str(raw), SYNTHFER_PROBE["size"], str(folder), workers=1)
    data = load_prepared(path)
    out.exact["data.synthfer.identity"] = data.fingerprint
    for split in ("train", "test"):
        s = getattr(data, split)
        for c in range(data.num_classes):
            members = s.images[s.labels == c]
            if len(members):
                out.add(f"data.synthfer.{split}.class{c}.mean", float(members.astype(np.float64).mean()))


def probe_stages(pcfg: RunConfig, out: Vector, folder: Path) -> dict[str, Any]:
    """Run every stage of the probe config's method; what shows its adaptive parts were live, by stage."""
    from bench.data.datasets import get_dataset

    spec = get_dataset(pcfg.data.name)
    protocol = spec.protocol(pcfg.data.label_protocol)
    names = tuple(spec.class_names_for(protocol))
    if pcfg.model.pretrained_file == PRETRAINED_MARK:
        pcfg.model.pretrained_file = _generated_checkpoint(pcfg, len(names), folder)
    method_cls = get_method_class(pcfg.method)
    data = run_data_from(probe_data(names, pcfg.data.image_size), pcfg, method_cls, None)
    out.exact["data.split.manifest"] = data.manifest["sha256"]
    method = create_method(pcfg.method, len(names), pcfg.method_args)
    method.setup(SetupInfo(num_classes=len(names), num_labeled=len(data.labeled_pool),
                           num_unlabeled=len(data.unlabeled_pool), total_steps=pcfg.train.iterations))
    run = RunSetup(ProbeAccelerator(), pcfg, method, data, "probe")
    previous, live = None, {}
    for stage in method.stages():
        model, _ = build_stage_model(run, stage, previous)
        sr = StageRun(run, stage, model)
        # a new classifier, or one handed on to a stage with pseudo-labels: warmed (from the weights it has)
        if stage.evaluate and (model is not previous or stage.views):
            _warm_start(sr.student, sr)
            if sr.ema is not None:
                sr.ema.module.load_state_dict(sr.student.state_dict())
        if stage.views and stage.evaluate:  # a classifier with an unlabeled stream
            method.probe_state(_probe_view(sr))
        _train(sr, method, out, live)
        sr.finish()
        _read_stage(sr, method, out)
        previous = sr.student
    return live


def probe_config_dict(pcfg: dict[str, Any]) -> dict[str, Any]:
    """The fingerprint of one probe config (a `RunConfig.to_dict()`), run here, in this process."""
    cfg = config_from_dict(pcfg)
    out = Vector()
    with tempfile.TemporaryDirectory(prefix="ferbench-probe-") as tmp:
        torch.manual_seed(0)
        torch.use_deterministic_algorithms(True)
        if cfg.data.name == "synthfer":
            _synthfer_section(cfg, out, Path(tmp))
        live = probe_stages(cfg, out, Path(tmp))
    return {"vector": out.values, "labels": out.labels, "exact": out.exact, "live": live}


def _import_plugins(files: list[str]) -> None:
    """Methods registered in the parent from modules that discovery does not find (a test's, a notebook's)."""
    import importlib.util

    for i, file in enumerate(files):
        spec = importlib.util.spec_from_file_location(f"_ferbench_probe_plugin{i}", file)
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        with contextlib.suppress(Exception):  # one that fails to import leaves its methods unavailable
            spec.loader.exec_module(module)


def main() -> int:
    request = json.loads(sys.stdin.read())
    torch.backends.mkldnn.enabled = False  # oneDNN picks its kernels by the CPU; ATen's own are pinned
    torch.set_num_threads(1)
    _import_plugins(request.get("modules", []))
    results = []
    for pcfg in request["configs"]:
        try:
            results.append(probe_config_dict(pcfg))
        except Exception as e:  # noqa: BLE001 - any failure is recorded, never raised into a run
            results.append({"unavailable": f"{type(e).__name__}: {e}".strip()[:500]})
    sys.stdout.write("\nFERBENCH-PROBE " + json.dumps(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
