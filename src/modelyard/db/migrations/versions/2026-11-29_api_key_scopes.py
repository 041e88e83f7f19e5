"""API key scopes and model limits; existing keys keep the powers they had

Before scopes a key could do all its user could: read, predict and write, and admin things if
the user is an admin. Existing keys get exactly those scopes, and no model limit.

Revision ID: 6d2b9f4e8a13
Revises: 3a6c8e0b2d47
Create Date: 2026-11-29 11:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "6d2b9f4e8a13"
down_revision: str | None = "3a6c8e0b2d47"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
USER_SCOPES = ["read", "predict", "write"]
ADMIN_SCOPES = [*USER_SCOPES, "admin"]


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("scopes", JSON_TYPE, nullable=True))
        batch_op.add_column(sa.Column("model_names", JSON_TYPE, nullable=True))
    keys = sa.table("api_keys", sa.column("scopes", JSON_TYPE), sa.column("user_id"))
    users = sa.table("users", sa.column("id"), sa.column("is_admin", sa.Boolean))
    admins = sa.select(users.c.id).where(users.c.is_admin.is_(True))
    op.execute(keys.update().where(keys.c.user_id.in_(admins)).values(scopes=ADMIN_SCOPES))
    op.execute(keys.update().where(keys.c.user_id.not_in(admins)).values(scopes=USER_SCOPES))
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.alter_column("scopes", existing_type=JSON_TYPE, nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("model_names")
        batch_op.drop_column("scopes")
