"""requirements.lock (what `make` installs) agrees with pyproject.toml (what library users get)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def locked_versions() -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", (ROOT / "requirements.lock").read_text(), re.M)
    return {canonicalize_name(name): version for name, version in pins}


def declared_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        declared += extra
    return [Requirement(r) for r in declared]


def test_every_declared_dependency_is_locked_within_its_range():
    locked = locked_versions()
    problems = []
    for req in declared_requirements():
        name = canonicalize_name(req.name)
        if name not in locked:
            problems.append(f"{req.name}: in pyproject.toml, missing from requirements.lock")
        elif not req.specifier.contains(locked[name], prereleases=True):
            problems.append(f"{req.name}: locked {locked[name]} outside pyproject's '{req.specifier}'")
    assert not problems, "run `make lock`: " + "; ".join(problems)


def test_every_locked_package_carries_hashes():
    text = (ROOT / "requirements.lock").read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9_.\-]+==)", text.strip())
    unhashed = [b.split()[0] for b in blocks if "==" in b.split()[0] and "--hash=sha256:" not in b]
    assert not unhashed, f"locked without hashes: {unhashed}"
