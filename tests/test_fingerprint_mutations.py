"""Fingerprints catch what each method does (issue 26): a mutation test of the probe.

Each behavioural mutation is a one-line edit of FERBench's code, in a copy of it, in each method's distinctive
mechanism (threshold schedules, masks, distribution alignment, negative learning, text anchors, expert routing,
reconstruction) and in what every method shares (views, optimiser and schedule, EMA, splits, synthfer generation,
pretrained loading, evaluation and the record's derived metrics): every one must change the fingerprint of a key
it touches. Neutral edits (comments, docstrings, renames, moves, commuted and re-associated arithmetic, a reworded
message, and a newly logged value) must change none. Every probe also shows the method's adaptive parts live:
masks strictly between 0 and 1 at some step, declared state that moves, an EMA that leaves its student.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bench.config import build_config
from bench.engine.codestate import PROBE_VERSION, code_state
from bench.engine.fingerprint import (
    changed_values,
    digest,
    fingerprint_key,
    pinned_env,
    probe_config,
    same_behaviour,
)

pytestmark = pytest.mark.subprocess

REPO = Path(__file__).resolve().parents[1]

#: the keys the mutations are checked against, by name: every built-in method, the recipes, and one run whose
#: split seed, budget protocol, weak crop and pretrained file differ from the harness defaults
CONFIGS: dict[str, list[str]] = {
    "supervised": ["method=supervised"],
    "fixmatch": ["method=fixmatch"],
    "flexmatch": ["method=flexmatch"],
    "softmatch": ["method=softmatch"],
    "freematch": ["method=freematch"],
    "meanteacher": ["method=meanteacher"],
    "adacm": ["method=adacm"],
    "adacm_recipe": ["method=adacm", "recipe=adacm"],
    "leaf": ["method=leaf"],
    "leaf_recipe": ["method=leaf", "recipe=leaf"],
    "dtasnl": ["method=dtasnl"],
    "dtasnl_paper": ["method=dtasnl", "preset=adacm", "model.head=normalized"],
    "sitfer": ["method=sitfer"],
    "sitfer_recipe": ["method=sitfer", "recipe=sitfer"],
    "frpretrain_vit": ["method=frpretrain", "model.backbone=vit_base_patch16_224"],
    "fullysupervised": ["method=fullysupervised"],
    "fixmatch_variant": ["method=fixmatch", "split_seed=3", "data.protocol=per_class", "augment.crop=resized",
                         "model.pretrained_file=/weights/resnet18_msceleb.pth", "optim.name=adam", "optim.lr=0.001"],
}

#: (what, file, old text, new text, the keys it must change)
BEHAVIOURAL: list[tuple[str, str, str, str, list[str]]] = [
    ("FixMatch threshold", "methods/fixmatch.py", "mask = (max_probs >= self.args.threshold).float()",
     "mask = (max_probs >= 0.9 * self.args.threshold).float()", ["fixmatch"]),
    ("FixMatch unlabeled weight", "methods/fixmatch.py", "loss = loss_x + self.args.lambda_u * loss_u",
     "loss = loss_x + 0.5 * self.args.lambda_u * loss_u", ["fixmatch"]),
    ("FlexMatch threshold mapping (convex -> linear)", "methods/flexmatch.py",
     "return self.args.threshold * (beta / (2.0 - beta))", "return self.args.threshold * beta",
     ["flexmatch"]),
    ("FlexMatch warm-up denominator", "methods/flexmatch.py",
     "denom = counts.max() if self.args.thresh_warmup else per_class.max()", "denom = per_class.max()",
     ["flexmatch"]),
    ("SoftMatch n_sigma", "methods/softmatch.py", "(2 * self.var_t / self.args.n_sigma ** 2)",
     "(2 * self.var_t / self.args.n_sigma)", ["softmatch"]),
    ("SoftMatch distribution alignment", "methods/softmatch.py",
     "probs = probs * (1.0 / self.num_classes + 1e-6) / (self.p_model + 1e-6)",
     "probs = probs * (1.0 / self.num_classes + 1e-6) / (self.p_model.sqrt() + 1e-6)", ["softmatch"]),
    ("FreeMatch local modulation", "methods/freematch.py", "modulation = self.p_model / self.p_model.max()",
     "modulation = self.p_model / self.p_model.sum()", ["freematch"]),
    ("FreeMatch global threshold EMA", "methods/freematch.py",
     "self.time_p = m * self.time_p + (1 - m) * all_max.mean()",
     "self.time_p = m * self.time_p + (1 - m) * all_max.median()", ["freematch"]),
    ("Ada-CM threshold schedule", "methods/adacm.py", "factor = self.args.scale / (1.0 + math.exp(-epoch))",
     "factor = self.args.scale / (1.0 + math.exp(-2 * epoch))", ["adacm", "adacm_recipe", "leaf_recipe"]),
    ("Ada-CM two-view pseudo-label", "methods/adacm.py",
     "return ((logits_w1.float().softmax(-1) + logits_w2.float().softmax(-1)) / 2).detach()",
     "return logits_w1.float().softmax(-1).detach()",
     ["adacm", "adacm_recipe"]),
    ("Ada-CM loss weights", "methods/adacm.py", "loss = a.lambda_x * loss_x + a.lambda_u * loss_u",
     "loss = loss_x + a.lambda_u * loss_u", ["adacm"]),
    ("LEAF expert routing (softmax -> sigmoid gates)", "methods/leaf.py",
     "top_logits[:, : self.k].softmax(dim=1))", "top_logits[:, : self.k].sigmoid())", ["leaf", "leaf_recipe"]),
    ("LEAF concave weighting -> linear", "methods/leaf.py",
     "w = torch.log1p(CONCAVE_SCALE * (mean_top - first_out)) / torch.log1p(CONCAVE_SCALE * mean_top)",
     "w = (mean_top - first_out) / mean_top", ["leaf"]),
    ("DTA-SNL negative-learning threshold", "methods/dtasnl.py", "complementary = probs < self.args.tau_neg",
     "complementary = probs < 2 * self.args.tau_neg", ["dtasnl", "dtasnl_paper"]),
    ("DTA-SNL dynamic threshold without its EMA", "methods/dtasnl.py",
     "self.mu = torch.where(present, m * self.mu + (1 - m) * batch_mean, self.mu)",
     "self.mu = torch.where(present, batch_mean, self.mu)", ["dtasnl", "dtasnl_paper"]),
    ("SIT-FER text anchors' temperature", "methods/sitfer.py", "return f.float() @ self.anchors().T / self.tau_t",
     "return f.float() @ self.anchors().T / (2 * self.tau_t)", ["sitfer"]),
    ("SIT-FER fused-label threshold", "methods/sitfer.py", "mask = max_p > self.args.threshold",
     "mask = max_p > self.args.threshold - 0.1", ["sitfer"]),
    ("SIT-FER instance scores", "methods/sitfer.py", "return best.clamp(min=0) / self.tau_i",
     "return best.clamp(min=0) ** 2 / self.tau_i", ["sitfer"]),
    ("MeanTeacher consistency on logits", "methods/meanteacher.py",
     "return nn.functional.mse_loss(logits_student.softmax(-1), logits_teacher.detach().softmax(-1))",
     "return nn.functional.mse_loss(logits_student, logits_teacher.detach())", ["meanteacher"]),
    ("FR-pretraining reconstruction (MSE -> MAE)", "bench/engine/mae.py",
     "per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)",
     "per_patch = (pred.float() - target.float()).abs().mean(dim=-1)", ["frpretrain_vit"]),
    ("weak view: flip probability", "bench/data/views.py",
     "def horizontal_flip(x: Tensor, gen: torch.Generator, prob: float = 0.5)",
     "def horizontal_flip(x: Tensor, gen: torch.Generator, prob: float = 0.3)", ["supervised"]),
    ("weak view: crop probability", "bench/data/views.py", "keep = _rand(n, gen, x.device) >= prob",
     "keep = _rand(n, gen, x.device) >= prob * 0.5", ["fixmatch"]),
    ("strong view: enhance ops' blend", "bench/data/randaugment.py",
     "return _u8(degenerate + f * (img.float() - degenerate))",
     "return _u8(degenerate + 0.8 * f * (img.float() - degenerate))", ["fixmatch"]),
    ("random resized crop's area", "bench/data/views.py",
     "area = scale[0] + (scale[1] - scale[0]) * _rand(n, gen, dev)",
     "area = scale[0] + (scale[1] - scale[0]) * _rand(n, gen, dev) ** 2", ["fixmatch_variant"]),
    ("optimiser: Nesterov off", "bench/engine/optim.py", "nesterov=o.nesterov and o.momentum > 0",
     "nesterov=False", ["supervised"]),
    ("schedule: FixMatch's cosine", "bench/engine/optim.py", "return math.cos(7 * math.pi * step / (16 * total))",
     "return math.cos(7 * math.pi * step / (8 * total))", ["supervised"]),
    ("EMA step", "bench/engine/ema.py", "self._foreach_lerp_(ema_f, model_f, weight=1.0 - decay)",
     "self._foreach_lerp_(ema_f, model_f, weight=0.5 * (1.0 - decay))", ["fixmatch"]),
    ("split draw", "bench/data/splits.py", "rng = np.random.default_rng([split_seed, ",
     "rng = np.random.default_rng([split_seed + 1, ", ["supervised"]),
    ("split seed handling", "bench/config.py", "return self.seed if self.split_seed is None else self.split_seed",
     "return self.seed", ["fixmatch_variant"]),
    ("synthfer generation: brow thickness", "bench/data/synthfer.py", "bt = u(0.06, 0.025)  # brow thickness",
     "bt = u(0.065, 0.025)  # brow thickness", ["supervised"]),
    ("pretrained loading keeps no BatchNorm statistics", "bench/engine/pretrained.py",
     "model.load_state_dict(m.tensors, strict=False)",
     "model.load_state_dict({k: v for k, v in m.tensors.items() if 'running' not in k}, strict=False)",
     ["fixmatch_variant"]),
    ("normalised head", "bench/engine/model.py",
     'return nn.functional.normalize(z, dim=-1) if self.head_type == "normalized" else z',
     'return nn.functional.normalize(z, dim=-1) * 2 if self.head_type == "normalized" else z', ["dtasnl_paper"]),
    ("evaluation: macro-F1", "bench/metrics/fer_metrics.py",
     "f1 = np.where(denom > 0, 2 * precision * np.nan_to_num(recall)",
     "f1 = np.where(denom > 0, 1.5 * precision * np.nan_to_num(recall)", ["supervised"]),
    ("derived metric: best-on-test", "bench/engine/run_record.py",
     'best = max(history, key=lambda h: h["accuracy"])', 'best = min(history, key=lambda h: h["accuracy"])',
     ["supervised"]),
    ("derived metric: last-5 median", "bench/engine/run_record.py",
     'float(np.median([h["accuracy"] for h in history][-5:]))',
     'float(np.mean([h["accuracy"] for h in history][-5:]))', ["fixmatch"]),
]

MOVE_TO_END = "<the old text, moved to the end of the file>"
#: behaviour-neutral edits, applied together: (what, file, old, new)
NEUTRAL: list[tuple[str, str, str, str]] = [
    ("a comment", "methods/fixmatch.py", "class FixMatch(Method):", "class FixMatch(Method):  # the baseline"),
    ("a docstring", "methods/flexmatch.py", "Mask from the current class-wise thresholds,",
     "The mask from the class-wise thresholds in force now,"),
    ("a local renamed", "methods/softmatch.py", "gap = torch.clamp(max_probs - self.mu_t, max=0.0)\n"
     "        return torch.exp(-(gap**2)", "below = torch.clamp(max_probs - self.mu_t, max=0.0)\n"
     "        return torch.exp(-(below**2)"),
    ("a method renamed", "methods/dtasnl.py", "def negative_loss(", "def complementary_label_loss("),
    ("its call renamed", "methods/dtasnl.py", "self.negative_loss(", "self.complementary_label_loss("),
    ("commuted sum", "methods/fixmatch.py", "loss = loss_x + self.args.lambda_u * loss_u",
     "loss = self.args.lambda_u * loss_u + loss_x"),
    ("re-associated product", "methods/adacm.py", "factor = self.args.scale / (1.0 + math.exp(-epoch))",
     "factor = self.args.scale * (1.0 / (1.0 + math.exp(-epoch)))"),
    ("a reworded error message", "methods/leaf.py", "needs at least 2 classes, got", "needs two classes or more, got"),
    ("imports reordered", "methods/sitfer.py", "import hashlib\n", ""),
    ("(the import moved)", "methods/sitfer.py", "from __future__ import annotations\n",
     "from __future__ import annotations\n\nimport hashlib\n"),
    ("a helper moved to the end of its file", "bench/data/randaugment.py",
     'def _blend(degenerate: Tensor, img: Tensor, factor: Tensor) -> Tensor:\n'
     '    """PIL\'s ImageEnhance: degenerate + factor * (img - degenerate), per sample."""\n'
     '    f = factor.view(-1, 1, 1, 1)\n'
     '    return _u8(degenerate + f * (img.float() - degenerate))\n', MOVE_TO_END),
    ("a blank line and a wrapped expression", "bench/engine/optim.py",
     "return math.cos(7 * math.pi * step / (16 * total))",
     "return math.cos(\n            7 * math.pi * step / (16 * total)\n        )\n"),
    ("a newly logged value", "methods/fixmatch.py", '"mask_rate": mask.mean().detach()',
     '"mask_rate": mask.mean().detach(), "confidence": probs.max(dim=-1).values.mean().detach()'),
]


def _edit(root: Path, path: str, old: str, new: str) -> None:
    file = root / path
    text = file.read_text()
    assert text.count(old) == 1, f"{path}: the mutation's text is not there exactly once: {old!r}"
    file.write_text(text.replace(old, "") + "\n\n" + old if new == MOVE_TO_END else text.replace(old, new))


def _copy(tmp: Path, name: str) -> Path:
    root = tmp / name
    for package in ("bench", "methods"):
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    return root


#: a probe server: imports the probe's third-party libraries once, under the pinned environment, then forks one child
#: per request; the child imports FERBench from the code copy the request names and runs the probe's main, as a
#: probe process started afresh would (without importing torch, timm and evaluate again for each of ~50 probes)
SERVER = """
import json, os, runpy, sys, traceback
import accelerate, datasets, evaluate, numpy, timm, torch, torchvision  # noqa: F401 - shared by every child
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.dup2(os.open(job["request"], os.O_RDONLY), 0)
            os.dup2(os.open(job["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
            os.dup2(1, 2)
            sys.stdin, sys.stdout, sys.stderr = open(0), open(1, "w"), open(2, "w")
            os.chdir(job["code"])
            sys.path.insert(0, job["code"])
            runpy.run_module("bench.engine.probe", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code or 0
        except BaseException:
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class ProbeServers:
    """One probe server per calling thread (the tests probe two copies at a time; each child runs one thread)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.local, self.all = folder, threading.local(), []
        self.count = itertools.count()

    def run(self, code: Path, request: dict) -> tuple[int, str]:
        """(exit status, output) of the probe's main for `request` with the code in `code`."""
        server = getattr(self.local, "server", None)
        if server is None:
            env = {**pinned_env(), "PYTHONWARNINGS": "ignore"}
            env.pop("PYTHONPATH")  # FERBench comes from each request's copy, never from here
            server = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, env=env, cwd=self.folder)
            self.local.server = server
            self.all.append(server)
        n = next(self.count)
        job = {"code": str(code), "request": str(self.folder / f"request{n}.json"),
               "out": str(self.folder / f"out{n}.txt")}
        Path(job["request"]).write_text(json.dumps(request))
        server.stdin.write(json.dumps(job) + "\n")
        server.stdin.flush()
        rc = json.loads(server.stdout.readline())["rc"]
        return rc, Path(job["out"]).read_text()

    def close(self) -> None:
        for server in self.all:
            server.stdin.close()
            server.wait(timeout=60)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> ProbeServers:
    pool = ProbeServers(tmp_path_factory.mktemp("probe-servers"))
    yield pool
    pool.close()


def _probe_in(servers: ProbeServers, code: Path, names: list[str]) -> list[dict]:
    """The probe results of `names` with the code in `code` (the probe's main, in the pinned environment)."""
    request = {"configs": [probe_config(build_config(overrides=CONFIGS[n])).to_dict() for n in names], "modules": []}
    rc, output = servers.run(code, request)
    line = next((ln for ln in reversed(output.splitlines()) if ln.startswith("FERBENCH-PROBE ")), None)
    assert rc == 0 and line is not None, output[-3000:]
    out = []
    for n, r in zip(names, json.loads(line[len("FERBENCH-PROBE "):]), strict=True):
        fp = {"key": fingerprint_key(build_config(overrides=CONFIGS[n])), "probe": PROBE_VERSION, **r}
        if "vector" in fp:
            fp["digest"] = digest(fp["vector"], fp["exact"])
        out.append(fp)
    return out


def _probe_split(servers: ProbeServers, code: Path, names: list[str]) -> list[dict]:
    """`_probe_in`, its configs shared by two servers at once."""
    halves = [names[::2], names[1::2]]
    with ThreadPoolExecutor(max_workers=2) as pool:
        even, odd = pool.map(lambda half: _probe_in(servers, code, half), halves)
    by_name = dict(zip(halves[0] + halves[1], even + odd, strict=True))
    return [by_name[n] for n in names]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory, servers: ProbeServers) -> dict[str, dict]:
    code = _copy(tmp_path_factory.mktemp("mutations"), "baseline")
    names = list(CONFIGS)
    return dict(zip(names, _probe_split(servers, code, names), strict=True))


def test_every_probe_exercises_its_methods_mechanism(baseline: dict[str, dict]) -> None:
    """Masks strictly between 0 and 1 at some step, declared method state that moves, an EMA that leaves its
    student, the threshold hook past its floor: a probe that leaves a mechanism asleep cannot see it change."""
    from bench.registry import _REGISTRY, create_method, discover

    discover()
    builtin = {name for name, cls in _REGISTRY.items() if cls.__module__.startswith("methods.")}
    assert {build_config(overrides=o).method for o in CONFIGS.values()} == builtin
    asleep = []
    for name, fp in baseline.items():
        assert "unavailable" not in fp, (name, fp.get("unavailable"))
        cfg = build_config(overrides=CONFIGS[name])
        declared = {s.name for s in create_method(cfg.method, 7, cfg.method_args).state_specs()}
        for stage, live in fp["live"].items():
            masks = live["mask_rate"]
            if masks and stage != "pretrain" and not any(0.0 < m < 1.0 for m in masks):
                asleep.append(f"{name}/{stage}: mask rate {masks}")
            if declared and not live["state_moved"]:
                asleep.append(f"{name}/{stage}: method state {sorted(declared)} never moved")
            if stage != "pretrain" and not live["ema_moved"] and probe_config(cfg).train.ema_decay > 0:
                asleep.append(f"{name}/{stage}: EMA still equal to its student")
    assert not asleep, "; ".join(asleep)
    for name in ("adacm", "adacm_recipe", "leaf", "leaf_recipe"):  # the hook left the floor (0.8)
        labels = dict(zip(baseline[name]["labels"], baseline[name]["vector"], strict=True))
        assert labels["main.6.threshold_mean"] > 0.8 + 1e-6, name


def test_every_behavioural_mutation_is_caught(baseline: dict[str, dict], servers: ProbeServers,
                                              tmp_path: Path) -> None:
    assert len(BEHAVIOURAL) >= 25

    def check(i: int) -> list[str]:
        what, path, old, new, names = BEHAVIOURAL[i]
        code = _copy(tmp_path, f"m{i}")
        _edit(code, path, old, new)
        mutated = _probe_in(servers, code, names)
        missed = [n for n, fp in zip(names, mutated, strict=True)
                  if "unavailable" in fp or same_behaviour(baseline[n], fp)]
        shutil.rmtree(code)
        return [f"{what} ({path}): not seen by {', '.join(missed)}"] if missed else []

    with ThreadPoolExecutor(max_workers=2) as pool:  # each probe child runs one thread
        missed = [m for ms in pool.map(check, range(len(BEHAVIOURAL))) for m in ms]
    assert not missed, "; ".join(missed)


def test_neutral_edits_and_a_new_logged_value_change_no_fingerprint(baseline: dict[str, dict],
                                                                     servers: ProbeServers, tmp_path: Path) -> None:
    assert len(NEUTRAL) >= 10
    code = _copy(tmp_path, "neutral")
    for _, path, old, new in NEUTRAL:
        _edit(code, path, old, new)
    names = ["fixmatch", "flexmatch", "softmatch", "dtasnl", "adacm", "leaf", "sitfer", "supervised"]
    probed = zip(names, _probe_split(servers, code, names), strict=True)
    changed = [f"{n}: {changed_values(baseline[n], fp)}" for n, fp in probed if not same_behaviour(baseline[n], fp)]
    assert not changed, "; ".join(changed)


def test_comments_and_docstrings_keep_the_code_state(tmp_path: Path) -> None:
    """Only code that could behave differently is a new code state: a comment-only edit reuses every cached
    fingerprint, so `status` answers at once."""
    code = _copy(tmp_path, "comment")
    script = "from bench.engine.codestate import code_state; print(code_state())"
    env = {"PYTHONPATH": str(code), "PATH": "/usr/bin:/bin"}

    def state() -> str:
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=code,
                              check=True).stdout.strip()

    before = state()
    assert before == code_state()  # the copy is this code
    _edit(code, "methods/fixmatch.py", "class FixMatch(Method):", "class FixMatch(Method):  # a comment")
    _edit(code, "methods/flexmatch.py", "Mask from the current class-wise thresholds,", "Mask from the thresholds,")
    assert state() == before
    _edit(code, "methods/fixmatch.py", "loss = loss_x + self.args.lambda_u * loss_u",
          "loss = self.args.lambda_u * loss_u + loss_x")
    assert state() != before
