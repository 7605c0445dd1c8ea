"""Identities that mean the same on every machine (issue 26): dataset identities made of content, fingerprints
equal under another instruction set, plugins' code in the code state, probes that never stand in a run's way."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_overrides, write_dist_info
from PIL import Image

from bench.cli import main
from bench.config import build_config
from bench.data.cache import load_prepared, prepare_dataset
from bench.data.splits import make_split
from bench.data.synthfer import generate_synthfer
from bench.engine.fingerprint import probe
from bench.results.freshness import assess

REPO = Path(__file__).resolve().parents[1]
#: an AVX2-only x86-64 machine, emulated on an AVX-512 one (the kernels each library picks follow these)
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "NPY_DISABLE_CPU_FEATURES": "AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR"}


# ---- dataset identities of content ---------------------------------------------------------------------------


def _manifest(folder: Path) -> tuple[str, str]:
    data = load_prepared(folder)
    m = make_split(data.name, data.fingerprint, data.train.ids, data.train.labels, data.num_classes,
                   protocol="fraction", budget=0.1, split_seed=0, class_names=data.class_names)
    return data.fingerprint, m["sha256"]


def test_a_datasets_identity_is_its_content_not_its_folder_or_times(tmp_path: Path) -> None:
    raw = tmp_path / "a" / "synthfer"
    generate_synthfer(raw, n_train=70, n_test=35, seed=3, size=32, workers=1)
    basic = raw / "basic"
    first = _manifest(prepare_dataset("synthfer", str(basic), 32, str(tmp_path / "cache1"), workers=1))
    # the same images in another folder, copied with new times, prepared into another cache
    copy = tmp_path / "b" / "elsewhere"
    shutil.copytree(basic, copy, copy_function=shutil.copy)  # cp -r: new modification times
    os.utime(next((copy / "Image" / "aligned").iterdir()), (1e9, 1e9))
    again = _manifest(prepare_dataset("synthfer", str(copy), 32, str(tmp_path / "cache2"), workers=1))
    assert again == first
    # one pixel of one image changed: another identity, another manifest
    image = next(iter(sorted((copy / "Image" / "aligned").iterdir())))
    pixels = np.asarray(Image.open(image).convert("RGB")).copy()
    pixels[5, 5] = 255 - pixels[5, 5]
    Image.fromarray(pixels).save(image, quality=100)
    changed = _manifest(prepare_dataset("synthfer", str(copy), 32, str(tmp_path / "cache2"), workers=1))
    assert changed[0] != first[0] and changed[1] != first[1]


def test_a_cache_prepared_before_content_identities_gets_the_same_identity(tmp_path: Path) -> None:
    raw = tmp_path / "synthfer"
    generate_synthfer(raw, n_train=35, n_test=14, seed=1, size=32, workers=1)
    folder = prepare_dataset("synthfer", str(raw / "basic"), 32, str(tmp_path / "cache"), workers=1)
    identity = load_prepared(folder).fingerprint
    info = json.loads((folder / "info.json").read_text())
    del info["identity"]  # as an older FERBench wrote it
    (folder / "info.json").write_text(json.dumps(info))
    assert load_prepared(folder).fingerprint == identity  # computed from its content, and kept
    assert json.loads((folder / "info.json").read_text())["identity"] == identity


# ---- the same fingerprint on another instruction set ---------------------------------------------------------


def _committed_settings() -> list[dict]:
    out = {}
    for path in sorted((REPO / "leaderboards").rglob("*.fingerprints.json")):
        for key, entry in json.loads(path.read_text()).items():
            out[key] = entry
    return list(out.values())


def _digests_in(env: dict[str, str], cache: Path) -> dict[str, str]:
    code = ("import json; from bench.engine.fingerprint import config_of_fingerprint, current_fingerprints; "
            f"entries = json.load(open({str(cache / 'entries.json')!r})); "
            "fps = current_fingerprints([config_of_fingerprint(e) for e in entries]); "
            "print('DIGESTS ' + json.dumps({k: v.get('digest') for k, v in fps.items()}))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800, cwd=REPO,
                         env={**os.environ, **env, "FERBENCH_CACHE": str(cache), "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(next(ln for ln in res.stdout.splitlines() if ln.startswith("DIGESTS "))[len("DIGESTS "):])


@pytest.mark.subprocess
def test_fingerprints_are_the_same_bits_natively_and_on_an_avx2_machine(tmp_path: Path) -> None:
    """Every key of the committed leaderboards (fingerprinted natively, on AVX-512), probed from scratch (an empty
    cache) under AVX2 emulation: the same digests. The emulation is real: the same probe run in-process, unpinned,
    differs."""
    entries = _committed_settings()
    assert entries
    (tmp_path / "entries.json").write_text(json.dumps(entries))
    avx2 = _digests_in(AVX2, tmp_path)
    assert avx2 == {e["key"]: e["digest"] for e in entries}
    unpinned = ("import json, torch; from bench.config import build_config; from bench.engine.fingerprint import "
                "probe_config; from bench.engine.probe import probe_config_dict; "
                "print('V', json.dumps(probe_config_dict(probe_config(build_config(overrides=['method=supervised']))"
                ".to_dict())['vector']))")

    def vector(env: dict[str, str]) -> list[float]:
        res = subprocess.run([sys.executable, "-c", unpinned], capture_output=True, text=True, timeout=600,
                             cwd=REPO, env={**os.environ, **env, "PYTHONPATH": str(REPO)}, check=True)
        return json.loads(next(ln for ln in res.stdout.splitlines() if ln.startswith("V "))[2:])

    assert vector({}) != vector(AVX2)


# ---- plugins and probes that cannot run ----------------------------------------------------------------------

PLUGIN = '''
import torch
from torch import nn
from bench.errors import FERBenchError
from bench.method import Method, StepOutput
from bench.registry import register_method


@register_method("edgeplug")
class EdgePlug(Method):
    """A third-party method that needs images of at least 40 pixels."""

    def training_step(self, model, batch, ctx):
        x = batch.labeled["weak"]
        if x.shape[-1] < 40:
            raise FERBenchError(f"edgeplug needs at least 40 px, got {x.shape[-1]}")
        loss = nn.functional.cross_entropy(model(x), batch.labeled["y"]) * WEIGHT
        return StepOutput(loss, {})
'''


def _plugin(folder: Path, weight: float) -> None:
    (folder / "edgeplug.py").write_text(PLUGIN.replace("WEIGHT", repr(weight)))
    write_dist_info(folder, "edgeplug", {"edgeplug": "edgeplug"})


@pytest.mark.subprocess
def test_an_edited_entry_point_plugin_is_stale_and_a_40px_method_has_its_fingerprint(shared_cache: Path,
                                                                                    tmp_path: Path) -> None:
    plugins, cache, out = tmp_path / "site", tmp_path / "cache", tmp_path / "out"
    plugins.mkdir()
    cache.mkdir()
    _plugin(plugins, 1.0)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugins), str(REPO)]), "FERBENCH_CACHE": str(cache),
           "PYTHONWARNINGS": "ignore"}

    def ferbench(*args: str) -> subprocess.CompletedProcess:
        res = subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, env=env,
                             timeout=900, cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
        return res

    ferbench("run", "--quiet", *tiny_overrides(shared_cache, out, method="edgeplug", **{"data.image_size": 48}))
    record = json.loads(next((out / "records").glob("*.json")).read_text())
    assert "unavailable" not in record["fingerprint"] and record["fingerprint"]["key"].startswith("edgeplug@harness#")
    assert "0 stale" in ferbench("status", str(out)).stdout.strip().splitlines()[-1]
    _plugin(plugins, 2.0)  # the plugin's own loss changed
    res = ferbench("status", str(out))
    assert res.stdout.strip().splitlines()[-1].startswith("0 done, 1 stale")
    assert "computing 1 fingerprint(s)" in res.stderr
    assert ferbench("status", str(out)).stderr.count("computing") == 0  # once per code state
    # --no-probe answers from the cache only: after another edit, the record cannot be assessed, and says so
    _plugin(plugins, 3.0)
    res = ferbench("status", "--no-probe", str(out))
    last = res.stdout.strip().splitlines()[-1]
    assert "computing" not in res.stderr and last.startswith("1 done, 0 stale")
    assert last.endswith("(1 of the done not assessed: fingerprint unknown)") and "not probed" in res.stdout


@pytest.mark.subprocess
def test_sitfer_on_eight_classes_is_probed() -> None:
    fp = probe(build_config(overrides=["method=sitfer", "data.name=affectnet8"]))
    assert "unavailable" not in fp, fp.get("unavailable")
    assert "main.final.recall7" in fp["labels"]  # eight classes, eight class words


def test_a_probe_that_cannot_run_is_recorded_and_never_stops_the_run(shared_cache: Path, tmp_path: Path) -> None:
    """A method registered in this process only (the probe's process cannot import it): the run trains and its
    record says why it has no fingerprint; status and leaderboards show it as unknown."""
    from torch import nn

    from bench import registry
    from bench.method import Method, StepOutput

    @registry.register_method("local_only")
    class LocalOnly(Method):
        def training_step(self, model: nn.Module, batch, ctx) -> StepOutput:
            return StepOutput(nn.functional.cross_entropy(model(batch.labeled["weak"]), batch.labeled["y"]))

    try:
        assert main(["run", "--quiet", *tiny_overrides(shared_cache, tmp_path, method="local_only")]) == 0
    finally:
        registry._REGISTRY.pop("local_only", None)
    record = json.loads(next((tmp_path / "records").glob("*.json")).read_text())
    assert "unknown method 'local_only'" in record["fingerprint"]["unavailable"]
    fresh = assess([record], probe=False)[record["run_id"]]
    assert fresh.state == "unknown" and "could not run" in fresh.changed[0]


def test_records_name_the_instruction_set_their_kernels_used(shared_cache: Path, tmp_path: Path) -> None:
    import torch

    assert main(["run", "--quiet", *tiny_overrides(shared_cache, tmp_path, method="supervised")]) == 0
    record = json.loads(next((tmp_path / "records").glob("*.json")).read_text())
    assert record["host"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["split"]["identity"] == "content-v1" and len(record["split"]["dataset_identity"]) == 64


@pytest.mark.subprocess
def test_synthfer_data_has_the_same_identity_on_an_avx2_machine(tmp_path: Path) -> None:
    """The generator's float arithmetic follows numpy's kernels; the images, hence the identity and every split
    manifest of the demo's data, are the same on an AVX-512 and an AVX2-only CPU."""
    code = ("import sys; from bench.data.synthfer import generate_synthfer; "
            "from bench.data.cache import prepare_dataset, load_prepared; d = sys.argv[1]; "
            "generate_synthfer(d + '/raw', n_train=140, n_test=70, seed=0, size=100, workers=1); "
            "print('ID', load_prepared(prepare_dataset('synthfer', d + '/raw/basic', 32, d + '/cache', "
            "workers=1)).fingerprint)")

    def identity(env: dict[str, str], folder: Path) -> str:
        res = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=600,
                             env={**os.environ, **env, "PYTHONPATH": str(REPO)}, check=True)
        return next(ln for ln in res.stdout.splitlines() if ln.startswith("ID "))[3:]

    assert identity({}, tmp_path / "native") == identity(AVX2, tmp_path / "avx2")
