"""What the image tests share: where the containers find the backends, memory measurements
printed at the end of the run, stopping containers."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from tests.deploy.image.podman import Container, Memory, PodmanError, remove


@dataclass(frozen=True)
class Backends:
    """Where the containers find PostgreSQL, Redis and S3, and the run's made-up secrets."""

    database_url: str
    redis_url: str
    s3_endpoint: str
    run_id: str
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    metrics_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def addresses(self, port: int | None = None) -> dict[str, str]:
        """The variables the image test sets over the deploy files' values: the backends'
        addresses (compose's service names and the manifests' example hosts do not resolve
        here) and, on the shared host network, the server's port."""
        values = {
            "MODELYARD_DATABASE_URL": self.database_url,
            "MODELYARD_REDIS_URL": self.redis_url,
            "MODELYARD_S3_ENDPOINT_URL": self.s3_endpoint,
        }
        if port is not None:
            values["MODELYARD_PORT"] = str(port)
        return values


@dataclass
class Measurements:
    """Memory of each role under a small load, printed at the end of the run."""

    rows: list[tuple[str, Memory, str]] = field(default_factory=list)


MEASUREMENTS = Measurements()


def record_memory(role: str, memory: Memory, note: str) -> None:
    MEASUREMENTS.rows.append((role, memory, note))


def stop_all(containers: list[Container]) -> None:
    """Remove containers; print the logs of any that exited with an error."""
    for container in containers:
        try:
            state = container.state()
        except PodmanError:
            continue
        if not state["Running"] and state.get("ExitCode"):
            print(f"--- {container.name} exited {state['ExitCode']}:\n{container.logs()[-4000:]}")  # noqa: T201 - shown with the failing test
        remove(container)
