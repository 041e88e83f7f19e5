"""OpenTelemetry traces: off by default, on through OTEL_*; spans for requests, database
statements, model loads, predictions and prediction log flushes (the SDK's in-memory exporter)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Traced:
    """A first prediction of iris made with the caller's trace context, and its spans."""

    account: Account
    response: httpx.Response
    spans: list[ReadableSpan]

    @property
    def request(self) -> ReadableSpan:
        (request,) = by_name(self.spans, "POST /api/v1/predict/{model}")
        return request


@pytest.fixture
async def first_prediction(
    traced_app: FastAPI,
    traced_client: httpx.AsyncClient,
    exporter: InMemorySpanExporter,
    iris_skops: Path,
) -> Traced:
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
    return Traced(account, response, list(exporter.get_finished_spans()))


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


async def test_the_callers_trace_continues_in_the_request_span(first_prediction: Traced) -> None:
    request = first_prediction.request

    assert request.kind is SpanKind.SERVER
    assert request.parent is not None
    assert format(trace_id(request), "032x") == TRACE_ID
    assert request.attributes is not None
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["http.route"] == "/api/v1/predict/{model}"
    assert request.attributes["modelyard.request_id"] == "trace-me"


async def test_the_predict_span_names_the_model_version_protocol_and_rows(
    first_prediction: Traced,
) -> None:
    (predict,) = by_name(first_prediction.spans, "predict")

    assert predict.parent is not None
    assert first_prediction.request.context is not None
    assert predict.parent.span_id == first_prediction.request.context.span_id
    assert predict.attributes is not None
    assert dict(predict.attributes) == {
        "modelyard.model": "iris",
        "modelyard.model_id": first_prediction.response.json()["model_id"],
        "modelyard.version": 1,
        "modelyard.protocol": "rest",
        "modelyard.rows": 2,
    }


async def test_the_first_prediction_loads_the_model_in_the_requests_trace(
    first_prediction: Traced,
) -> None:
    (load,) = by_name(first_prediction.spans, "model.load")

    assert trace_id(load) == trace_id(first_prediction.request)


async def test_database_statements_are_client_spans_in_the_requests_trace(
    traced_app: FastAPI, first_prediction: Traced
) -> None:
    statements = [s for s in first_prediction.spans if s.name.startswith("db.")]

    assert statements, "the request's database statements are spans"
    request_trace = trace_id(first_prediction.request)
    in_request = [s for s in statements if s.context and s.context.trace_id == request_trace]
    assert in_request, "statements made for the request are in its trace"
    assert all(s.kind is SpanKind.CLIENT for s in statements)
    assert {s.attributes["db.system.name"] for s in statements if s.attributes} == {
        traced_app.state.modelyard.engine.dialect.name
    }


async def test_the_prediction_log_flush_is_a_span_of_what_it_wrote(
    first_prediction: Traced,
) -> None:
    flushes = by_name(first_prediction.spans, "prediction_log.flush")

    assert flushes
    assert flushes[-1].attributes is not None
    assert flushes[-1].attributes["modelyard.written"] is True
    assert all(f.attributes and f.attributes["modelyard.rows"] == 1 for f in flushes)


async def test_a_second_prediction_uses_the_loaded_model(
    traced_client: httpx.AsyncClient, exporter: InMemorySpanExporter, first_prediction: Traced
) -> None:
    exporter.clear()

    again = await traced_client.post(
        "/api/v1/predict/iris", json={"inputs": ROWS}, headers=first_prediction.account.headers
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
