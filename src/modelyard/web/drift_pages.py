"""Setting and removing a version's drift reference from the drift page (the API's
`/api/v1/models/{model}/versions/{version}/reference`), through the API's service."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter
from starlette.responses import Response

from modelyard.auth.service import Caller
from modelyard.db.deps import SessionDep
from modelyard.drift import reference as drift_reference
from modelyard.drift import service as drift_service
from modelyard.errors import ModelyardError, Unprocessable
from modelyard.registry import service as registry_service
from modelyard.web.http import FormDep, UserPage, WebRoute, redirect, render

router = APIRouter(route_class=WebRoute, include_in_schema=False)


def _version_number(text: object) -> int:
    value = str(text or "").strip()
    if not value.isdecimal() or not 1 <= int(value) <= 2**31 - 1:
        raise Unprocessable("the version is a number: 1, 2, ...")
    return int(value)


def _back(model_id: object, number: int) -> Response:
    return redirect(f"/models/{model_id}/drift?{urlencode({'version': number})}")


@router.post("/models/{model_id}/drift/reference")
async def set_reference(model_id: str, page: UserPage, form: FormDep, db: SessionDep) -> Response:
    """Compute the version's reference from a file of the user's; a refusal is shown with the
    form again."""
    model = await registry_service.get_model(db, page.signed_in, model_id)
    path = str(form.get("path", "")).strip()
    state = page.state
    try:
        number = _version_number(form.get("version"))
        if not path:
            raise Unprocessable("choose a file of yours as the reference")
        await drift_service.set_reference_from_file(
            db,
            Caller(page.signed_in, None),
            model,
            number,
            path=path,
            store=state.store,
            tmp_dir=state.settings.data_dir / "tmp",
            limits=drift_reference.limits_of(state.settings),
            events=state.events,
        )
    except ModelyardError as exc:
        values = {"version": str(form.get("version", "")), "path": path}
        return render(
            page, "drift_reference.html", exc.status, model=model, error=exc.detail, values=values
        )
    return _back(model.id, number)


@router.post("/models/{model_id}/drift/reference/delete")
async def delete_reference(
    model_id: str, page: UserPage, form: FormDep, db: SessionDep
) -> Response:
    model = await registry_service.get_model(db, page.signed_in, model_id)
    number = _version_number(form.get("version"))
    await drift_service.delete_reference(db, model, number, events=page.state.events)
    return _back(model.id, number)
