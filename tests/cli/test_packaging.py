"""The library declares ranges (so `pip install tmebox` does not fight an existing environment)
and CI installs the exact versions of requirements.lock, which lie inside those ranges."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_library_dependencies_are_ranges_the_lock_satisfies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["bench"]
    pins = _lock()
    for text in deps:
        req = Requirement(text)
        ops = {spec.operator for spec in req.specifier}
        assert ">=" in ops and "<" in ops, f"{text}: needs a lower and a tested upper bound"
        name = req.name.lower()
        assert name in pins, f"{name} is not in requirements.lock"
        assert req.specifier.contains(pins[name]), f"lock {name}=={pins[name]} outside {text}"
