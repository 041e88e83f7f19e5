"""API key scopes: what each one allows, and the one rule that says which scope a route needs.

Every authenticated route goes through `auth.deps.current_caller`, which asks `route_needs` for
the route's scope and has `Caller.require` decide; the prediction fast path hands whatever the
caller may not do to those routes. Password logins (and the dashboard) carry no scopes: the
user's full rights.

Files reached through another route (a batch job's input and output, a drift reference's file,
an upload's `reference_path`) need what the files routes need, `Caller.require(scope,
model=None)`, checked before the file is looked at: a key limited to models, refused every files
route, is refused them there too, and learns nothing of which files exist.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from modelyard.errors import Forbidden


class Scope(StrEnum):
    READ = "read"  # GET and HEAD: models, versions, downloads, files, experiments, history
    # The predict routes, V2 model metadata and readiness, batch jobs (starting one also needs
    # READ and WRITE: it reads and writes files; see `jobs.service.create_job`).
    PREDICT = "predict"
    WRITE = "write"  # every other method: uploads, lifecycle, aliases, files, experiments
    ADMIN = "admin"  # /api/v1/users and /metrics; only an admin may mint it


# In this order everywhere they are listed.
ALL_SCOPES = (Scope.READ, Scope.PREDICT, Scope.WRITE, Scope.ADMIN)
# A new key without `scopes`: it can read and predict, not change the registry.
DEFAULT_SCOPES = (Scope.READ, Scope.PREDICT)

ADMIN_PATHS = ("/api/v1/users", "/metrics")
# Routes whose model is named in the body (a form field, a JSON field) or by the object they
# act on (a batch job's), checked by the route once it knows it.
MODEL_IN_BODY = frozenset(
    {
        ("POST", "/api/v1/models/upload"),
        ("POST", "/api/v1/batch-jobs"),
        ("GET", "/api/v1/batch-jobs"),
        ("GET", "/api/v1/batch-jobs/{job_id}"),
        ("POST", "/api/v1/batch-jobs/{job_id}/cancel"),
    }
)
# The path parameters that name a model.
MODEL_PARAMS = ("model", "name")
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class MissingScope(Forbidden):
    type = "missing-scope"

    def __init__(self, scope: Scope) -> None:
        super().__init__(f"this API key lacks the `{scope}` scope")
        self.scope = scope


class OutsideModelLimit(Forbidden):
    type = "outside-model-limit"

    def __init__(self, models: Iterable[str]) -> None:
        names = ", ".join(repr(m) for m in sorted(models))
        super().__init__(f"this API key is limited to the models {names}")


@dataclass(frozen=True, slots=True)
class RouteNeeds:
    """What a route needs of an API key: a scope, and where the route names its model."""

    scope: Scope
    model_param: str | None  # the path parameter naming the model, if any
    model_in_body: bool = False


def route_needs(methods: Iterable[str], path: str) -> RouteNeeds:
    """Return the scope a route (its methods and path template) needs, and where its model is."""
    return _route_needs(frozenset(m.upper() for m in methods), path)


@functools.cache  # a few dozen routes, asked on every request of an API key
def _route_needs(method_set: frozenset[str], path: str) -> RouteNeeds:
    model_param = next((p for p in MODEL_PARAMS if f"{{{p}}}" in path), None)
    if any(path == p or path.startswith(p + "/") for p in ADMIN_PATHS):
        scope = Scope.ADMIN
    elif _is_predict(method_set, path):
        scope = Scope.PREDICT
    elif method_set <= READ_METHODS:
        scope = Scope.READ
    else:
        scope = Scope.WRITE
    in_body = any((m, path) in MODEL_IN_BODY for m in method_set)
    return RouteNeeds(scope, model_param, in_body)


def _is_predict(methods: frozenset[str], path: str) -> bool:
    if methods == {"POST"}:
        return (
            path.startswith("/api/v1/predict/")
            or (path.startswith("/v2/models/") and path.endswith("/infer"))
            # Starting or cancelling a batch job scores a file: what the predict scope allows.
            or path == "/api/v1/batch-jobs"
            or (path.startswith("/api/v1/batch-jobs/") and path.endswith("/cancel"))
        )
    # A stock V2 client reads a model's metadata and readiness before it infers.
    return methods <= READ_METHODS and path.startswith("/v2/models/")


def ordered(scopes: Iterable[str]) -> list[str]:
    """Return `scopes` without repeats, in the order of `ALL_SCOPES`."""
    given = set(scopes)
    return [str(s) for s in ALL_SCOPES if s in given]
