"""The method plugin contract (`ferbench check-method`): every registered method passes it, through the same code a
third party runs; deliberately broken plugins fail it, each naming the check it breaks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import PluginInstaller, tiny_overrides, write_dist_info

from bench.cli import main
from bench.contract import CHECKS, CheckOptions, check_method
from bench.registry import method_names

REPO = Path(__file__).resolve().parents[1]
IN_PROCESS = frozenset({"fingerprint", "two-process"})  # the checks that start other processes


@pytest.mark.parametrize("name", method_names())
def test_every_registered_method_passes_the_contract_in_process(name: str, shared_cache: Path, tmp_path: Path) -> None:
    results = check_method(name, CheckOptions(cache_dir=shared_cache, work_dir=tmp_path, skip=IN_PROCESS))
    assert [r.check for r in results] == list(CHECKS)
    assert [r.line() for r in results if r.status == "fail"] == []


@pytest.mark.subprocess
@pytest.mark.parametrize("name", method_names())
def test_every_registered_method_passes_the_contract_across_processes(name: str, shared_cache: Path,
                                                                       tmp_path: Path) -> None:
    """Its fingerprint probe (a child process) and a two-process run (gloo), whose state agrees at every checkpoint."""
    skip = frozenset(CHECKS) - IN_PROCESS
    results = check_method(name, CheckOptions(cache_dir=shared_cache, work_dir=tmp_path, skip=skip))
    assert {r.check: r.status for r in results if r.check in IN_PROCESS} == {"fingerprint": "pass",
                                                                             "two-process": "pass"}, results


# ---- broken plugins: each fails the check it breaks, named, and the command exits 1 --------------------------------

_HEADER = """\
from dataclasses import dataclass
from typing import Any
import random
import torch
import torch.nn.functional as F
from bench.method import Method, MethodArgs, Probability, StepOutput, arg, joint_forward
from bench.registry import register_method
"""

BROKEN = {
    # a tensor attribute the method never declared: a resumed run would start it afresh
    "undeclared_state": ("state", "attribute(s) seen hold tensors but are not declared state", """
        @register_method("undeclared_state")
        class UndeclaredState(Method):
            def setup(self, info):
                self.seen = torch.zeros(self.num_classes)

            def training_step(self, model, batch, ctx):
                self.seen = self.seen + torch.bincount(batch.labeled["y"], minlength=self.num_classes)
                return StepOutput(F.cross_entropy(model(batch.labeled["weak"]), batch.labeled["y"]))
    """),
    # `if tensor:` in the step: on a GPU, the step waits for the device there
    "host_read": ("host-reads", "training_step read tensor values on the host 12 time(s) in 12 steps", """
        @register_method("host_read")
        class HostRead(Method):
            def training_step(self, model, batch, ctx):
                loss = F.cross_entropy(model(batch.labeled["weak"]), batch.labeled["y"])
                if loss > 100:  # __bool__: a host read
                    loss = loss * 0
                return StepOutput(loss)
    """),
    # randomness from Python's own generator, which neither the engine's per-step seeds nor a checkpoint cover
    "python_random": ("resume", "the run differs from the uninterrupted one", """
        @register_method("python_random")
        class PythonRandom(Method):
            def training_step(self, model, batch, ctx):
                loss = F.cross_entropy(model(batch.labeled["weak"]), batch.labeled["y"])
                return StepOutput(loss * (1.0 + random.random()))
    """),
    # an argument annotated Any: a run config could pass any value, unchecked
    "untyped_argument": ("arguments", "weight: annotated Any, which accepts any value", """
        @dataclass
        class UntypedArgs(MethodArgs):
            weight: Any = arg(1.0, "no type")

        @register_method("untyped_argument")
        class UntypedArgument(Method):
            Args = UntypedArgs

            def training_step(self, model, batch, ctx):
                loss = F.cross_entropy(model(batch.labeled["weak"]), batch.labeled["y"])
                return StepOutput(loss * self.args.weight)
    """),
    # a view it reads but never declared (so the engine never makes it)
    "undeclared_view": ("views", "reads view(s) strong it does not declare", """
        @register_method("undeclared_view")
        class UndeclaredView(Method):
            views = ("weak",)

            def training_step(self, model, batch, ctx):
                logits_x, logits_u = joint_forward(model, batch.labeled["weak"], batch.unlabeled["strong"])
                return StepOutput(F.cross_entropy(logits_x, batch.labeled["y"]) + 0 * logits_u.sum())
    """),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_plugin_fails_the_check_it_breaks(name: str, shared_cache: Path, tmp_path: Path, capsys,
                                                   install_plugin: PluginInstaller) -> None:
    check, message, source = BROKEN[name]
    install_plugin(f"broken-{name}", name, _HEADER + textwrap.dedent(source))
    code = main(["check-method", name, "--cache-dir", str(shared_cache), "--work-dir", str(tmp_path / "work"),
                 "--skip", "fingerprint", "--skip", "two-process"])
    out = capsys.readouterr().out
    assert code == 1, out
    failed = [ln for ln in out.splitlines() if ln.startswith("FAIL")]
    assert failed and failed[0].split()[1] == check, out
    assert message in failed[0]
    if check in ("host-reads", "resume", "arguments"):  # the rest of the contract holds: one check names the fault
        assert len(failed) == 1, out


@pytest.mark.subprocess
def test_a_state_updated_from_one_process_only_fails_the_two_process_check(shared_cache: Path, tmp_path: Path,
                                                                           install_plugin: PluginInstaller) -> None:
    install_plugin("local-counts", "localcounts", """\
import torch
from bench.registry import register_method
from methods.supervised import Supervised


@register_method("localcounts")
class LocalCounts(Supervised):
    def __init__(self, num_classes, **arguments):
        super().__init__(num_classes, **arguments)
        self.add_state("seen", torch.zeros(num_classes))  # declared "same" on every process, but

    def training_step(self, model, batch, ctx):
        self.seen = self.seen + torch.bincount(batch.labeled["y"], minlength=self.num_classes)  # its own batch only
        return super().training_step(model, batch, ctx)
""")
    results = {r.check: r for r in check_method("localcounts", CheckOptions(
        cache_dir=shared_cache, work_dir=tmp_path, skip=frozenset(CHECKS) - {"two-process"}))}
    assert results["two-process"].status == "fail"
    assert "the state of method 'localcounts' is not the same on the 2 processes at iteration 4" in \
        results["two-process"].why
    assert not (tmp_path / "two-process" / "records").exists()  # the run stopped: no record claims it finished


# ---- a plugin that cannot load costs nothing but itself ----------------------------------------------------------

@pytest.mark.subprocess
def test_a_plugin_that_fails_to_import_is_one_warning_and_every_other_method_runs(shared_cache: Path, tmp_path: Path,
                                                                                  capsys) -> None:
    site = tmp_path / "site"
    write_dist_info(site, "broken-plugin", {"broken": "broken_plugin"})
    (site / "broken_plugin.py").write_text("import a_module_that_is_not_installed  # noqa\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    run = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--quiet",
                          *tiny_overrides(shared_cache, tmp_path / "out", method="fixmatch")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    warnings = [ln for ln in run.stderr.splitlines() if "broken" in ln]
    assert len(warnings) == 1, run.stderr
    assert warnings[0] == ("ferbench: warning: method plugin 'broken' (broken_plugin) from broken-plugin 0.1 was not "
                           "loaded: ModuleNotFoundError: No module named 'a_module_that_is_not_installed'; every other "
                           "method works")
    assert len(list((tmp_path / "out" / "records").glob("*.json"))) == 1
    asked = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--quiet",
                            *tiny_overrides(shared_cache, tmp_path / "out2", method="broken")],
                           capture_output=True, text=True, env=env, timeout=600)
    assert asked.returncode == 2
    assert asked.stderr.strip().splitlines() == [  # one line: no warning besides
        "ferbench: error: method 'broken' is not available: its package broken-plugin 0.1 failed to load "
        "(ModuleNotFoundError: No module named 'a_module_that_is_not_installed')"]
    assert not (tmp_path / "out2").exists()


def test_a_plugin_that_takes_a_registered_name_is_left_out_and_the_holder_kept(install_plugin: PluginInstaller,
                                                                               capsys) -> None:
    from bench import registry

    builtin = registry.get_method_class("fixmatch")
    install_plugin("clashing-plugin", "clashing_plugin", "from bench.method import Method\n"
                   "from bench.registry import register_method\n\n"
                   "@register_method('my_own')\nclass Mine(Method):\n    pass\n\n"
                   "@register_method('fixmatch')\nclass Impostor(Method):\n    pass\n", entry="clash")
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ferbench: warning: method plugin 'clash' (clashing_plugin) from clashing-plugin 0.1 was not "
                   "loaded: method name 'fixmatch' is already registered by built-in; every other method works"]
    assert registry.get_method_class("fixmatch") is builtin and registry.method_origin("fixmatch") == "built-in"
    assert "my_own" not in registry.method_names()  # a half-imported plugin offers nothing


def test_methods_lists_where_each_method_comes_from(install_plugin: PluginInstaller, capsys) -> None:
    install_plugin("mine-plugin", "mine_plugin", "from bench.method import Method\n"
                   "from bench.registry import register_method\n\n"
                   "@register_method('mine')\nclass Mine(Method):\n    pass\n")
    from bench import registry

    assert registry.method_origin("mine") == "mine-plugin 0.1" and registry.method_origin("fixmatch") == "built-in"
    assert main(["methods"]) == 0
    rows = {ln.split("│")[1].strip(): ln for ln in capsys.readouterr().out.splitlines() if ln.count("│") > 2}
    assert "│ built-in" in rows["fixmatch"] and "│ mine-plugin 0.1" in rows["mine"]


def test_check_method_refuses_an_unknown_method_and_check_before_running(capsys, tmp_path: Path) -> None:
    assert main(["check-method", "nope", "--work-dir", str(tmp_path / "w")]) == 2
    assert main(["check-method", "fixmatch", "--skip", "speed", "--work-dir", str(tmp_path / "w")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err[0].startswith("ferbench: error: unknown method 'nope'; registered methods: ")
    assert err[1].startswith("ferbench: error: --skip speed: no such check; the checks are arguments, fingerprint")
    assert not (tmp_path / "w").exists()
