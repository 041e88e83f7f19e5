"""API types of user administration."""

from __future__ import annotations

from pydantic import Field

from modelyard.auth.schemas import UserRead


class UserDetail(UserRead):
    """A user as an admin sees one: the account, and how much it owns."""

    model_count: int = Field(description="registered models (archived ones included)")
    version_count: int = Field(description="model versions, across those models")
    experiment_count: int
    active_api_key_count: int = Field(description="API keys neither revoked nor expired")
