"""predictions.warning: why a result is less reliable without being referred (predict.detail_warning)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # server_default: rows written before this revision had no warning ("")
    op.add_column("predictions", sa.Column("warning", sa.Text, nullable=False, server_default=""))


def downgrade() -> None:
    op.drop_column("predictions", "warning")
