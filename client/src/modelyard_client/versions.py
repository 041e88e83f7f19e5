"""Which version number an alias or stage names, from the model's description."""

from __future__ import annotations

from modelyard_client import types as t
from modelyard_client.errors import ConfigurationError, InvalidInput


def pick_version(
    model: t.Model,
    *,
    version: int | None = None,
    alias: str | None = None,
    stage: str | None = None,
) -> int:
    """Resolve like the server serves: the version given, the alias's, the newest version in
    `stage`, else the production version, else the newest that is not archived.

    Raises:
        ConfigurationError: no version matches.
    """
    if sum(x is not None for x in (version, alias, stage)) > 1:
        raise InvalidInput("choose the version by one of version, alias or stage")
    if version is not None:
        return int(version)
    if alias is not None:
        if alias not in model.aliases:
            raise ConfigurationError(f"model {model.name!r} has no alias {alias!r}")
        return model.aliases[alias]
    candidates = sorted(model.versions, key=lambda v: v.version, reverse=True)
    if stage is not None:
        for summary in candidates:
            if summary.stage == str(stage):
                return summary.version
        raise ConfigurationError(f"model {model.name!r} has no version in stage {stage!r}")
    if model.production_version is not None:
        return model.production_version
    for summary in candidates:
        if summary.stage != t.Stage.ARCHIVED:
            return summary.version
    raise ConfigurationError(f"model {model.name!r} has no version that is not archived")
