"""The client's exceptions; an API refusal carries the server's problem+json."""

from __future__ import annotations

from typing import Any

import httpx

from modelyard_client.types import BatchJob


class ModelyardClientError(Exception):
    """Anything the client reports as an expected failure (the CLI shows its message)."""


class ConfigurationError(ModelyardClientError):
    """No server URL or credentials, or a local input the client cannot use."""


class ExportMismatch(ConfigurationError):
    """log_model: the ONNX export of a deep-learning model answers differently from the model
    itself on the input example, beyond the tolerance (nothing was uploaded)."""

    def __init__(self, message: str, *, output: str, difference: float) -> None:
        self.output = output
        """The name of the first output found to differ."""
        self.difference = difference
        """Its largest absolute difference (inf when the shapes differ)."""
        super().__init__(message)


class InvalidInput(ModelyardClientError, ValueError):
    """An argument the client cannot send: NaN or infinity in inputs or metrics, inputs of a
    type that are not rows, an input file it cannot read. Nothing was sent to the server."""


class ConnectionFailed(ModelyardClientError):
    """The server could not be reached (or the connection broke) after the retries."""


class WaitTimedOut(ModelyardClientError):
    """A batch job did not finish within the wait's timeout (the job itself goes on)."""

    def __init__(self, message: str, job: BatchJob) -> None:
        self.job = job
        """The job as the wait saw it last."""
        super().__init__(message)


class ApiError(ModelyardClientError):
    """The server refused a request: its RFC 9457 problem details (status, title, detail)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        type: str = "about:blank",
        errors: list[dict[str, Any]] | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.errors = errors or []
        self.request_id = request_id
        self.retry_after = retry_after
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """The refusal as one line, e.g. `404 Not Found: model 'iris' not found`."""
        text = f"{self.status} {self.title}"
        if self.detail:
            text += f": {self.detail}"
        for error in self.errors[:5]:
            where = ".".join(str(part) for part in error.get("loc", []))
            text += (
                f"\n  {where}: {error.get('msg', '')}" if where else f"\n  {error.get('msg', '')}"
            )
        return text

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """Build the error from a non-2xx answer, problem+json or not."""
        body: Any = None
        try:
            body = response.json()
        except ValueError:
            body = None
        title = response.reason_phrase or "Error"
        detail: str | None = None
        kind = "about:blank"
        errors: list[dict[str, Any]] = []
        if isinstance(body, dict):
            title = str(body.get("title") or title)
            raw_detail = body.get("detail", body.get("error"))
            detail = None if raw_detail is None else str(raw_detail)
            kind = str(body.get("type") or kind)
            raw_errors = body.get("errors")
            if isinstance(raw_errors, list):
                errors = [e for e in raw_errors if isinstance(e, dict)]
        elif response.text:
            detail = response.text[:500]
        subclass = _BY_STATUS.get(response.status_code, ApiError)
        return subclass(
            response.status_code,
            title,
            detail,
            type=kind,
            errors=errors,
            request_id=response.headers.get("x-request-id"),
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )


class Unauthorized(ApiError):
    """401: no credentials, or a wrong, expired or revoked key or token."""


class Forbidden(ApiError):
    """403: authenticated but not allowed."""


class NotFound(ApiError):
    """404: no such object, or not yours."""


class Conflict(ApiError):
    """409: the request conflicts with the object's state (e.g. an archived model)."""


class PayloadTooLarge(ApiError):
    """413: the upload or request body is over the server's limit."""


class UnsupportedFormat(ApiError):
    """415: the file is in no format the server supports."""


class Unprocessable(ApiError):
    """422: the request or the file was understood but refused (the detail says why)."""


class RateLimited(ApiError):
    """429: too many requests; `retry_after` says when to come back."""


class Unavailable(ApiError):
    """503: a dependency of the server is down."""


_BY_STATUS: dict[int, type[ApiError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedFormat,
    422: Unprocessable,
    429: RateLimited,
    503: Unavailable,
}


def parse_retry_after(value: str | None) -> float | None:
    """Read a Retry-After header given in seconds (dates are not sent by Modelyard)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
