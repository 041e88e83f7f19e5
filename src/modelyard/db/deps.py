"""The per-request database session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.state import app_state


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """Open a session for one request; it takes a connection only when first used."""
    async with app_state(request).sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]
