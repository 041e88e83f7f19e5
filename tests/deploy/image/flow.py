"""A user's first hour, through the containers: an admin made with `modelyard create-admin` in
the api container, then register → upload → promote → predict (REST and V2) → batch job →
download, over HTTP as docs/operations/deploy.md shows."""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.deploy.image.podman import Container
from tests.serving import legit

PASSWORD = "image-test-password"
HTTP_TIMEOUT_SECONDS = 60.0
# How long a batch job of a few rows may take on a busy 2-core machine before the test gives up.
JOB_BUDGET_SECONDS = 180.0


def http(base_url: str) -> httpx.Client:
    # No proxy: the servers are on loopback.
    return httpx.Client(base_url=base_url, timeout=HTTP_TIMEOUT_SECONDS, trust_env=False)


@dataclass(frozen=True)
class Account:
    headers: dict[str, str]


def admin(api_container: Container, api_url: str, email: str) -> Account:
    """Make an admin inside the api container, log in, and make an API key with every scope the
    flow needs."""
    api_container.exec(
        "modelyard", "create-admin", "--email", email, "--password", PASSWORD, check=True
    )
    with http(api_url) as client:
        login = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        token = login.json()["access_token"]
        made = client.post(
            "/api/v1/api-keys",
            headers={"Authorization": f"Bearer {token}"},
            json={"name": "image-test", "scopes": ["read", "predict", "write"]},
        )
        assert made.status_code == 201, made.text
    return Account(headers={"X-API-Key": made.json()["key"]})


def upload_and_promote(api_url: str, account: Account, name: str, model: Path) -> dict[str, Any]:
    with http(api_url) as client:
        uploaded = client.post(
            "/api/v1/models/upload",
            headers=account.headers,
            data={"name": name},
            files={"file": (model.name, model.read_bytes())},
        )
        assert uploaded.status_code == 201, uploaded.text
        version = uploaded.json()["version"]
        promoted = client.patch(
            f"/api/v1/models/{name}/versions/{version}/lifecycle",
            headers=account.headers,
            json={"stage": "production"},
        )
        assert promoted.status_code == 200, promoted.text
    body: dict[str, Any] = promoted.json()
    return body


def expected_labels(rows: list[list[float]]) -> list[int]:
    """What the model predicts for `rows`, computed here."""
    predicted = legit.iris_lr().predict(np.asarray(rows, dtype=np.float64))
    return [int(label) for label in predicted]


def iris_rows(count: int) -> list[list[float]]:
    x, _ = legit.iris()
    return [[float(v) for v in row] for row in x[:count]]


def predict_rest(
    serving_url: str, account: Account, name: str, rows: list[list[float]]
) -> dict[str, Any]:
    with http(serving_url) as client:
        answer = client.post(
            f"/api/v1/predict/{name}", headers=account.headers, json={"inputs": rows}
        )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def predict_v2(
    serving_url: str, account: Account, name: str, rows: list[list[float]]
) -> dict[str, Any]:
    request = {
        "inputs": [
            {
                "name": "input-0",
                "shape": [len(rows), len(rows[0])],
                "datatype": "FP64",
                "data": [v for row in rows for v in row],
            }
        ]
    }
    with http(serving_url) as client:
        answer = client.post(f"/v2/models/{name}/infer", headers=account.headers, json=request)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def v2_output(body: dict[str, Any], name: str) -> list[Any]:
    (output,) = [o for o in body["outputs"] if o["name"] == name]
    data: list[Any] = output["data"]
    return data


def batch_job(api_url: str, account: Account, name: str, rows: list[list[float]]) -> list[int]:
    """Upload `rows` as a CSV, score them with a batch job, download the output; return the
    predicted labels in row order."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow([f"f{i}" for i in range(len(rows[0]))])
    writer.writerows(rows)
    with http(api_url) as client:
        stored = client.post(
            "/api/v1/files/upload",
            headers=account.headers,
            data={"path": f"data/{name}.csv"},
            files={"file": (f"{name}.csv", text.getvalue().encode())},
        )
        assert stored.status_code in {200, 201}, stored.text
        created = client.post(
            "/api/v1/batch-jobs",
            headers=account.headers,
            json={
                "model": name,
                "input_path": f"data/{name}.csv",
                "output_path": f"results/{name}.csv",
                "format": "csv",
            },
        )
        assert created.status_code == 202, created.text
        job = created.json()
        deadline = time.monotonic() + JOB_BUDGET_SECONDS
        while job["status"] in {"queued", "running"}:
            assert time.monotonic() < deadline, f"the job never finished: {job}"
            time.sleep(1)
            job = client.get(f"/api/v1/batch-jobs/{job['id']}", headers=account.headers).json()
        assert job["status"] == "succeeded", job
        output = client.get(f"/api/v1/files/download/results/{name}.csv", headers=account.headers)
        assert output.status_code == 200, output.text
    scored = list(csv.DictReader(io.StringIO(output.text)))
    return [int(float(r["prediction"])) for r in sorted(scored, key=lambda r: int(r["row"]))]


def download_model(api_url: str, account: Account, name: str, version: int) -> bytes:
    with http(api_url) as client:
        answer = client.get(
            f"/api/v1/models/{name}/versions/{version}/download", headers=account.headers
        )
    assert answer.status_code == 200, answer.text
    return answer.content


def wait_http_ok(url: str, path: str, budget_seconds: float) -> None:
    """Poll `path` until it answers 200, within a start-up budget taken from a deploy file."""
    deadline = time.monotonic() + budget_seconds
    last = ""
    with http(url) as client:
        while time.monotonic() < deadline:
            try:
                answer = client.get(path)
            except httpx.TransportError as exc:
                last = repr(exc)
            else:
                if answer.status_code == 200:
                    return
                last = f"{answer.status_code} {answer.text[:200]}"
            time.sleep(1)
    raise AssertionError(f"{url}{path} did not answer 200 within {budget_seconds:.0f} s: {last}")
