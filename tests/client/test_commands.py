"""The `modelyard` commands against a live server: output, --json, exit codes, stored login."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import typer
from typer.testing import CliRunner, Result

from modelyard_client.cli import make_app
from modelyard_client.cli.commands import PROGRESS_MIN_BYTES
from tests.serving import legit
from tests.support.live import Login
from tests.support.polling import eventually
from tests.support.servers import ServerProcess

runner = CliRunner()


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    return make_app()


def run(app: typer.Typer, *args: str, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(app, list(args), env=env, prog_name="modelyard")


def as_key(login: Login) -> dict[str, str]:
    return {"MODELYARD_URL": login.url, "MODELYARD_API_KEY": login.api_key}


def parsed(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def push_iris(app: typer.Typer, login: Login, iris_skops: Path, *extra: str) -> dict[str, Any]:
    created: dict[str, Any] = parsed(
        run(app, "push", str(iris_skops), "--name", "iris", "--json", *extra, env=as_key(login))
    )
    return created


def test_login_with_an_api_key_stores_it_readable_by_the_owner_only(
    app: typer.Typer, login: Login, config_file: Path
) -> None:
    result = run(app, "login", "--url", login.url, "--api-key", login.api_key)

    assert result.exit_code == 0, result.output
    assert f"logged in to {login.url} as {login.email}" in result.stderr
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    assert json.loads(config_file.read_text())["api_key"] == login.api_key
    # Later commands use the stored login without any flag or variable.
    assert parsed(run(app, "whoami", "--json"))["email"] == login.email

    assert run(app, "logout").exit_code == 0
    assert not config_file.exists()


def test_login_with_a_password_makes_a_key_that_logout_revokes(
    app: typer.Typer, login: Login, config_file: Path
) -> None:
    result = run(
        app, "login", "--url", login.url, "--email", login.email, "--password", login.password
    )
    assert result.exit_code == 0, result.output
    stored = json.loads(config_file.read_text())
    assert stored["api_key_id"]
    assert parsed(run(app, "whoami", "--json"))["email"] == login.email

    assert run(app, "logout").exit_code == 0

    with httpx.Client(base_url=login.url) as http:
        answer = http.get("/api/v1/auth/me", headers={"X-API-Key": stored["api_key"]})
    assert answer.status_code == 401


def test_a_stored_login_is_never_sent_to_another_server(
    app: typer.Typer, login: Login, config_file: Path
) -> None:
    assert run(app, "login", "--url", login.url, "--api-key", login.api_key).exit_code == 0

    result = run(app, "--url", "http://127.0.0.1:9", "whoami")

    assert result.exit_code == 2
    assert result.stderr.startswith(
        "error: not logged in to http://127.0.0.1:9: run `modelyard login --url http://127.0.0.1:9`"
    )


def test_without_credentials_a_command_says_to_log_in(app: typer.Typer, login: Login) -> None:
    # Nothing stored, no key in the environment: not "cannot reach", whatever the server does.
    for env in ({}, {"MODELYARD_URL": login.url}):
        result = run(app, "models", "list", env=env)

        assert result.exit_code == 2
        assert "not logged in" in result.stderr
        assert "run `modelyard login" in result.stderr
        assert "cannot reach" not in result.stderr


def test_a_wrong_key_exits_1_with_the_servers_message_and_no_traceback(
    app: typer.Typer, login: Login
) -> None:
    result = run(app, "models", "list", env={"MODELYARD_URL": login.url, "MODELYARD_API_KEY": "x"})

    assert result.exit_code == 1
    assert result.stderr.startswith("error: 401 Unauthorized")
    assert "Traceback" not in result.output


def test_an_unknown_model_exits_1_with_the_servers_message(app: typer.Typer, login: Login) -> None:
    result = run(app, "models", "show", "nope", env=as_key(login))

    assert result.exit_code == 1
    assert "404 Not Found: model 'nope' not found" in result.stderr


def test_usage_errors_exit_2(app: typer.Typer, login: Login, iris_skops: Path) -> None:
    assert run(app, "push", str(iris_skops), env=as_key(login)).exit_code == 2  # no --name
    assert run(app, "promote", "iris", "one", env=as_key(login)).exit_code == 2
    missing = run(app, "predict", "iris", "--input", "missing.json", env=as_key(login))
    assert missing.exit_code == 2
    assert "cannot read missing.json" in missing.stderr


def test_push_sends_metrics_params_and_tags(
    app: typer.Typer, login: Login, iris_skops: Path
) -> None:
    created = push_iris(
        app, login, iris_skops, "-m", "accuracy=0.97", "-p", "C=1.0", "-p", "solver=lbfgs",
        "-t", "demo", "--description", "first",
    )  # fmt: skip

    assert (created["model_name"], created["version"], created["stage"]) == (
        "iris",
        1,
        "development",
    )
    assert created["metrics"] == {"accuracy": 0.97}
    assert created["hyperparameters"] == {"C": 1.0, "solver": "lbfgs"}
    assert created["tags"] == ["demo"]
    human = run(app, "push", str(iris_skops), "--name", "iris", env=as_key(login))
    assert human.exit_code == 0, human.output
    assert "pushed iris version 2 (sklearn, skops" in human.stderr


def test_push_shows_a_progress_bar_and_the_refusal_of_a_large_file(
    app: typer.Typer, login: Login, tmp_path: Path
) -> None:
    big = tmp_path / "big.skops"
    big.write_bytes(b"\0" * (4 * 1024 * 1024))  # over the live server's 3 MiB

    result = run(app, "push", str(big), "--name", "big", env=as_key(login))

    assert result.exit_code == 1
    assert "big.skops" in result.stderr  # the bar's label
    assert "MB" in result.stderr
    assert "error: 413" in result.stderr


def test_push_refused_by_the_server_shows_its_reason(
    app: typer.Typer, login: Login, tmp_path: Path
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a model")

    result = run(app, "push", str(text), "--name", "notes", env=as_key(login))

    assert result.exit_code == 1
    assert result.stderr.startswith("error: 415")


def test_models_versions_promote_alias_and_download(
    app: typer.Typer, login: Login, iris_skops: Path, tmp_path: Path
) -> None:
    env = as_key(login)
    push_iris(app, login, iris_skops)
    push_iris(app, login, iris_skops)

    page = parsed(run(app, "models", "list", "--json", env=env))
    assert [m["name"] for m in page["items"]] == ["iris"]
    table = run(app, "models", "list", env=env)
    assert table.exit_code == 0
    assert "iris" in table.stdout
    assert [
        v["version"] for v in parsed(run(app, "versions", "iris", "--json", env=env))["items"]
    ] == [2, 1]
    promoted = parsed(run(app, "promote", "iris", "1", "--stage", "production", "--json", env=env))
    assert promoted["stage"] == "production"
    assert (
        parsed(run(app, "alias", "set", "iris", "champion", "2", "--json", env=env))["version"] == 2
    )
    shown = parsed(run(app, "models", "show", "iris", "--json", env=env))
    assert (shown["production_version"], shown["aliases"]) == (1, {"champion": 2})
    human = run(app, "models", "show", "iris", env=env)
    assert "production" in human.stdout

    downloaded = run(app, "download", "iris", "--alias", "champion", "-o", str(tmp_path), env=env)
    assert downloaded.exit_code == 0, downloaded.output
    assert Path(downloaded.stdout.strip()) == tmp_path / "iris-v2.skops"
    assert (tmp_path / "iris-v2.skops").read_bytes() == iris_skops.read_bytes()

    assert run(app, "alias", "delete", "iris", "champion", env=env).exit_code == 0
    assert run(app, "models", "delete", "iris", "--yes", env=env).exit_code == 0
    assert parsed(run(app, "models", "list", "--json", env=env))["total"] == 0


def test_predict_from_json_and_csv(
    app: typer.Typer, login: Login, iris_skops: Path, tmp_path: Path
) -> None:
    env = as_key(login)
    push_iris(app, login, iris_skops)
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]))
    csv = tmp_path / "data.csv"
    csv.write_text("f3,f2,f1,f0\n0.2,1.4,3.5,5.1\n2.3,5.2,3.0,6.7\n")  # columns by name

    by_json = parsed(run(app, "predict", "iris", "--input", str(rows), "--json", env=env))
    by_csv = parsed(
        run(app, "predict", "iris", "-i", str(csv), "--version", "1", "--json", env=env)
    )

    assert by_json["predictions"] == by_csv["predictions"] == [0, 2]
    piped = runner.invoke(
        app, ["predict", "iris", "--input", "-", "--json"], input=rows.read_text(), env=env
    )
    assert json.loads(piped.stdout)["predictions"] == [0, 2]
    assert by_json["classes"] == [0, 1, 2]
    human = run(app, "predict", "iris", "--input", str(rows), env=env)
    assert human.exit_code == 0, human.output
    assert "iris v1" in human.stdout
    assert "confidence" in human.stdout
    bad = tmp_path / "bad.json"
    bad.write_text("[[1.0]]")
    refused = run(app, "predict", "iris", "--input", str(bad), env=env)
    assert refused.exit_code == 1
    assert refused.stderr.startswith("error: 422")


def test_keys_create_list_revoke(app: typer.Typer, login: Login) -> None:
    env = {"MODELYARD_URL": login.url, "MODELYARD_TOKEN": login.access_token}

    created = parsed(run(app, "keys", "create", "ci", "--json", env=env))
    listed = parsed(run(app, "keys", "list", "--json", env=env))
    assert created["id"] in [k["id"] for k in listed["items"]]
    assert run(app, "keys", "revoke", created["id"], env=env).exit_code == 0
    refused = run(
        app, "whoami", env={"MODELYARD_URL": login.url, "MODELYARD_API_KEY": created["key"]}
    )
    assert refused.exit_code == 1
    # An API key cannot mint keys: the server's 403 is shown, and how to make one.
    denied = run(app, "keys", "create", "more", env=as_key(login))
    assert denied.exit_code == 1
    assert denied.stderr.startswith("error: 403")
    assert "`modelyard keys create more --email EMAIL`" in denied.stderr


def test_after_login_keys_are_made_by_signing_in_with_email(
    app: typer.Typer, login: Login, config_file: Path
) -> None:
    logged_in = run(
        app, "login", "--url", login.url, "--email", login.email, "--password", login.password
    )
    assert logged_in.exit_code == 0, logged_in.output
    assert f"modelyard keys create NAME --email {login.email}" in logged_in.stderr

    # As the message says, with the password asked for: the stored login's server is used.
    created = runner.invoke(
        app,
        ["keys", "create", "ci", "--email", login.email, "--json"],
        input=login.password + "\n",
        prog_name="modelyard",
    )
    assert created.exit_code == 0, created.output
    key = json.loads(created.stdout[created.stdout.index("{") :])["key"]
    me = run(app, "whoami", "--json", env={"MODELYARD_URL": login.url, "MODELYARD_API_KEY": key})
    assert parsed(me)["email"] == login.email
    # The stored login is still the key `login` made.
    assert json.loads(config_file.read_text())["api_key"] != key


def test_keys_create_with_scopes_and_models(app: typer.Typer, login: Login) -> None:
    env = {"MODELYARD_URL": login.url, "MODELYARD_TOKEN": login.access_token}

    created = parsed(
        run(app, "keys", "create", "serving", "-s", "predict", "-m", "iris", "--json", env=env)
    )

    assert (created["scopes"], created["models"]) == (["predict"], ["iris"])
    plain = parsed(run(app, "keys", "create", "plain", "--json", env=env))
    assert (plain["scopes"], plain["models"]) == (["read", "predict"], None)
    # The key cannot read: the server's 403 names the scope.
    refused = run(
        app, "whoami", env={"MODELYARD_URL": login.url, "MODELYARD_API_KEY": created["key"]}
    )
    assert refused.exit_code == 1
    assert refused.stderr.startswith("error: 403")
    assert "`read`" in refused.stderr


def test_tables_show_whole_ids_at_any_width(app: typer.Typer, login: Login) -> None:
    env = {**as_key(login), "COLUMNS": "60"}
    ids = [
        parsed(run(app, "experiments", "create", f"a long experiment name {i}", "--json", env=env))[
            "id"
        ]
        for i in range(2)
    ]
    key_env = {"MODELYARD_URL": login.url, "MODELYARD_TOKEN": login.access_token, "COLUMNS": "60"}
    key_id = parsed(run(app, "keys", "create", "a key with a long name", "--json", env=key_env))[
        "id"
    ]

    for listed, wanted in (
        (run(app, "experiments", "list", env=env), ids),
        (run(app, "keys", "list", env=key_env), [key_id]),
        (run(app, "experiments", "show", ids[0], env=env), ids[:1]),
    ):
        assert listed.exit_code == 0, listed.output
        assert "…" not in listed.stdout
        for wanted_id in wanted:
            assert wanted_id in listed.stdout


def test_metrics_must_be_finite_numbers(app: typer.Typer, login: Login) -> None:
    env = as_key(login)
    run_id = parsed(run(app, "experiments", "create", "sweep", "--json", env=env))["id"]

    for value in ("nan", "inf", "low"):
        refused = run(app, "experiments", "log", run_id, "-m", f"loss={value}", env=env)
        assert refused.exit_code == 2
        assert "loss" in refused.stderr

    assert parsed(run(app, "experiments", "metrics", run_id, "--json", env=env)) == []


def test_experiments(app: typer.Typer, login: Login) -> None:
    env = as_key(login)
    created = parsed(
        run(app, "experiments", "create", "sweep", "-p", "C=1", "-t", "iris", "--json", env=env)
    )

    logged = run(app, "experiments", "log", created["id"], "-m", "loss=0.4", "--step", "1", env=env)
    assert logged.exit_code == 0, logged.output
    run(app, "experiments", "log", created["id"], "-m", "loss=0.2", "--step", "2", env=env)
    history = parsed(run(app, "experiments", "metrics", created["id"], "--json", env=env))
    assert [p["value"] for p in history] == [0.4, 0.2]
    shown = parsed(run(app, "experiments", "show", created["id"], "--json", env=env))
    assert shown["parameters"] == {"C": 1}
    assert parsed(run(app, "experiments", "list", "--json", env=env))["total"] == 1
    assert run(app, "experiments", "show", created["id"], env=env).exit_code == 0
    assert run(app, "experiments", "delete", created["id"], env=env).exit_code == 0


def test_files(app: typer.Typer, login: Login, tmp_path: Path) -> None:
    env = as_key(login)
    source = tmp_path / "iris.csv"
    source.write_text("a,b\n1,2\n")

    stored = parsed(
        run(app, "files", "upload", str(source), "--path", "d/iris.csv", "--json", env=env)
    )
    assert stored["path"] == "d/iris.csv"
    assert parsed(run(app, "files", "list", "--json", env=env))["total"] == 1
    copy = tmp_path / "copy.csv"
    assert run(app, "files", "download", "d/iris.csv", "-o", str(copy), env=env).exit_code == 0
    assert copy.read_text() == "a,b\n1,2\n"
    assert run(app, "files", "delete", "d/iris.csv", env=env).exit_code == 0


def test_predictions_and_analytics(
    app: typer.Typer, login: Login, iris_skops: Path, tmp_path: Path
) -> None:
    env = as_key(login)
    push_iris(app, login, iris_skops)
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]]}))
    made = parsed(run(app, "predict", "iris", "--input", str(rows), "--json", env=env))

    def logged() -> dict[str, Any]:
        page: dict[str, Any] = parsed(run(app, "predictions", "list", "--json", env=env))
        assert len(page["items"]) == page["total"] == 1  # separate reads on SQLite
        return page

    page = eventually(logged)
    assert page["items"][0]["id"] == made["prediction_id"]
    shown = parsed(run(app, "predictions", "show", made["prediction_id"], "--json", env=env))
    assert shown["status"] == "success"
    stats = parsed(run(app, "analytics", "models", "--json", env=env))
    assert stats[0]["total_predictions"] == 1
    usage = parsed(run(app, "analytics", "usage", "--days", "7", "--json", env=env))
    assert sum(day["prediction_count"] for day in usage) == 1
    assert run(app, "predictions", "list", env=env).exit_code == 0
    assert run(app, "analytics", "models", env=env).exit_code == 0
    # Dates as typed in a terminal (no time zone): local time, not a 422 from the server.
    since = ["predictions", "list", "--json", "--since"]
    assert parsed(run(app, *since, "2000-01-01", env=env))["total"] == 1
    assert parsed(run(app, *since, "2999-01-01T00:00:00", env=env))["total"] == 0


def test_version_and_shell_completion(app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelyard_client import __version__

    assert run(app, "version").stdout.splitlines()[0] == f"modelyard-client {__version__}"
    # The shell named, not detected from the test's parent processes (which may be no shell);
    # read when the command is built, before the runner's own environment applies.
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    completion = run(app, "--show-completion", "bash")
    assert completion.exit_code == 0, completion.output
    assert "_MODELYARD_COMPLETE" in completion.stdout


def test_the_server_commands_join_the_same_command(live: ServerProcess) -> None:
    from modelyard.cli import register

    app = make_app()
    register(app)

    result = run(app, "--help")
    for name in ("serve", "migrate", "create-admin", "gc", "push", "predict", "login"):
        assert name in result.stdout


def test_push_of_a_large_model_shows_the_progress_bar_to_the_end(
    app: typer.Typer, login: Login, tmp_path: Path
) -> None:
    from sklearn.ensemble import RandomForestClassifier

    x, y = legit.iris()
    noisy = x + np.random.default_rng(0).normal(scale=0.3, size=x.shape)
    forest = RandomForestClassifier(n_estimators=60, bootstrap=False, random_state=0).fit(noisy, y)
    path = legit.write_skops(forest, tmp_path / "forest.skops")
    assert path.stat().st_size > PROGRESS_MIN_BYTES

    result = run(app, "push", str(path), "--name", "forest", env=as_key(login))

    assert result.exit_code == 0, result.output
    size_mb = f"{path.stat().st_size / 1e6:.1f}"
    assert re.search(rf"forest\.skops .*{size_mb}/{size_mb} MB", result.stderr), result.stderr
    assert "pushed forest version 1" in result.stderr
    quiet = run(app, "push", str(path), "--name", "forest", "--no-progress", env=as_key(login))
    assert quiet.exit_code == 0, quiet.output
    assert " MB" not in quiet.stderr


def test_every_client_command_takes_json(app: typer.Typer) -> None:
    def leaves(command: Any, path: str) -> list[tuple[str, Any]]:
        if hasattr(command, "commands"):  # a group (typer vendors its own click)
            return [
                leaf
                for name, sub in command.commands.items()
                for leaf in leaves(sub, f"{path} {name}")
            ]
        return [(path, command)]

    root = typer.main.get_command(app)
    found = leaves(root, "modelyard")
    assert len(found) > 30
    for path, command in found:
        flags = {flag for param in command.params for flag in getattr(param, "opts", [])}
        assert "--json" in flags, path


def test_download_and_deletes_answer_json(
    app: typer.Typer, login: Login, iris_skops: Path, tmp_path: Path
) -> None:
    env = as_key(login)
    created = push_iris(app, login, iris_skops)

    saved = parsed(run(app, "download", "iris", "-o", str(tmp_path), "--json", env=env))
    assert saved == {
        "path": str(tmp_path / "iris-v1.skops"),
        "version": 1,
        "sha256": created["sha256"],
    }
    # A folder that does not exist yet, named with a trailing slash, is made.
    into_new = parsed(run(app, "download", "iris", "-o", f"{tmp_path}/models/", "--json", env=env))
    assert into_new["path"] == str(tmp_path / "models" / "iris-v1.skops")
    assert (tmp_path / "models" / "iris-v1.skops").read_bytes() == iris_skops.read_bytes()
    assert parsed(run(app, "models", "delete", "iris", "-y", "--json", env=env)) == {
        "archived": "iris"
    }
