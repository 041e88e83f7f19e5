"""Add users.credentials_version; store emails NFKC-normalised and case-folded

Revision ID: 5b1e7f3c9a20
Revises: 0974ae16da7b
Create Date: 2026-11-29 07:00:00
"""

import unicodedata
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5b1e7f3c9a20"
down_revision: str | None = "0974ae16da7b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _normalise(email: str) -> str:
    # As modelyard.auth.service.normalise_email at this revision.
    return unicodedata.normalize("NFKC", email.strip()).casefold()


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column(
                "credentials_version", sa.Integer(), server_default=sa.text("0"), nullable=False
            )
        )
    # Emails were stored lower-cased; store them as they are looked up now. An address whose
    # normal form another account already holds keeps its old spelling (its owner can still
    # be told apart by an administrator; new registrations of that form are refused).
    users = sa.table("users", sa.column("id", sa.Uuid()), sa.column("email", sa.String(320)))
    conn = op.get_bind()
    rows = conn.execute(sa.select(users.c.id, users.c.email)).all()
    taken = {email for _, email in rows}
    for user_id, email in rows:
        normal = _normalise(email)
        if normal != email and normal not in taken:
            conn.execute(users.update().where(users.c.id == user_id).values(email=normal))
            taken.add(normal)


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("credentials_version")
