"""Shared fixtures: an isolated cache and a tiny synthfer config for end-to-end tests."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from bench.startup import configure

# the suite's threads and OpenMP wait policy, as FERBench's own processes set them: before torch is imported here,
# and inherited by every subprocess a test starts (a test's own OMP_* values win there)
configure()

import pytest  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from bench.contract.runs import tiny_settings  # noqa: E402
from bench.method import ModelOutput  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TINY_SYNTHFER = {"n_train": 280, "n_test": 140, "seed": 0, "size": 32}


#: Set by CI (.ci/run), which installs every component the tests use: a missing one then fails its tests
#: instead of skipping them, so CI cannot go green without running them. Elsewhere they skip, saying why.
REQUIRE_COMPONENTS = os.environ.get("FERBENCH_REQUIRE_COMPONENTS") == "1"


def require(module: str, reason: str):
    """The imported `module`, or a skip saying `reason` (a failure where CI requires every component)."""
    if REQUIRE_COMPONENTS:
        import importlib

        try:
            return importlib.import_module(module)
        except ImportError as e:
            pytest.fail(f"{reason}; CI requires it (FERBENCH_REQUIRE_COMPONENTS=1): {e}")
    return pytest.importorskip(module, reason=reason)


def skip_or_fail(reason: str) -> None:
    """Skip for `reason`, or fail where CI requires every component."""
    if REQUIRE_COMPONENTS:
        pytest.fail(f"{reason}; CI requires it (FERBENCH_REQUIRE_COMPONENTS=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the session, so the tiny synthfer is generated and prepared once."""
    return tmp_path_factory.mktemp("ferbench_cache")


def tiny_overrides(cache: Path, out: Path, **extra: object) -> list[str]:
    """Dotted overrides for a seconds-long run on the tiny synthfer (the contract checker's runs, bench/contract)."""
    return tiny_settings(cache, out, **extra)


class InputLogits(nn.Module):
    """A model in the methods' contract whose logits (and features) are its input: losses by hand."""

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | ModelOutput:
        return ModelOutput(x, x, x.new_zeros(())) if return_features else x


class IdentityBackbone(nn.Module):
    """A backbone whose features are its input, so heads can be checked on hand-written features (timm's model
    shape: `forward_features`, then `forward_head` pooling them, both the identity here)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward_features(self, x: Tensor) -> Tensor:
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def write_dist_info(site: Path, dist: str, entries: dict[str, str]) -> None:
    """A distribution's metadata as pip installs it into `site`, with `ferbench.methods` entry points (name ->
    module)."""
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[ferbench.methods]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()))


class PluginInstaller(Protocol):
    def __call__(self, dist: str, module: str, source: str, *, entry: str | None = None) -> None: ...


@pytest.fixture
def install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PluginInstaller]:
    """Install a third-party method package as pip would lay it out (a module and a dist-info with a
    `ferbench.methods` entry point, `entry` = `module` unless given) on this process's import path, and discover it;
    the registry, the import path and the modules are as before when the test ends."""
    from bench import registry

    site = tmp_path / "plugin-site"
    registered, failed, modules = set(registry._REGISTRY), dict(registry._FAILED), set(sys.modules)

    def install(dist: str, module: str, source: str, *, entry: str | None = None) -> None:
        site.mkdir(exist_ok=True)
        (site / f"{module}.py").write_text(source)
        write_dist_info(site, dist, {entry or module: module})
        if str(site) not in sys.path:
            monkeypatch.syspath_prepend(str(site))
        importlib.invalidate_caches()
        monkeypatch.setattr(registry, "_DISCOVERED", False)
        registry.method_names()  # discovers it, and says which plugins were left out

    yield install
    for name in set(registry._REGISTRY) - registered:
        registry._REGISTRY.pop(name)
        registry._ORIGINS.pop(name, None)
    registry._FAILED.clear()
    registry._FAILED.update(failed)
    registry._WARNINGS.clear()
    for name, module in list(sys.modules.items()):  # the plugin's own modules only
        if name not in modules and str(getattr(module, "__file__", None) or "").startswith(str(site)):
            sys.modules.pop(name)
