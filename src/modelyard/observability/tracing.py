"""OpenTelemetry traces: off unless the standard `OTEL_*` environment turns them on.

On when `OTEL_TRACES_EXPORTER` names an exporter (`otlp`, `console`) or an OTLP endpoint is
set (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), and
`OTEL_SDK_DISABLED` is not `true`. The rest of the standard environment applies as the SDK
reads it: `OTEL_SERVICE_NAME` (default `modelyard`), `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_TRACES_SAMPLER`, `OTEL_EXPORTER_OTLP_*` (headers, protocol http/protobuf, timeout).

Spans: one per HTTP request (`TracingMiddleware`, W3C `traceparent` honoured), one per database
statement, and `model.load`, `predict` and `prediction_log.flush`. Off, the middleware is not
installed and `span()` returns a shared no-op context: the hot path pays one global read.
"""

from __future__ import annotations

import contextlib
import os
from contextlib import AbstractContextManager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard.observability.logging import request_id_var

TRACER_NAME = "modelyard"
_NOOP: AbstractContextManager[None] = contextlib.nullcontext()
_tracer: trace.Tracer | None = None
_provider: Any = None


def wanted(environ: dict[str, str] | None = None) -> bool:
    """Tell whether the environment asks for traces."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def enabled() -> bool:
    return _tracer is not None


def configure(provider: Any | None = None) -> bool:
    """Turn traces on if the environment asks (or with `provider`, a TracerProvider the caller
    built: tests pass one with an in-memory exporter); return whether they are on."""
    global _tracer, _provider
    if provider is None:
        if not wanted():
            _tracer = None
            return False
        provider = _provider_from_environment()
    _provider = provider
    _tracer = provider.get_tracer(TRACER_NAME)
    return True


def disable() -> None:
    """Turn traces off (spans already started still end)."""
    global _tracer
    _tracer = None


def _provider_from_environment() -> Any:
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME", "modelyard")}
    ).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)
    names = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",")
    for name in (n.strip() for n in names):
        if name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def flush() -> None:
    """Export the spans still buffered (as the app stops)."""
    end = getattr(_provider, "force_flush", None)
    if _tracer is not None and end is not None:
        end()


def span(name: str, **attributes: Any) -> AbstractContextManager[Span | None]:
    """A span named `name` around a block, a child of the current one; off: a no-op (`None`).

    Attributes given here are evaluated by the caller even when off: on a hot path, set them
    on the span the block receives (`if span: span.set_attribute(...)`).
    """
    if _tracer is None:
        return _NOOP
    return _tracer.start_as_current_span(name, attributes=attributes or None)


def instrument_engine(engine: AsyncEngine) -> None:
    """One client span per database statement on `engine`, while traces are on: `db.<verb>`
    with the system and the statement's first word (never its parameters)."""
    system = engine.dialect.name
    started: dict[int, Any] = {}

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def before(_conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        tracer = _tracer
        if tracer is None:
            return
        verb = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "SQL"
        current = tracer.start_span(
            f"db.{verb.lower()}",
            kind=SpanKind.CLIENT,
            attributes={"db.system.name": system, "db.operation.name": verb},
        )
        started[id(cursor)] = current

    @event.listens_for(engine.sync_engine, "after_cursor_execute")
    def after(_conn: Any, cursor: Any, *_: Any) -> None:
        current = started.pop(id(cursor), None)
        if current is not None:
            current.end()

    @event.listens_for(engine.sync_engine, "handle_error")
    def failed(context: Any) -> None:
        current = started.pop(id(context.cursor), None)
        if current is not None:
            current.set_status(Status(StatusCode.ERROR, type(context.original_exception).__name__))
            current.end()


class TracingMiddleware:
    """A server span per HTTP request: `METHOD route`, its status, the caller's trace context."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracer = _tracer
        if scope["type"] != "http" or tracer is None:
            await self.app(scope, receive, send)
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        parent = propagate.extract(carrier)
        method = scope["method"]
        with tracer.start_as_current_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": scope["path"],
                "modelyard.request_id": request_id_var.get() or "",
            },
        ) as current:
            status = 500

            async def send_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, send_status)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route:
                    current.update_name(f"{method} {route}")
                    current.set_attribute("http.route", route)
                current.set_attribute("http.response.status_code", status)
                if status >= 500:
                    current.set_status(Status(StatusCode.ERROR))
