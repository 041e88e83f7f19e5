"""`EventsDep` and `OutageCacheDep`: what changed, and what is remembered through an outage."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Annotated, Any

from fastapi import Depends

from modelyard.changes.events import Events
from modelyard.changes.outage import OutageCache
from modelyard.deps import component

EventsDep = Annotated[Events, Depends(component("events"))]
OutageCacheDep = Annotated[OutageCache[Hashable, Any], Depends(component("outage_cache"))]
