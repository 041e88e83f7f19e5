"""The lock files (requirements/*.txt, written by `make lock`) read back, and the check that each
one is exactly what its inputs (requirements/*.in: the two pyproject.toml files and their extras)
need on this interpreter: nothing missing, nothing extra, every version inside every range.

Offline and fast: the dependencies of a locked package come from its installed metadata (the
virtual environment `make install` filled from requirements/dev.txt), those of modelyard and
modelyard-client from their pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO / "requirements"
# The projects of this repository, built from their folders (never taken from an index).
LOCAL_PROJECTS = {
    canonicalize_name("modelyard"): REPO,
    canonicalize_name("modelyard-client"): REPO / "client",
}
_LOCAL_INPUT = re.compile(r"(?P<path>\.[^\[\s]*)(?:\[(?P<extras>[^\]]*)\])?")


@dataclass(frozen=True)
class Pin:
    """One line of a lock file: `name==version ; marker` and its hashes."""

    name: NormalizedName
    version: str
    marker: Marker | None
    hashes: tuple[str, ...]
    line: str

    def applies(self) -> bool:
        """Tell whether this interpreter and platform install this line."""
        return self.marker is None or self.marker.evaluate()


def read_lock(path: Path) -> list[Pin]:
    """Return every requirement line of a hashed lock file (comments dropped)."""
    pins: list[Pin] = []
    for logical in path.read_text().replace("\\\n", " ").splitlines():
        text = logical.strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("-"):
            raise ValueError(f"{path.name}: an option line in a lock: {text!r}")
        requirement_text, *hashes = (part.strip() for part in text.split("--hash="))
        requirement = Requirement(requirement_text)
        (spec,) = requirement.specifier or [None]
        if spec is None or spec.operator != "==" or "*" in spec.version:
            raise ValueError(f"{path.name}: not pinned with ==: {requirement_text!r}")
        pins.append(
            Pin(
                name=canonicalize_name(requirement.name),
                version=spec.version,
                marker=requirement.marker,
                hashes=tuple(hashes),
                line=requirement_text,
            )
        )
    return pins


def applicable(pins: Iterable[Pin]) -> dict[NormalizedName, Pin]:
    """The lines this interpreter installs, by package name (at most one each)."""
    found: dict[NormalizedName, Pin] = {}
    for pin in pins:
        if pin.applies():
            if pin.name in found:
                raise ValueError(f"{pin.name} is pinned twice for this interpreter")
            found[pin.name] = pin
    return found


# --- what the inputs need --------------------------------------------------------------------


def _pyproject(project: Path) -> dict[str, object]:
    with (project / "pyproject.toml").open("rb") as f:
        document: dict[str, object] = tomllib.load(f)
    return document


def local_requirements(name: NormalizedName, extras: Iterable[str]) -> list[Requirement]:
    """The requirements of a project of this repository with some of its extras."""
    project = _pyproject(LOCAL_PROJECTS[name])["project"]
    assert isinstance(project, dict)
    lines = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise ValueError(f"{name} has no extra {extra!r}")
        lines += optional[extra]
    return [Requirement(line) for line in lines]


def local_version(name: NormalizedName) -> str:
    """The version a project of this repository declares (hatch reads `__version__`)."""
    project = LOCAL_PROJECTS[name]
    hatch = _pyproject(project)["tool"]
    assert isinstance(hatch, dict)
    source = project / hatch["hatch"]["version"]["path"]
    found = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", source.read_text())
    assert found, source
    return found[1]


def build_requirements(project: Path) -> list[Requirement]:
    """A project's [build-system] requires."""
    build = _pyproject(project)["build-system"]
    assert isinstance(build, dict)
    return [Requirement(line) for line in build["requires"]]


def read_inputs(path: Path) -> list[Requirement]:
    """The roots a `.in` file names: local projects (`./client[ml]`, `.[dev]`) or packages."""
    roots: list[Requirement] = []
    for line in path.read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        local = _LOCAL_INPUT.fullmatch(text)
        if local:
            folder = (REPO / local["path"]).resolve()
            (name,) = [n for n, p in LOCAL_PROJECTS.items() if p.resolve() == folder]
            extras = local["extras"]
            roots.append(Requirement(f"{name}[{extras}]" if extras else name))
        else:
            roots.append(Requirement(text))
    return roots


Requires = Mapping[NormalizedName, list[Requirement]]


def installed_requires(name: NormalizedName, version: str) -> list[Requirement] | str:
    """The requirements in the installed metadata of `name`, or why they cannot be read."""
    try:
        distribution = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return f"{name} is not installed (run `make install`)"
    if Version(distribution.version) != Version(version):
        return f"{name} {distribution.version} is installed, the lock says {version} (run `make install`)"
    return [Requirement(line) for line in distribution.requires or []]


@dataclass
class Check:
    """The walk from a lock's roots through the dependencies of what it pins."""

    lock: Mapping[NormalizedName, Pin]
    problems: list[str] = field(default_factory=list)
    reached: set[NormalizedName] = field(default_factory=set)

    def walk(self, roots: Iterable[Requirement]) -> list[str]:
        """Return every disagreement between the lock and what `roots` need."""
        seen: set[tuple[NormalizedName, frozenset[str]]] = set()
        queue: list[tuple[Requirement, str, frozenset[str]]] = [
            (root, "the inputs", frozenset()) for root in roots
        ]
        while queue:
            requirement, parent, parent_extras = queue.pop()
            if requirement.marker is not None and not any(
                requirement.marker.evaluate({"extra": extra}) for extra in {"", *parent_extras}
            ):
                continue
            name = canonicalize_name(requirement.name)
            extras = frozenset(canonicalize_name(e) for e in requirement.extras)
            needs = self._needs(name, requirement, parent, extras)
            if needs is None or (name, extras) in seen:
                continue
            seen.add((name, extras))
            queue += [(dependency, str(name), extras) for dependency in needs]
        unused = sorted(set(self.lock) - self.reached)
        self.problems += [f"{name} is locked but nothing requires it" for name in unused]
        return self.problems

    def _needs(
        self, name: NormalizedName, requirement: Requirement, parent: str, extras: frozenset[str]
    ) -> list[Requirement] | None:
        if name in LOCAL_PROJECTS:
            version = local_version(name)
            if not requirement.specifier.contains(version, prereleases=True):
                self.problems.append(f"{parent} needs {requirement}; ./ has {name} {version}")
            return local_requirements(name, extras)
        pin = self.lock.get(name)
        if pin is None:
            self.problems.append(f"{parent} needs {requirement}, which the lock lacks")
            return None
        self.reached.add(name)
        if not requirement.specifier.contains(pin.version, prereleases=True):
            self.problems.append(f"{parent} needs {requirement}; the lock has {pin.line}")
        requires = installed_requires(name, pin.version)
        if isinstance(requires, str):
            self.problems.append(requires)
            return None
        return requires
