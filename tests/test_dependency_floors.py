"""The lowest versions setup.cfg allows are the ones tested (issue 26): every runtime requirement has a floor, and
the environment the suite runs in meets each floor (so a floor is never above what was tested)."""

from __future__ import annotations

import configparser
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def test_every_runtime_requirement_has_a_floor_the_tested_environment_meets() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = [ln.strip() for ln in cfg["options"]["install_requires"].splitlines()]
    requirements = [Requirement(ln) for ln in lines if ln and not ln.startswith("#")]
    assert requirements
    for req in requirements:
        floors = [Version(s.version) for s in req.specifier if s.operator == ">="]
        assert floors, f"{req.name}: no floor in setup.cfg"
        installed = Version(version(req.name).split("+")[0])
        assert installed >= max(floors), f"{req.name} {installed} is below its floor {max(floors)}"
