"""API types of the files area."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class FileStored(BaseModel):
    path: str = Field(description="the file's path in the caller's area")
    size: int = Field(description="bytes")
    sha256: str = Field(description="hex SHA-256 of the content")


class FileRead(BaseModel):
    path: str
    size: int
    modified_at: datetime
