"""MkDocs hooks: the pages generated from the code, so that they cannot drift from it.

- `operations/configuration.md`: its `<!-- settings -->` marker becomes a table of every
  `Settings` field of `src/modelyard/config.py`, read from the source (names, defaults and the
  docstring under each field).
- `reference/http.md` and `reference/openapi.json`: the OpenAPI document of
  `modelyard.app.create_app(...)`, made by the Python that has modelyard installed
  (`$MODELYARD_DOCS_PYTHON`, else the interpreter running MkDocs), rendered as Markdown.
- `client.md`: the client package's own README (`client/README.md`).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
CONFIG_PY = ROOT / "src" / "modelyard" / "config.py"
CLIENT_README = ROOT / "client" / "README.md"
SETTINGS_MARKER = "<!-- settings -->"
HTTP_METHODS = ("get", "put", "post", "patch", "delete", "head", "options")

OPENAPI_SCRIPT = """
import json, pathlib, sys, tempfile
from modelyard.app import create_app
from modelyard.config import Settings
with tempfile.TemporaryDirectory() as folder:
    document = create_app(Settings(data_dir=pathlib.Path(folder))).openapi()
json.dump(document, sys.stdout)
"""


# --- configuration ---------------------------------------------------------------------------


def _default(value: ast.expr | None, source: str) -> str:
    """The default of a field as written in the source, evaluated when it is plain arithmetic."""
    if value is None:
        return "required"
    if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "Field":
        for keyword in value.keywords:
            if keyword.arg == "default":
                return _default(keyword.value, source)
            if keyword.arg == "default_factory":
                factory = ast.get_source_segment(source, keyword.value) or ""
                return f"`{factory.removeprefix('lambda: ')}`"
        return "required"
    text = ast.get_source_segment(source, value) or ""
    if match := re.fullmatch(r'Path\((["\'])(.*)\1\)', text):
        return f"`{match.group(2)}`"
    if match := re.fullmatch(r"[A-Z]\w*\.([A-Z_]+)", text):  # an enum member
        return f"`{match.group(1).lower()}`"
    try:
        evaluated = eval(compile(ast.Expression(value), "config.py", "eval"), {"__builtins__": {}})  # noqa: S307 - literals and arithmetic of our own source
    except Exception:
        return f"`{text}`"
    if evaluated is None:
        return "unset"
    if isinstance(evaluated, bool):
        return f"`{str(evaluated).lower()}`"
    if isinstance(evaluated, int) and evaluated >= 1024 and text.replace("_", "") != str(evaluated):
        return f"`{evaluated}` ({text.replace('**', '^')})"
    if isinstance(evaluated, list | str) and not evaluated:
        return "empty"
    return f"`{evaluated}`"


def settings_fields() -> list[tuple[str, str, str]]:
    """(variable, default, description) of every field of `Settings`, in source order."""
    source = CONFIG_PY.read_text()
    tree = ast.parse(source)
    [settings] = [
        node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Settings"
    ]
    fields = []
    body = settings.body
    for index, node in enumerate(body):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        name = node.target.id
        if name == "model_config":
            continue
        docstring = ""
        following = body[index + 1] if index + 1 < len(body) else None
        if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            docstring = " ".join(str(following.value.value).split())
        if not docstring:
            raise ValueError(f"Settings.{name} has no docstring: document it in config.py")
        fields.append((f"MODELYARD_{name.upper()}", _default(node.value, source), docstring))
    return fields


def settings_table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for variable, default, description in settings_fields():
        rows.append(f"| `{variable}` | {default} | {_cell(description)} |")
    return "\n".join(rows)


# --- the HTTP reference ----------------------------------------------------------------------


def openapi_document() -> dict[str, Any]:
    python = os.environ.get("MODELYARD_DOCS_PYTHON") or sys.executable
    result = subprocess.run(  # noqa: S603 - our own interpreter and script
        [python, "-c", OPENAPI_SCRIPT],
        capture_output=True,
        text=True,
        check=False,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "client" / "src")]),
        },
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"could not make the OpenAPI document with {python} (set MODELYARD_DOCS_PYTHON to a "
            f"Python that has modelyard's dependencies):\n{result.stderr[-2000:]}"
        )
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def _cell(text: object) -> str:
    return " ".join(str(text or "").split()).replace("|", "\\|")


def _schema_name(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[`{name}`](#{_slug(name)})"
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return " or ".join(_schema_name(part) for part in schema[key])
    if schema.get("type") == "array":
        return f"array of {_schema_name(schema.get('items', {}))}"
    return f"`{schema.get('type', 'any')}`"


def _slug(name: str) -> str:
    return "schema-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def http_reference(document: dict[str, Any]) -> str:
    out = [
        "# HTTP reference",
        "",
        f"Generated from the OpenAPI document of {document['info']['title']} "
        f"{document['info']['version']} (OpenAPI {document['openapi']}) when this site was built: "
        "[openapi.json](openapi.json). A running server serves the same document at "
        "`/openapi.json` and renders it at `/docs`. The conventions every route follows are in "
        "[How the API behaves](../architecture/protocol.md).",
        "",
    ]
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, item in document["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                operation = item[method]
                tag = (operation.get("tags") or ["other"])[0]
                by_tag.setdefault(tag, []).append((method, path, operation))
    for tag, operations in by_tag.items():
        out += [f"## {tag}", ""]
        for method, path, operation in operations:
            out += [f"### `{method.upper()} {path}`", ""]
            if operation.get("summary"):
                out += [f"**{operation['summary']}**", ""]
            if operation.get("description"):
                out += [operation["description"].strip(), ""]
            parameters = operation.get("parameters", [])
            if parameters:
                out += [
                    "| parameter | in | required | type | description |",
                    "|---|---|---|---|---|",
                ]
                for parameter in parameters:
                    out.append(
                        f"| `{parameter['name']}` | {parameter['in']} | "
                        f"{'yes' if parameter.get('required') else 'no'} | "
                        f"{_schema_name(parameter.get('schema', {}))} | "
                        f"{_cell(parameter.get('description'))} |"
                    )
                out.append("")
            body = operation.get("requestBody")
            if body:
                for media, content in body.get("content", {}).items():
                    out += [
                        f"Request body (`{media}`): {_schema_name(content.get('schema', {}))}",
                        "",
                    ]
            out += ["| status | description | body |", "|---|---|---|"]
            for status, response in operation.get("responses", {}).items():
                schemas = [
                    f"`{media}` {_schema_name(content.get('schema', {}))}"
                    for media, content in response.get("content", {}).items()
                ]
                out.append(
                    f"| {status} | {_cell(response.get('description'))} | {', '.join(schemas)} |"
                )
            out.append("")
    out += ["## Schemas", ""]
    for name, schema in document.get("components", {}).get("schemas", {}).items():
        out += [f"### {name} {{: #{_slug(name)} }}", ""]
        if schema.get("description"):
            out += [schema["description"].strip(), ""]
        properties = schema.get("properties", {})
        if properties:
            required = set(schema.get("required", []))
            out += ["| field | type | required | description |", "|---|---|---|---|"]
            for field, spec in properties.items():
                out.append(
                    f"| `{field}` | {_schema_name(spec)} | {'yes' if field in required else 'no'} "
                    f"| {_cell(spec.get('description'))} |"
                )
            out.append("")
        elif "enum" in schema:
            out += ["One of " + ", ".join(f"`{value}`" for value in schema["enum"]) + ".", ""]
    return "\n".join(out) + "\n"


# --- the client's README ---------------------------------------------------------------------


def client_page() -> str:
    """client/README.md with its links to the repository turned into links between pages."""
    text = CLIENT_README.read_text()
    text = text.replace("](../docs/", "](")
    return text.replace("](../README.md)", "](index.md)")


# --- MkDocs events ---------------------------------------------------------------------------

_openapi: dict[str, Any] = {}


def on_files(files: Files, config: Any) -> Files:
    _openapi.clear()
    _openapi.update(openapi_document())
    files.append(File.generated(config, "reference/http.md", content=http_reference(_openapi)))
    files.append(
        File.generated(config, "reference/openapi.json", content=json.dumps(_openapi, indent=1))
    )
    files.append(File.generated(config, "client.md", content=client_page()))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    if page.file.src_uri == "operations/configuration.md":
        if SETTINGS_MARKER not in markdown:
            raise ValueError(f"operations/configuration.md lost its {SETTINGS_MARKER} marker")
        markdown = markdown.replace(SETTINGS_MARKER, settings_table())
    return markdown
