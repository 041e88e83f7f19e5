"""What a predict request names, resolved to a version: `{model}` plus a version, alias or stage
(or none: the production version, else the newest not archived, and the model's traffic
policy), detached from the database session as a `Target`.

`resolve_cached` is the hot path's: remembered until the registry changes (epochs) and answered
from the last success while the database is down; the fast path reads the same cache by
`target_key`.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import uuid
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.changes.epochs import Epoch
from modelyard.changes.hotcache import EpochCache
from modelyard.changes.outage import OutageCache
from modelyard.db.tables import ModelAlias, ModelVersion, RegisteredModel, TrafficPolicy, User
from modelyard.errors import Conflict, NotFound, Unprocessable
from modelyard.registry import service as registry_service
from modelyard.registry.schemas import ModelStatus, Stage
from modelyard.serving.formats import FRAMEWORK_OF, Framework, ModelFormat


class NotServable(Conflict):
    """The model or version exists but is archived: it is never served."""


class NoServableVersion(NotFound):
    def __init__(self, model: str) -> None:
        super().__init__(f"model {model!r} has no version that can be served")


@dataclass(frozen=True, slots=True)
class Target:
    """A resolved model version: what serving needs, detached from any database session."""

    model_id: uuid.UUID
    model_name: str
    owner_id: uuid.UUID
    version_id: uuid.UUID
    version: int
    stage: str
    framework: Framework
    format: ModelFormat
    task_type: str | None
    storage_key: str
    sha256: str
    feature_names: list[str] | None
    # The model's traffic policy, resolved; only on the target of requests naming no version.
    traffic: Traffic | None = None

    @classmethod
    def of(cls, model: RegisteredModel, version: ModelVersion) -> Target:
        features = (version.input_schema or {}).get("features")
        # Plain UUIDs: asyncpg hands out a subclass that orjson will not serialise.
        return cls(
            model_id=uuid.UUID(int=model.id.int),
            model_name=model.name,
            owner_id=uuid.UUID(int=model.owner_id.int),
            version_id=uuid.UUID(int=version.id.int),
            version=version.version,
            stage=version.stage,
            framework=FRAMEWORK_OF[ModelFormat(version.format)],
            format=ModelFormat(version.format),
            task_type=version.task_type,
            storage_key=version.storage_key,
            sha256=version.sha256,
            feature_names=[f["name"] for f in features] if features else None,
        )


@dataclass(frozen=True, slots=True)
class Traffic:
    """A model's traffic policy as served: the routes' versions and the shadow, resolved.

    Route `i` takes the draws in [bounds[i-1], bounds[i]) of [0, total): cumulative weights.
    """

    routes: tuple[Target, ...]
    bounds: tuple[int, ...]
    shadow: Target | None
    sample_rate: float

    @property
    def total(self) -> int:
        return self.bounds[-1]


@dataclass(frozen=True, slots=True)
class VersionRef:
    """A version named by reference: a number, an alias, a stage, or (all None) the newest."""

    version: int | None = None
    alias: str | None = None
    stage: Stage | None = None


LATEST = "latest"
_VERSION_REF = re.compile(r"v([1-9][0-9]{0,9})")


def parse_ref(ref: str) -> VersionRef:
    """Read a reference as traffic policies write them: `v<N>`, `latest`, a stage, an alias.

    A stage name wins over an alias of the same name (aliases cannot be `latest` or `v<N>`).
    """
    if match := _VERSION_REF.fullmatch(ref):
        return VersionRef(version=int(match[1]))
    if ref == LATEST:
        return VersionRef()
    if ref in Stage.__members__.values():
        return VersionRef(stage=Stage(ref))
    return VersionRef(alias=ref)


async def resolve_target(
    db: AsyncSession,
    user: User,
    ref: str,
    *,
    version: int | None = None,
    alias: str | None = None,
    stage: Stage | None = None,
) -> Target:
    """Resolve `{model}` plus at most one of version, alias or stage to a servable version.

    Without a selector: the production version, else the newest version not archived.

    Raises:
        ModelNotFound, VersionNotFound, AliasNotFound, NoServableVersion: nothing matches.
        NotServable: the model or the chosen version is archived.
        Unprocessable: more than one selector, or `stage=archived`.
    """
    if sum(s is not None for s in (version, alias, stage)) > 1:
        raise Unprocessable("give at most one of version, alias and stage")
    if stage == Stage.ARCHIVED:
        raise Unprocessable("archived versions are never served")
    model = await registry_service.get_model(db, user, ref)
    return await resolve_on(db, model, version=version, alias=alias, stage=stage)


async def resolve_on(
    db: AsyncSession,
    model: RegisteredModel,
    *,
    version: int | None = None,
    alias: str | None = None,
    stage: Stage | None = None,
    latest: bool = False,
) -> Target:
    """Resolve one selector (or none) on a loaded model; `latest` skips the production-first
    default (the newest version not archived).

    Raises:
        As `resolve_target`.
    """
    if model.status == ModelStatus.ARCHIVED:
        raise NotServable(f"model {model.name!r} is archived")
    row: ModelVersion | None
    if version is not None:
        row = await registry_service.get_version(db, model, version)
    elif alias is not None:
        row = await db.scalar(
            select(ModelVersion)
            .join(ModelAlias, ModelAlias.version_id == ModelVersion.id)
            .where(ModelAlias.model_id == model.id, ModelAlias.alias == alias)
        )
        if row is None:
            raise registry_service.AliasNotFound(model.name, alias)
    else:
        query = select(ModelVersion).where(ModelVersion.model_id == model.id)
        if stage is not None:
            query = query.where(ModelVersion.stage == stage)
        elif latest:
            query = query.where(ModelVersion.stage != Stage.ARCHIVED)
        else:
            # Production first, then the newest of the rest; archived never.
            query = query.where(ModelVersion.stage != Stage.ARCHIVED).order_by(
                (ModelVersion.stage == Stage.PRODUCTION).desc()
            )
        row = await db.scalar(query.order_by(ModelVersion.version.desc()).limit(1))
        if row is None:
            raise NoServableVersion(model.name)
    if row.stage == Stage.ARCHIVED:
        raise NotServable(f"version {row.version} of model {model.name!r} is archived")
    return Target.of(model, row)


async def resolve_ref(db: AsyncSession, model: RegisteredModel, ref: str) -> Target | None:
    """Resolve a policy's reference (`parse_ref`) on `model`; None if nothing servable matches."""
    parsed = parse_ref(ref)
    if parsed.stage == Stage.ARCHIVED:
        return None
    try:
        return await resolve_on(
            db,
            model,
            version=parsed.version,
            alias=parsed.alias,
            stage=parsed.stage,
            latest=ref == LATEST,
        )
    except (NotFound, NotServable):
        return None


async def resolve_traffic(db: AsyncSession, model: RegisteredModel) -> Traffic | None:
    """Return the model's traffic policy with its references resolved, or None without one.

    A route whose target resolves to nothing servable now (an alias removed, an archived
    version, a stage without a version) is left out; with no route left, there is no policy.
    A shadow that resolves to nothing, or to the version a route chose, is not run.
    """
    policy = await db.get(TrafficPolicy, model.id)
    if policy is None:
        return None
    routes: list[Target] = []
    weights: list[int] = []
    for route in policy.routes:
        weight = int(route["weight"])
        target = await resolve_ref(db, model, route["target"]) if weight > 0 else None
        if target is not None:
            routes.append(target)
            weights.append(weight)
    if not routes:
        return None
    shadow = None
    sample_rate = 0.0
    if policy.shadow is not None:
        shadow = await resolve_ref(db, model, policy.shadow["target"])
        sample_rate = float(policy.shadow["sample_rate"])
    return Traffic(
        routes=tuple(routes),
        bounds=tuple(itertools.accumulate(weights)),
        shadow=shadow,
        sample_rate=sample_rate,
    )


async def resolve_serving(
    db: AsyncSession,
    user: User,
    ref: str,
    *,
    version: int | None = None,
    alias: str | None = None,
    stage: Stage | None = None,
) -> Target:
    """`resolve_target` for a predict request: one naming no version carries the model's
    traffic policy too (`Target.traffic`), so that a cached resolution holds both."""
    if version is not None or alias is not None or stage is not None:
        return await resolve_target(db, user, ref, version=version, alias=alias, stage=stage)
    model = await registry_service.get_model(db, user, ref)
    target = await resolve_on(db, model)
    traffic = await resolve_traffic(db, model)
    return target if traffic is None else dataclasses.replace(target, traffic=traffic)


def target_key(
    user_id: uuid.UUID,
    ref: str,
    *,
    version: int | None = None,
    alias: str | None = None,
    stage: Stage | None = None,
) -> Hashable:
    """The key under which `resolve_cached` remembers a resolution."""
    return ("target", user_id, ref, version, alias, stage)


async def resolve_cached(
    db: AsyncSession,
    user: User,
    ref: str,
    *,
    targets: EpochCache[Hashable, Target],
    outage: OutageCache[Hashable, Any],
    version: int | None = None,
    alias: str | None = None,
    stage: Stage | None = None,
) -> Target:
    """`resolve_serving` for the hot path: remembered until the registry changes (epochs; a
    traffic policy change announces one too) or for a few seconds, and answered from the last
    success while the database is down."""
    key = target_key(user.id, ref, version=version, alias=alias, stage=stage)
    return await targets.fill(
        key,
        lambda: resolve_fresh(db, user, ref, outage, version=version, alias=alias, stage=stage),
    )


async def resolve_fresh(
    db: AsyncSession,
    user: User,
    ref: str,
    outage: OutageCache[Hashable, Any],
    *,
    version: int | None = None,
    alias: str | None = None,
    stage: Stage | None = None,
) -> tuple[Target, float | None]:
    """`resolve_serving`, or while the database is down the last success; for `EpochCache.fill`."""
    key = target_key(user.id, ref, version=version, alias=alias, stage=stage)
    target, recalled = await outage.call(
        key,
        lambda: resolve_serving(db, user, ref, version=version, alias=alias, stage=stage),
        epoch=Epoch.REGISTRY,
    )
    # A recalled answer serves this request only: cached, it would outlive the outage.
    return target, 0.0 if recalled else None


async def servable_versions(db: AsyncSession, model_id: uuid.UUID) -> list[int]:
    """Return the numbers of a model's versions that may be served (not archived), ascending."""
    rows = await db.scalars(
        select(ModelVersion.version)
        .where(ModelVersion.model_id == model_id, ModelVersion.stage != Stage.ARCHIVED)
        .order_by(ModelVersion.version)
    )
    return list(rows)
