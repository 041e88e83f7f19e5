"""`JobQueueDep`: where this process sends batch jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from modelyard.deps import component
from modelyard.jobs.service import JobQueue

# None on a `serving` replica, which has no batch job routes.
JobQueueDep = Annotated[JobQueue | None, Depends(component("batch_jobs"))]
