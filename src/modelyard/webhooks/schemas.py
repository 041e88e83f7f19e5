"""API types of webhooks and their deliveries."""

from __future__ import annotations

import ipaddress
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Self
from urllib.parse import urlsplit

import httpx
from pydantic import AfterValidator, AliasChoices, Field, StringConstraints, model_validator

from modelyard.schemas import ReadModel, StrictModel

MAX_URL_LENGTH = 2048


class EventType(StrEnum):
    """What a webhook can subscribe to; each is the name of the action that it announces."""

    MODEL_VERSION_CREATED = "model_version.created"
    MODEL_VERSION_STAGE_CHANGED = "model_version.stage_changed"
    ALIAS_CHANGED = "alias.changed"
    MODEL_DELETED = "model.deleted"


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # waiting for its first attempt, or for a retry
    DELIVERED = "delivered"  # the receiver answered 2xx
    FAILED = "failed"  # every attempt failed; redeliver to try again


def check_url(value: str) -> str:
    """Return `value` if it is an absolute http(s) URL with a host, no user info and no
    fragment, free of whitespace and control characters."""
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("a URL cannot contain whitespace or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError when out of range or not a number
    except ValueError as exc:
        raise ValueError("not a valid URL") from exc
    if parts.scheme not in ("http", "https"):
        raise ValueError("the URL must start with http:// or https://")
    if not parts.hostname:
        raise ValueError("the URL must name a host")
    # Credentials in a URL end up in logs and audit records: receivers authenticate deliveries
    # by their signature instead.
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError("the URL cannot contain a user name or password")
    if parts.fragment or value.endswith("#"):
        raise ValueError("the URL cannot contain a fragment")
    if port == 0:
        raise ValueError("port 0 is not a port a receiver listens on")
    try:
        httpx.URL(value)  # what the sender will parse (IDNA host names included)
    except httpx.InvalidURL as exc:
        raise ValueError("not a valid URL") from exc
    host = parts.hostname
    if ":" in host:  # an IPv6 literal (brackets removed by urlsplit) must be a valid one
        try:
            ipaddress.IPv6Address(host.split("%")[0])
        except ValueError as exc:
            raise ValueError("not a valid IPv6 address") from exc
        if "%" in host:
            raise ValueError("an IPv6 zone is not allowed in a webhook URL")
    return value


WebhookUrl = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_URL_LENGTH),
    AfterValidator(check_url),
    Field(description="Where deliveries are POSTed: an http or https URL, at most 2048 chars"),
]
EventList = Annotated[
    list[EventType],
    Field(min_length=1, max_length=len(EventType), description="the event types to deliver"),
]
ModelRef = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$"),
    Field(description="only this model's events: its name or UUID, among the caller's models"),
]
WebhookDescription = Annotated[str, StringConstraints(max_length=500)]


class WebhookCreate(StrictModel):
    url: WebhookUrl
    events: EventList
    model: ModelRef | None = None
    description: WebhookDescription | None = None
    active: bool = True


class WebhookUpdate(StrictModel):
    """The fields to change; `model: null` makes the webhook cover every model again."""

    url: WebhookUrl | None = None
    events: EventList | None = None
    model: ModelRef | None = None
    description: WebhookDescription | None = None
    active: bool | None = None


class WebhookRead(ReadModel):
    id: uuid.UUID
    url: str
    events: list[EventType]
    model_id: uuid.UUID | None = Field(description="only this model's events; null: all")
    description: str | None
    active: bool = Field(validation_alias=AliasChoices("active", "is_active"))
    created_at: datetime
    updated_at: datetime


class WebhookCreated(WebhookRead):
    secret: str = Field(
        description="signs every delivery (Standard Webhooks, `whsec_…`); shown this once only"
    )


class DeliveryRead(ReadModel):
    id: uuid.UUID = Field(description="the message id, sent as `webhook-id` on every attempt")
    webhook_id: uuid.UUID
    event_type: EventType
    payload: dict[str, Any]
    status: DeliveryStatus
    attempts: int = Field(description="attempts made since the delivery was last queued")
    next_attempt_at: datetime | None = Field(description="when it is next tried, while pending")
    response_status: int | None = Field(description="the last attempt's HTTP status, if any")
    last_error: str | None = Field(description="why the last attempt failed, if it did")
    created_at: datetime
    last_attempt_at: datetime | None
    delivered_at: datetime | None

    @model_validator(mode="after")
    def _due_only_while_pending(self) -> Self:
        if self.status != DeliveryStatus.PENDING:
            self.next_attempt_at = None
        return self
