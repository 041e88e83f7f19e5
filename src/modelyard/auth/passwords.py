"""Argon2id password hashing, kept off the event loop."""

from __future__ import annotations

import asyncio

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

from modelyard.config import Settings


class PasswordHasher:
    """Hash and verify passwords with the configured Argon2id cost."""

    def __init__(self, settings: Settings) -> None:
        self._hasher = argon2.PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            type=argon2.Type.ID,
        )
        # Verified against when the email is unknown, so that both failures take as long.
        self._dummy_hash = self._hasher.hash("modelyard-timing-equaliser")

    async def hash(self, password: str) -> str:
        """Return the Argon2id hash of `password`."""
        # Argon2 is deliberately slow (tens of ms): a thread keeps other requests moving.
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Tell whether `password` matches; with no hash, spend the same time and say no."""
        return await asyncio.to_thread(self._verify, password_hash, password)

    def _verify(self, password_hash: str | None, password: str) -> bool:
        try:
            self._hasher.verify(password_hash or self._dummy_hash, password)
        except (VerificationError, InvalidHashError):
            return False
        return password_hash is not None

    def needs_rehash(self, password_hash: str) -> bool:
        """Tell whether a stored hash was made with other parameters than the current ones."""
        return self._hasher.check_needs_rehash(password_hash)
