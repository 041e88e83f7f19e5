"""Containers of the built image, run with podman the way deploy/compose.yaml and the Kubernetes
manifests run them: each `podman run` option is translated from a field of those files, so a
change there changes what the image test runs.

The containers share the host's network (podman is set up so on this VM, see
../shared/tools/container-base.sh): PostgreSQL, Redis and the S3 server on 127.0.0.1 are reached
as they are, and each server listens on a port of its own (MODELYARD_PORT, the one value changed
besides the backends' addresses)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PODMAN = shutil.which("podman") or "podman"
COMMAND_TIMEOUT_SECONDS = 180.0
# Processes an `exec` of ours adds inside a container while it measures memory.
_OWN_PROCESSES = {"sh", "cat"}


class PodmanError(AssertionError):
    """A podman command failed; the message carries its stderr."""


def podman(*args: str, timeout: float = COMMAND_TIMEOUT_SECONDS, check: bool = True) -> str:
    """Run `podman ARGS` and return its stdout."""
    done = subprocess.run(  # noqa: S603 - podman with arguments built by the tests
        [PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise PodmanError(
            f"podman {' '.join(args[:3])} ... exited {done.returncode}: {done.stderr}"
        )
    return done.stdout


@dataclass(frozen=True)
class Memory:
    """Memory of every process of a container, summed (MiB)."""

    rss_mib: float
    pss_mib: float
    processes: int


@dataclass
class Spec:
    """What `podman run` gets: options from a deploy file, environment, command."""

    name: str
    options: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    health: list[str] | None = None
    """The argv of the container's health check (compose `healthcheck.test`, a probe's exec)."""


@dataclass
class Container:
    name: str
    spec: Spec

    def exec(self, *argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside the container as its user."""
        done = subprocess.run(  # noqa: S603 - podman with arguments built by the tests
            [PODMAN, "exec", self.name, *argv],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
            check=False,
        )
        if check and done.returncode != 0:
            raise PodmanError(f"{self.name}: {argv} exited {done.returncode}: {done.stderr}")
        return done

    def state(self) -> dict[str, Any]:
        inspected = podman("container", "inspect", "--format", "json", self.name)
        (info,) = json.loads(inspected)
        state: dict[str, Any] = info["State"]
        return state

    def is_running(self) -> bool:
        return bool(self.state()["Running"])

    def logs(self) -> str:
        done = subprocess.run(  # noqa: S603 - podman with arguments built by the tests
            [PODMAN, "logs", self.name], capture_output=True, text=True, check=False, timeout=60
        )
        return done.stdout + done.stderr

    def wait(self, timeout: float) -> int:
        """Wait for the container to exit and return its exit code."""
        try:
            return int(podman("wait", self.name, timeout=timeout).strip().splitlines()[-1])
        except subprocess.TimeoutExpired:
            processes = self.exec("sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '").stdout
            raise PodmanError(
                f"{self.name} still runs {timeout:.0f} s later: {processes}\n{self.logs()[-6000:]}"
            ) from None

    def signal(self, signal: str) -> None:
        podman("kill", "--signal", signal, self.name)

    def healthy(self) -> subprocess.CompletedProcess[str]:
        """Run the container's health check command inside it."""
        assert self.spec.health, f"{self.name} has no health check"
        return self.exec(*self.spec.health)

    def wait_healthy(self, budget_seconds: float) -> None:
        """Run the health check until it passes, as the orchestrator would during start-up."""
        deadline = time.monotonic() + budget_seconds
        while True:
            if not self.is_running():
                raise PodmanError(f"{self.name} exited during start-up:\n{self.logs()[-4000:]}")
            result = self.healthy()
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise PodmanError(
                    f"{self.name} not healthy within its start-up budget ({budget_seconds:.0f} s):"
                    f" {result.stderr}\n{self.logs()[-4000:]}"
                )
            time.sleep(1)

    def memory(self) -> Memory:
        """RSS and PSS summed over the container's processes (its own PID namespace)."""
        script = (
            "for d in /proc/[0-9]*; do "
            'printf "%s %s\\n" "$(cat $d/comm 2>/dev/null)" '
            '"$(grep -h -E "^(Rss|Pss):" $d/smaps_rollup 2>/dev/null | tr -s " " | tr "\\n" " ")"; '
            "done"
        )
        output = self.exec("sh", "-c", script, check=True).stdout
        rss = pss = 0
        processes = 0
        for line in output.splitlines():
            words = line.split()
            if not words or words[0] in _OWN_PROCESSES:
                continue
            values = dict(re.findall(r"(Rss|Pss): (\d+)", line))
            if not values:
                continue
            processes += 1
            rss += int(values.get("Rss", 0))
            pss += int(values.get("Pss", 0))
        return Memory(rss_mib=rss / 1024, pss_mib=pss / 1024, processes=processes)


def run(image: str, spec: Spec, *, detach: bool = True) -> Container:
    """Create and start a container from `spec` (removed by `remove`)."""
    args = ["run", "--name", spec.name]
    if detach:
        args.append("--detach")
    for name, value in spec.environment.items():
        args += ["--env", f"{name}={value}"]
    podman(*args, *spec.options, image, *spec.command)
    return Container(spec.name, spec)


def remove(container: Container) -> None:
    podman("rm", "--force", "--time", "0", container.name, check=False)


def one_off(image: str, spec: Spec, timeout: float) -> tuple[int, str]:
    """Run a container to its end; return its exit code and output (stdout and stderr)."""
    container = run(image, spec)
    try:
        code = container.wait(timeout)
        return code, container.logs()
    finally:
        remove(container)


# --- compose ---------------------------------------------------------------------------------


def _tmpfs(entry: str) -> list[str]:
    # Docker mounts a tmpfs with mode 1777; podman copies the mode and owner of the image's folder
    # underneath (root-owned 0755 for a folder the image does not give the user), so the tmpfs is
    # handed to the container's user (U), as Docker's mode and Kubernetes' fsGroup do.
    path, _, options = entry.partition(":")
    return ["--tmpfs", f"{path}:{','.join([*filter(None, options.split(',')), 'U'])}"]


def compose_options(service: Mapping[str, Any], volume_prefix: str) -> list[str]:
    """`podman run` options for a compose service's fields that shape the container."""
    handled = {
        "image", "build", "restart", "environment", "command", "depends_on", "ports",
        "healthcheck", "read_only", "tmpfs", "security_opt", "volumes", "stop_grace_period",
    }  # fmt: skip
    unknown = set(service) - handled
    assert not unknown, f"compose fields the image test does not translate: {sorted(unknown)}"
    options: list[str] = []
    if service.get("read_only"):
        options.append("--read-only")
    for entry in service.get("tmpfs", []):
        options += _tmpfs(entry)
    for entry in service.get("security_opt", []):
        options += ["--security-opt", entry]
    for entry in service.get("volumes", []):
        source, target = entry.split(":", 1)
        options += ["--volume", f"{volume_prefix}{source}:{target}"]
    grace = service.get("stop_grace_period")
    if grace:
        options += ["--stop-timeout", str(_seconds(grace))]
    return options


def compose_health(service: Mapping[str, Any]) -> list[str] | None:
    test = service.get("healthcheck", {}).get("test")
    if not test:
        return None
    kind, *argv = test
    assert kind == "CMD", f"a health check of the form {kind} is not translated"
    return list(argv)


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return int(match[1])


# --- Kubernetes ------------------------------------------------------------------------------


def _quantity_bytes(value: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return int(float(value.removesuffix(suffix)) * factor)
    return int(value)


def kubernetes_options(pod: Mapping[str, Any], container: Mapping[str, Any]) -> list[str]:
    """`podman run` options for a pod's and its container's security, volumes and limits."""
    options: list[str] = []
    context = pod["securityContext"]
    options += ["--user", f"{context['runAsUser']}:{context['runAsGroup']}"]
    if "fsGroup" in context:
        options += ["--group-add", str(context["fsGroup"])]
    security = container["securityContext"]
    if security.get("readOnlyRootFilesystem"):
        options.append("--read-only")
    if security.get("allowPrivilegeEscalation") is False:
        options += ["--security-opt", "no-new-privileges"]
    for capability in security.get("capabilities", {}).get("drop", []):
        options += ["--cap-drop", capability]
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        assert "emptyDir" in volume, f"volume {mount['name']}: only emptyDir is translated"
        size = volume["emptyDir"].get("sizeLimit")
        options += _tmpfs(
            f"{mount['mountPath']}:rw{f',size={_quantity_bytes(size)}' if size else ''}"
        )
    limit = container.get("resources", {}).get("limits", {}).get("memory")
    if limit:
        options += ["--memory", str(_quantity_bytes(limit))]
    grace = pod.get("terminationGracePeriodSeconds")
    if grace:
        options += ["--stop-timeout", str(grace)]
    return options


def kubernetes_environment(
    container: Mapping[str, Any], sources: Mapping[str, Mapping[str, str]]
) -> dict[str, str]:
    """A container's environment: its envFrom sources in order, then its own env."""
    environment: dict[str, str] = {}
    for reference in container.get("envFrom", []):
        kind = "configMapRef" if "configMapRef" in reference else "secretRef"
        environment.update(sources[reference[kind]["name"]])
    environment.update({e["name"]: str(e["value"]) for e in container.get("env", [])})
    return environment


def probe_budget(probe: Mapping[str, Any]) -> float:
    """The time a startup probe gives a container: period x failure threshold."""
    return float(probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3))


def exec_argv(probe: Mapping[str, Any]) -> list[str] | None:
    command: Sequence[str] | None = probe.get("exec", {}).get("command")
    return list(command) if command else None
