"""Whether a signed download link still holds: its owner, its version, its object's content."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.artifacts.signing import LinkTarget
from modelyard.db.tables import ModelVersion, RegisteredModel, User
from modelyard.errors import ModelyardError
from modelyard.files.service import area
from modelyard.registry.schemas import ModelStatus, Stage


class LinkGone(ModelyardError):
    """Whatever no longer holds, one answer: a link reveals nothing about why it died."""

    status, title, type = 410, "Gone", "download-link-gone"

    def __init__(self) -> None:
        super().__init__("what this download link pointed to is no longer available")


async def check_link(db: AsyncSession, target: LinkTarget) -> None:
    """Accept a (signature-checked) link only while its owner is active and, for a model
    artifact, while its version is the same, not archived, in a model not archived. The content
    itself is checked when the object is opened (`ArtifactStore.open(sha256=...)`).

    Raises:
        LinkGone: any of these no longer holds.
    """
    owner = await db.get(User, target.owner_id)
    if owner is None or not owner.is_active:
        raise LinkGone
    if target.version_id is None:
        # A file link reaches only its owner's area (the signature already binds the two).
        if not target.key.startswith(area(target.owner_id)):
            raise LinkGone
        return
    row = (
        await db.execute(
            select(ModelVersion.storage_key, ModelVersion.sha256, ModelVersion.stage)
            .add_columns(RegisteredModel.owner_id, RegisteredModel.status)
            .join(RegisteredModel, RegisteredModel.id == ModelVersion.model_id)
            .where(ModelVersion.id == target.version_id)
        )
    ).one_or_none()
    if (
        row is None
        or row.storage_key != target.key
        or row.sha256 != target.sha256
        or row.owner_id != target.owner_id
        or row.stage == Stage.ARCHIVED
        or row.status == ModelStatus.ARCHIVED
    ):
        raise LinkGone
