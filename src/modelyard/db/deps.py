"""The per-request database session, and the process's engine and session factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from modelyard.deps import component

SessionsDep = Annotated[async_sessionmaker[AsyncSession], Depends(component("sessions"))]
EngineDep = Annotated[AsyncEngine, Depends(component("engine"))]


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """Open a session for one request; it takes a connection only when first used."""
    # Every request's dependency: the factory read here, not through a second dependency.
    sessions: async_sessionmaker[AsyncSession] = request.app.state.modelyard.sessions
    async with sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]
