"""The `modelyard` command: the client's commands, plus those other distributions register.

A distribution adds commands through the `modelyard.commands` entry point group: each entry
point names a function that takes the root `typer.Typer` and registers commands on it (the
server adds serve, migrate, create-admin and gc this way).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

import typer
from typer.core import TyperGroup

from modelyard_client.errors import ConfigurationError, InvalidInput, ModelyardClientError

ENTRY_POINT_GROUP = "modelyard.commands"
EXIT_REFUSED = 1
EXIT_USAGE = 2


class _Root(TyperGroup):
    """Show expected failures as one line and an exit code, never a traceback."""

    def invoke(self, ctx: Any) -> Any:  # typer.Context is a subclass of what typer passes
        try:
            return super().invoke(ctx)
        except (ConfigurationError, InvalidInput) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_USAGE) from exc
        except ModelyardClientError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_REFUSED) from exc


def make_app() -> typer.Typer:
    """Build the root command with the client's commands."""
    from modelyard_client.cli import commands

    app = typer.Typer(
        cls=_Root,
        help="Modelyard: model registry and serving platform.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
    )
    commands.register(app)
    return app


def load_plugins(app: typer.Typer) -> list[str]:
    """Register the commands of every installed `modelyard.commands` entry point; return the
    names of those that loaded."""
    loaded = []
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            register = entry.load()
            register(app)
        except Exception as exc:  # a broken plugin must not take the client's commands down
            typer.echo(f"warning: commands of {entry.value} not loaded: {exc}", err=True)
            continue
        loaded.append(entry.name)
    return loaded


def main() -> None:
    """Run the `modelyard` command."""
    app = make_app()
    load_plugins(app)
    app(prog_name="modelyard")


if __name__ == "__main__":
    main()
