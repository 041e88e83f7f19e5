"""The deploy files, read the way their tools read them: YAML documents, a compose file
interpolated from its `.env`, Dockerfile stages, and the `MODELYARD_*` names they set."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dockerfile
import yaml
from pydantic import BaseModel

from modelyard.config import Settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
KUBERNETES = DEPLOY / "kubernetes"
DASHBOARD = DEPLOY / "grafana" / "modelyard.json"
DOCKERIGNORE = REPO / ".dockerignore"

PREFIX = "MODELYARD_"
NESTED_DELIMITER = "__"


# --- the health script ---------------------------------------------------------------------------


def run_worker_healthcheck(heartbeat: Path) -> subprocess.CompletedProcess[str]:
    """`modelyard-healthcheck worker` against this heartbeat file."""
    env = {**os.environ, "MODELYARD_WORKER_HEARTBEAT_FILE": str(heartbeat)}
    return subprocess.run(  # noqa: S603 - our own interpreter and the repository's script
        [sys.executable, str(DEPLOY / "healthcheck.py"), "worker"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


# --- settings ----------------------------------------------------------------------------------


def is_setting(variable: str) -> bool:
    """Tell whether `variable` names a field of `Settings` (prefix and `__` nesting applied)."""
    if not variable.startswith(PREFIX):
        return False
    path = variable.removeprefix(PREFIX).lower().split(NESTED_DELIMITER)
    model: type[BaseModel] = Settings
    for depth, name in enumerate(path):
        info = model.model_fields.get(name)
        if info is None:
            return False
        if depth < len(path) - 1:
            nested = info.annotation
            if not (isinstance(nested, type) and issubclass(nested, BaseModel)):
                return False
            model = nested
    return True


# --- YAML ------------------------------------------------------------------------------------


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    """Return the non-empty documents of a YAML file."""
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


# --- compose ---------------------------------------------------------------------------------


class MissingVariable(Exception):
    """A `${NAME:?message}` whose variable is unset or empty: compose refuses the file."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


# $$ (a literal $), ${NAME}, ${NAME<op>arg} with op one of :- - :? ? :+ +, and $NAME.
_REFERENCE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}$]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


@dataclass
class Interpolation:
    """Compose's variable substitution over a mapping of variables (the project's `.env`)."""

    variables: Mapping[str, str]
    read: set[str] = field(default_factory=set)
    """Every variable a reference names."""
    read_without_default: set[str] = field(default_factory=set)
    """Variables read with no default (`${X}`, `$X`): compose would warn and use ""."""

    def string(self, text: str) -> str:
        return _REFERENCE.sub(self._substitute, text)

    def value(self, value: Any) -> Any:
        """Interpolate every string inside `value` (mappings' values and lists' items)."""
        if isinstance(value, str):
            return self.string(value)
        if isinstance(value, dict):
            return {key: self.value(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.value(item) for item in value]
        return value

    def _substitute(self, match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        op, arg = match["op"], match["arg"] or ""
        self.read.add(name)
        value = self.variables.get(name)
        unset, empty = value is None, not value
        match op:
            case ":-":
                return arg if empty else str(value)
            case "-":
                return arg if unset else str(value)
            case ":?" | "?":
                missing = empty if op == ":?" else unset
                if missing:
                    raise MissingVariable(name, arg)
                return str(value)
            case ":+":
                return "" if empty else arg
            case "+":
                return "" if unset else arg
            case _:
                self.read_without_default.add(name)
                return value or ""


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse a `.env` file of plain `NAME=value` lines (comments and blank lines allowed)."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"{path.name}:{number}: not NAME=value: {line!r}")
        if value[:1] in {'"', "'"} or " #" in value:
            raise ValueError(f"{path.name}:{number}: keep values plain (no quotes or comments)")
        values[name] = value
    return values


def service_environment(service: Mapping[str, Any]) -> dict[str, str]:
    """Return a compose service's `environment` (mapping or `NAME=value` list) as a dict."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
    return {name: "" if value is None else str(value) for name, value in environment.items()}


# --- Kubernetes ------------------------------------------------------------------------------


def manifest_files() -> list[Path]:
    """Every Kubernetes manifest (kustomization.yaml is kustomize's, not the API's)."""
    return sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in manifest_files() for doc in yaml_documents(path)]


def find(kind: str, name: str) -> dict[str, Any]:
    """Return the one manifest of `kind` named `name`."""
    found = [d for _, d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (kind/name, pod spec) of every workload."""
    for _, doc in manifests():
        if doc["kind"] in {"Deployment", "Job", "StatefulSet", "DaemonSet"}:
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


# --- Dockerfile ------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str | None
    base: str
    commands: list[dockerfile.Command]

    def all(self, instruction: str) -> list[dockerfile.Command]:
        return [c for c in self.commands if c.cmd == instruction]

    def env(self) -> dict[str, str]:
        """The variables this stage's ENV instructions set."""
        values: dict[str, str] = {}
        for command in self.all("ENV"):
            pairs = command.value
            for name, value in zip(pairs[::2], pairs[1::2], strict=True):
                values[name] = _unquote(value)
        return values


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def dockerfile_stages(path: Path = DOCKERFILE) -> list[Stage]:
    """Parse the Dockerfile with BuildKit's own parser into stages, base images resolved
    against the global ARG defaults."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for command in dockerfile.parse_file(str(path)):
        if command.cmd == "FROM":
            words = command.value
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m[1] or m[2]], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(name=name, base=base, commands=[]))
        elif not stages:
            if command.cmd == "ARG":
                name, _, default = command.value[0].partition("=")
                args[name] = _unquote(default)
        else:
            stages[-1].commands.append(command)
    return stages
