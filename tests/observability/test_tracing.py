"""OpenTelemetry traces: off by default, on through OTEL_*; spans for requests, database
statements, model loads, predictions and prediction log flushes (the SDK's in-memory exporter)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy.ext.asyncio import AsyncEngine

from modelyard.app import create_app
from modelyard.config import Settings
from modelyard.observability import tracing
from modelyard.state import AppState
from tests.support.factories import Account, lifespan, make_account, make_version

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"},
            False,
        ),
    ],
)
def test_the_standard_environment_turns_traces_on(environ: dict[str, str], on: bool) -> None:
    assert tracing.wanted(environ) is on


def test_off_by_default_nothing_is_installed(settings: Settings) -> None:
    assert not tracing.enabled()
    app = create_app(settings)
    assert tracing.TracingMiddleware not in middleware_of(app)
    with tracing.span("predict") as span:
        assert span is None


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure(provider)
    try:
        yield exporter
    finally:
        tracing.disable()


@pytest.fixture
async def traced_app(
    exporter: InMemorySpanExporter, settings: Settings, engine: AsyncEngine
) -> AsyncIterator[FastAPI]:
    """The app with traces on; `engine` deletes what the test wrote, as for the `app` fixture."""
    app = create_app(settings)
    assert tracing.TracingMiddleware in middleware_of(app)
    async with lifespan(app):
        yield app


@pytest.fixture
async def traced_client(traced_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=traced_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def middleware_of(app: FastAPI) -> list[object]:
    return [m.cls for m in app.user_middleware]


def by_name(spans: Any, name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


async def test_a_prediction_is_traced_end_to_end(
    traced_app: FastAPI,
    traced_client: httpx.AsyncClient,
    exporter: InMemorySpanExporter,
    iris_skops: Path,
) -> None:
    account: Account = await make_account(traced_client)
    await make_version(traced_client, account, iris_skops, name="iris")
    exporter.clear()
    response = await traced_client.post(
        "/api/v1/predict/iris",
        json={"inputs": ROWS},
        headers={**account.headers, "traceparent": PARENT, "X-Request-ID": "trace-me"},
    )
    assert response.status_code == 200, response.text
    state: AppState = traced_app.state.modelyard
    await state.prediction_log.flush()
    spans = exporter.get_finished_spans()

    (request,) = by_name(spans, "POST /api/v1/predict/{model}")
    assert request.kind is SpanKind.SERVER
    assert request.context is not None
    assert request.parent is not None
    # The caller's trace continues here.
    assert format(request.context.trace_id, "032x") == TRACE_ID
    assert request.attributes is not None
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["http.route"] == "/api/v1/predict/{model}"
    assert request.attributes["modelyard.request_id"] == "trace-me"

    (predict,) = by_name(spans, "predict")
    assert predict.parent is not None
    assert predict.parent.span_id == request.context.span_id
    assert predict.attributes is not None
    assert dict(predict.attributes) == {
        "modelyard.model": "iris",
        "modelyard.model_id": response.json()["model_id"],
        "modelyard.version": 1,
        "modelyard.protocol": "rest",
        "modelyard.rows": 2,
    }
    (load,) = by_name(spans, "model.load")  # the first prediction loads the model
    assert load.context is not None
    assert load.context.trace_id == request.context.trace_id

    statements = [s for s in spans if s.name.startswith("db.")]
    assert statements, "the request's database statements are spans"
    in_request = [
        s for s in statements if s.context and s.context.trace_id == request.context.trace_id
    ]
    assert in_request, "statements made for the request are in its trace"
    assert all(s.kind is SpanKind.CLIENT for s in statements)
    assert {s.attributes["db.system.name"] for s in statements if s.attributes} == {
        traced_app.state.modelyard.engine.dialect.name
    }

    flushes = by_name(spans, "prediction_log.flush")
    assert flushes
    assert flushes[-1].attributes is not None
    assert flushes[-1].attributes["modelyard.written"] is True
    assert all(f.attributes and f.attributes["modelyard.rows"] == 1 for f in flushes)

    # A second prediction: the model is cached, no load.
    exporter.clear()
    again = await traced_client.post(
        "/api/v1/predict/iris", json={"inputs": ROWS}, headers=account.headers
    )
    assert again.status_code == 200
    spans = exporter.get_finished_spans()
    assert by_name(spans, "model.load") == []
    assert len(by_name(spans, "predict")) == 1


async def test_a_failed_request_is_marked(
    traced_client: httpx.AsyncClient, exporter: InMemorySpanExporter
) -> None:
    account = await make_account(traced_client)
    exporter.clear()
    missing = await traced_client.post(
        "/api/v1/predict/nothing", json={"inputs": ROWS}, headers=account.headers
    )
    assert missing.status_code == 404
    (request,) = by_name(exporter.get_finished_spans(), "POST /api/v1/predict/{model}")
    assert request.attributes is not None
    assert request.attributes["http.response.status_code"] == 404
