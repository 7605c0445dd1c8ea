"""Start-up settings and values that used to be accepted wrongly or end in a traceback.

Start-up (bench/startup.py): an OpenMP setting torch's runtime (libgomp) would not use as written, or a
SLURM_CPUS_PER_TASK that is no count, is one line and exit status 2 before anything runs; a setting libgomp reads but
that is not what runs (a thread count above the machine's cores) is recorded as what is in effect, the user's text
beside it. Values: every command-line number is checked by the config's checker; a preset or recipe given as a
list or mapping, `data.unlabeled=rest` with nothing left unlabeled, a SIT-FER text seed torch cannot take, and two
presets layered on each other (the last replaces the first wholly).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_overrides

from bench.checks import check_value
from bench.cli import main
from bench.config import TorchSeed, build_config, run_id
from bench.errors import FERBenchError
from bench.startup import (
    MARKER,
    VARIABLES,
    _as_read,
    allocated_cpus,
    default_threads,
    physical_cores,
    slurm_cpus,
    usable_cpus,
)

REPO = Path(__file__).resolve().parents[1]
SHORT = {"train.iterations": 2, "train.eval_every": 2, "train.checkpoint_every": 2, "train.log_every": 2}


def _env(**extra: str) -> dict[str, str]:
    """A user's shell: no OpenMP or SLURM settings, nothing FERBench set; this checkout first on the path."""
    drop = (*VARIABLES, MARKER, "SLURM_CPUS_PER_TASK")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore", **extra}


def _ferbench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=REPO, capture_output=True, text=True,
                          env=env or _env(), timeout=600)


def _one_line(stderr: str, *expected: str) -> None:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("ferbench: error: ") and all(e in lines[0] for e in expected), lines[0]


# ---- start-up settings ----------------------------------------------------------------------------------------------

@pytest.mark.subprocess
@pytest.mark.parametrize("name, value", [
    ("OMP_NUM_THREADS", "abc"), ("OMP_NUM_THREADS", "0"), ("OMP_NUM_THREADS", "-1"), ("OMP_NUM_THREADS", "1.5"),
    ("GOMP_SPINCOUNT", "garbage"), ("GOMP_SPINCOUNT", "-5"), ("OMP_WAIT_POLICY", "sometimes"),
    ("SLURM_CPUS_PER_TASK", "abc"), ("SLURM_CPUS_PER_TASK", "0"),
])
def test_a_start_up_setting_that_would_not_be_used_as_written_is_one_line(tmp_path: Path, name: str,
                                                                          value: str) -> None:
    res = _ferbench("run", "--quiet", f"output_dir={tmp_path / 'out'}", env=_env(**{name: value}))
    assert res.returncode == 2
    _one_line(res.stderr, f"{name}={value!r}: expected")  # and no "libgomp: Invalid value" line: torch never loaded
    assert not (tmp_path / "out").exists()


def _libgomp() -> Path:
    spec = importlib.util.find_spec("torch")
    found = sorted(Path(spec.origin).parent.glob("lib/libgomp*.so*")) if spec and spec.origin else []
    if not found:
        pytest.skip("torch ships no libgomp here")
    return found[0]


def _libgomp_reads(name: str, value: str) -> str | None:
    """What torch's libgomp, loaded in a fresh process with `name=value`, reads: its displayed value, or None when
    it reports the value invalid."""
    load = f"import ctypes; ctypes.CDLL({str(_libgomp())!r})"
    res = subprocess.run([sys.executable, "-c", load], env=_env(OMP_DISPLAY_ENV="VERBOSE", **{name: value}),
                         capture_output=True, text=True, timeout=60)
    if f"Invalid value for environment variable {name}" in res.stderr:
        return None
    shown = [ln.strip().partition(" = ")[2].strip("'") for ln in res.stderr.splitlines()
             if ln.strip().startswith(f"{name} = ")]
    return shown[0].split(",")[0]


@pytest.mark.parametrize("name, value", [
    ("OMP_NUM_THREADS", "abc"), ("OMP_NUM_THREADS", "0"), ("OMP_NUM_THREADS", ""), ("OMP_NUM_THREADS", "2,0"),
    ("OMP_NUM_THREADS", "99999999999999999999999"), ("OMP_NUM_THREADS", "3"), ("OMP_NUM_THREADS", "+2"),
    ("OMP_NUM_THREADS", "2,1"), ("OMP_NUM_THREADS", "99999"),
    ("GOMP_SPINCOUNT", "garbage"), ("GOMP_SPINCOUNT", "5x"), ("GOMP_SPINCOUNT", "99999999999999999999999"),
    ("GOMP_SPINCOUNT", "1000"), ("GOMP_SPINCOUNT", " 5 k "), ("GOMP_SPINCOUNT", "INFINITE"),
    ("OMP_WAIT_POLICY", "sometimes"), ("OMP_WAIT_POLICY", ""), ("OMP_WAIT_POLICY", "Passive"),
    ("OMP_WAIT_POLICY", " active "),
])
def test_values_are_read_as_libgomp_reads_them(name: str, value: str) -> None:
    """Each value against the runtime itself: refused exactly where libgomp would ignore it, else read as it does."""
    gomp = _libgomp_reads(name, value)
    try:
        ours: str | None = _as_read(name, value)
    except FERBenchError:
        ours = None
    assert ours == gomp


def test_a_negative_spin_count_is_refused_although_libgomp_wraps_it_round() -> None:
    assert _libgomp_reads("GOMP_SPINCOUNT", "-5") == str(2**64 - 5)  # an endless spin nobody asked for
    with pytest.raises(FERBenchError, match=r"GOMP_SPINCOUNT='-5': expected a whole number >= 0"):
        _as_read("GOMP_SPINCOUNT", "-5")


def test_a_run_gets_one_thread_count_whichever_way_it_is_started(monkeypatch: pytest.MonkeyPatch) -> None:
    """`ferbench run` (default_threads) and a job or pack given no count (allocated_cpus) count the same CPUs: the
    cores of the affinity; a count given or SLURM's wins."""
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    from bench.launch import jobs

    assert jobs.allocated_cpus is allocated_cpus  # the jobs and the packs count through bench.startup
    assert allocated_cpus() == default_threads() == physical_cores(os.sched_getaffinity(0))
    assert allocated_cpus(3) == 3
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert allocated_cpus(3) == default_threads() == 1


@pytest.mark.subprocess
def test_slurm_cpus_are_capped_at_the_cpus_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "99999")
    assert slurm_cpus() == default_threads() == usable_cpus()
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert default_threads() == 1
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", " 12x")
    with pytest.raises(FERBenchError, match=r"^SLURM_CPUS_PER_TASK=' 12x': expected a whole number of CPUs >= 1$"):
        default_threads()
    # what FERBench sets from it, in a fresh process, and the threads a job asked for beyond the CPUs there are
    probe = ("import json, os, bench.startup as s; s.gpu_host = lambda: False; a = s.configure(); "
             "b = s.configure(99999); print(json.dumps([a['OMP_NUM_THREADS'], b['OMP_NUM_THREADS']]))")
    res = subprocess.run([sys.executable, "-c", probe], env=_env(SLURM_CPUS_PER_TASK="99999"), capture_output=True,
                         text=True, timeout=60, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == [str(usable_cpus())] * 2


@pytest.mark.subprocess
def test_the_record_gives_the_settings_in_effect_and_the_users_text_beside(shared_cache: Path,
                                                                           tmp_path: Path) -> None:
    """OMP_NUM_THREADS=99999 is read by libgomp, then capped by torch (MKL) at the machine's cores; 10k spins are
    10,000."""
    out = tmp_path / "out"
    res = _ferbench("run", "--quiet", *tiny_overrides(shared_cache, out, method="supervised", **SHORT),
                    env=_env(OMP_NUM_THREADS="99999", GOMP_SPINCOUNT="10k"))
    assert res.returncode == 0, res.stderr[-3000:]
    (path,) = (out / "records").glob("*.json")
    host = json.loads(path.read_text())["host"]
    assert 1 <= host["torch_threads"] <= (os.cpu_count() or 1)
    assert host["openmp"] == {"OMP_NUM_THREADS": str(host["torch_threads"]), "OMP_WAIT_POLICY": None,
                              "GOMP_SPINCOUNT": "10000", "read_at_load": True,
                              "set_by": {"OMP_NUM_THREADS": "user", "GOMP_SPINCOUNT": "user"},
                              "requested": {"OMP_NUM_THREADS": "99999", "GOMP_SPINCOUNT": "10k"}}


# ---- values -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("item, expected", [
    ("preset=[adacm, usb]", "override preset=['adacm', 'usb']: expected null or a string"),
    ("preset={adacm: 1}", "override preset={'adacm': 1}: expected null or a string"),
    ("recipe=[usb]", "recipe=['usb']: expected a string"),
    ("recipe={usb: 1}", "recipe={'usb': 1}: expected a string"),
])
def test_a_preset_or_recipe_that_is_no_name_is_one_line(tmp_path: Path, capsys, item: str, expected: str) -> None:
    assert main(["run", "--quiet", item, f"output_dir={tmp_path / 'out'}"]) == 2
    _one_line(capsys.readouterr().err, expected)
    config = tmp_path / "c.yaml"
    key, _, value = item.partition("=")
    config.write_text(f"{key}: {value}\n")
    assert main(["run", "--quiet", "-c", str(config), f"output_dir={tmp_path / 'out'}"]) == 2
    _one_line(capsys.readouterr().err, "expected", key)
    assert not (tmp_path / "out").exists()


@pytest.mark.subprocess
def test_a_preset_given_as_a_list_in_a_config_file_is_one_line_from_the_real_command(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("preset: [usb]\n")
    res = _ferbench("run", "--quiet", "-c", str(config), f"output_dir={tmp_path / 'out'}")
    assert res.returncode == 2
    _one_line(res.stderr, f"{config}:preset=['usb']: expected null or a string")
    assert not (tmp_path / "out").exists()


@pytest.mark.subprocess
def test_unlabeled_rest_with_every_image_labeled_is_one_line_before_anything_is_written(tmp_path: Path) -> None:
    """A fraction budget of 1 labels every image: known from the config, refused before any data is prepared (other
    protocols are refused when the split is drawn, before its manifest is written: the test below)."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = tiny_overrides(cache, out, method="fixmatch", **{"data.unlabeled": "rest", "data.budget": 1.0})
    res = _ferbench("run", "--quiet", *args)
    assert res.returncode == 2
    _one_line(res.stderr, "data.unlabeled='rest' with data.budget=1 (protocol 'fraction') labels every training "
                          "image: none is left for the unlabeled views of method 'fixmatch'")
    assert not out.exists() and not cache.exists()  # no data prepared, no split drawn


def test_unlabeled_rest_with_every_image_labeled_is_fine_for_a_method_without_unlabeled_views(
        shared_cache: Path) -> None:
    from accelerate import Accelerator

    from bench.engine.run_data import prepare_run_data
    from bench.registry import get_method_class

    overrides = [*tiny_overrides(shared_cache, Path("x")), "data.unlabeled=rest", "data.budget=1.0"]
    run = prepare_run_data(build_config(overrides=[*overrides, "method=supervised"]), Accelerator(cpu=True),
                           get_method_class("supervised"))
    assert len(run.labeled_pool) == 280 and len(run.unlabeled_pool) == 0
    with pytest.raises(FERBenchError, match="none is left for the unlabeled views of method 'meanteacher'"):
        prepare_run_data(build_config(overrides=[*overrides, "method=meanteacher"]), Accelerator(cpu=True),
                         get_method_class("meanteacher"))


@pytest.mark.subprocess
def test_a_sitfer_text_seed_torch_cannot_take_is_one_line(tmp_path: Path) -> None:
    res = _ferbench("run", "--quiet", "method=sitfer", f"method_args.text_seed={2**64}",
                    f"output_dir={tmp_path / 'out'}")
    assert res.returncode == 2
    _one_line(res.stderr, f"method_args.text_seed={2**64}: expected null or an integer in")
    assert not (tmp_path / "out").exists()


def test_the_seed_range_is_exactly_what_torch_takes() -> None:
    import torch

    for seed in (-(2**63) - 1, -(2**63), -1, 0, 2**64 - 1, 2**64):
        try:
            torch.Generator().manual_seed(seed)
            torch_takes = True
        except (ValueError, RuntimeError, OverflowError):
            torch_takes = False
        try:
            check_value(seed, TorchSeed, "seed")
            we_take = True
        except FERBenchError:
            we_take = False
        assert we_take == torch_takes, seed


@pytest.mark.parametrize("args, expected", [
    (["plan-seeds", "--sd-seed", "1e308"], "plan-seeds --sd-seed 1e308: expected a number in (0, 100]"),
    (["plan-seeds", "--sd-seed", "nan"], "plan-seeds --sd-seed nan: expected a number in (0, 100]"),
    (["plan-seeds", "--sd-seed", "3", "--se-image", "1e300"], "plan-seeds --se-image 1e300: expected a number in "
                                                              "[0, 100]"),
    (["plan-seeds", "--sd-seed", "3", "--delta", "1e300"], "--delta 1e+300: expected positive differences in "
                                                           "percentage points, at most 100"),
    (["plan-seeds", "--sd-seed", "3", "--alpha", "one"], "plan-seeds --alpha one: expected a number in (0, 1)"),
    (["bench", "train", "fixmatch", "--contention", "--wait-quiet", "inf"],
     "bench train --wait-quiet inf: expected a number in [0, inf)"),
    (["bench", "train", "fixmatch", "--contention", "--repeats", "0"],
     "bench train --repeats 0: expected an integer in [1, inf)"),
    (["bench", "train", "fixmatch", "--contention", "--threads", "2,0"],
     "bench train --threads '2,0': expected whole numbers separated by commas, each an integer in [1, inf)"),
    (["bench", "memory", "--image-size", "2048"], "bench memory --image-size 2048: expected an integer in [8, 1024]"),
    (["sweep", "spec.yaml", "--mem-gb", "-4"], "sweep --mem-gb -4: expected a number in (0, inf)"),
    (["data", "prepare", "synthfer", "--workers", "0"], "data prepare --workers 0: expected an integer in [1, inf)"),
])
def test_command_line_numbers_are_checked_by_the_configs_checker(tmp_path: Path, capsys,
                                                                 monkeypatch: pytest.MonkeyPatch, args: list[str],
                                                                 expected: str) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may be written here (nor anywhere: the flags are checked as parsed)
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    _one_line(captured.err, expected)
    assert not any(tmp_path.iterdir())


@pytest.mark.subprocess
def test_busy_zero_is_refused_by_the_real_command_not_made_one(tmp_path: Path) -> None:
    res = _ferbench("bench", "train", "fixmatch", "--contention", "--busy", "0", "--cache-dir", str(tmp_path / "c"),
                    "--json", str(tmp_path / "out.json"))
    assert res.returncode == 2
    _one_line(res.stderr, "bench train --busy 0: expected an integer in [1, inf)")
    assert not any(tmp_path.iterdir())


@pytest.mark.subprocess
def test_a_huge_sd_seed_is_one_line_from_the_real_command() -> None:
    res = _ferbench("plan-seeds", "--sd-seed", "1e200")
    assert res.returncode == 2 and res.stdout == ""
    _one_line(res.stderr, "plan-seeds --sd-seed 1e200: expected a number in (0, 100]")


def test_the_contention_benchmark_checks_its_settings_itself() -> None:
    from bench.benchmarks.train_speed import run_contention_benchmark

    with pytest.raises(FERBenchError, match=r"bench train --busy=0: expected an integer in \[1, inf\)"):
        run_contention_benchmark("fixmatch", busy=0)
    with pytest.raises(FERBenchError, match=r"bench train --wait-quiet=inf: expected a number in \[0, inf\)"):
        run_contention_benchmark("fixmatch", wait_quiet=float("inf"))


# ---- presets layered on each other ----------------------------------------------------------------------------------

def test_a_second_preset_replaces_the_first_wholly() -> None:
    adacm = build_config(overrides=["preset=adacm"])
    for layered in (build_config(overrides=["preset=ssfer", "preset=adacm"]),
                    build_config(base={"preset": "ssfer"}, overrides=["preset=adacm"])):
        assert layered.preset == "adacm" and layered.to_dict() == adacm.to_dict() and run_id(layered) == run_id(adacm)
    # values the user writes stay, in their place: after the preset they win, before it the preset's do
    assert build_config(overrides=["preset=ssfer", "train.mu=2", "preset=adacm"]).train.mu == 1
    assert build_config(overrides=["preset=ssfer", "preset=adacm", "train.mu=2"]).train.mu == 2
    assert build_config(overrides=["preset=ssfer", "data.image_size=64", "preset=adacm"]).data.image_size == 64
    # preset=null removes one, a recipe's own too (its other values stay)
    none = build_config(overrides=["preset=ssfer", "preset=null"])
    assert none.preset is None and none.to_dict() == build_config().to_dict()
    recipe = build_config(overrides=["recipe=ssfer", "method=frpretrain", "preset=adacm"])
    assert recipe.preset == "adacm" and recipe.stages == {} and recipe.model.backbone == "ferbench_cnn_small"
    assert recipe.optim.name == "adam" and recipe.augment.normalize_mean == (0.588, 0.459, 0.402)


@pytest.mark.subprocess
def test_two_presets_from_the_real_command_train_with_the_last_ones_values(shared_cache: Path,
                                                                           tmp_path: Path) -> None:
    """ssfer sets stages supervised does not have: left behind, they would stop the run."""
    out = tmp_path / "out"
    res = _ferbench("run", "--quiet", "preset=ssfer", "preset=usb",
                    *tiny_overrides(shared_cache, out, method="supervised", **SHORT))
    assert res.returncode == 0, res.stderr[-3000:]
    (path,) = (out / "records").glob("*.json")
    record = json.loads(path.read_text())
    alone = build_config(overrides=["preset=usb", *tiny_overrides(shared_cache, out, method="supervised", **SHORT)])
    assert record["run_id"] == run_id(alone) and record["config"]["preset"] == "usb"
    assert record["config"]["stages"] == {} and record["config"]["optim"]["name"] == "sgd"


#: run ids computed before presets were made to replace each other: a config naming one preset keeps its id
PINNED = {
    (): "fixmatch_synthfer_fraction0.1_s0_619ace00d9",
    ("method=supervised", "data.budget=0.05", "seed=2"): "supervised_synthfer_fraction0.05_s2_4e11be82ef",
    ("preset=adacm", "train.mu=2"): "fixmatch_synthfer_fraction0.1_s0_f2916932c7",
    ("train.mu=2", "preset=adacm"): "fixmatch_synthfer_fraction0.1_s0_be7484b018",
    ("preset=adacm", "preset=adacm"): "fixmatch_synthfer_fraction0.1_s0_be7484b018",
    ("recipe=ssfer", "method=frpretrain"): "frpretrain-ssfer_synthfer_fraction0.1_s0_cbfaba589f",
    ("recipe=ssfer", "method=frpretrain", "preset=ssfer"): "frpretrain-ssfer_synthfer_fraction0.1_s0_cbfaba589f",
    ("recipe=adacm", "method=adacm"): "adacm-adacm_synthfer_fraction0.1_s0_b6bde69dfe",
    ("method=frpretrain", "preset=ssfer"): "frpretrain_synthfer_fraction0.1_s0_ec54b46eae",
    ("method=fixmatch", "data.unlabeled=rest", "data.budget=0.1"): "fixmatch_synthfer_fraction0.1_s0_889784c25e",
    ("method=sitfer", "method_args.text_seed=-1"): "sitfer_synthfer_fraction0.1_s0_fdd3227e26",
    ("method=sitfer", "method_args.text_seed=5", "preset=null"): "sitfer_synthfer_fraction0.1_s0_5181b775b5",
}


def test_ordinary_configs_keep_their_run_ids() -> None:
    assert {k: run_id(build_config(overrides=list(k))) for k in PINNED} == PINNED
    assert run_id(build_config(base={"preset": "usb", "train": {"iterations": 9}})) == \
        "fixmatch_synthfer_fraction0.1_s0_82a05211a4"
    assert run_id(build_config(base={"preset": "usb"}, overrides=["train.mu=1"])) == \
        "fixmatch_synthfer_fraction0.1_s0_1b67782002"
