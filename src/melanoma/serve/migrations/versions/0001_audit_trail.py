"""audit trail: predictions and reviews

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("case_ref", sa.String(200)),
        sa.Column("patient_ref", sa.String(200)),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(100), nullable=False),
        sa.Column("model_sha256", sa.String(64), nullable=False),
        sa.Column("backend", sa.String(16), nullable=False),
        sa.Column("probabilities", sa.JSON, nullable=False),
        sa.Column("prediction", sa.String(100), nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("melanoma_probability", sa.Float),
        sa.Column("alert_threshold", sa.Float),
        sa.Column("alert", sa.Boolean, nullable=False),
        sa.Column("refer", sa.Boolean, nullable=False),
        sa.Column("refer_reason", sa.Text, nullable=False),
        sa.Column("image_file", sa.String(200)),
        sa.Column("review_decision", sa.String(16)),
        sa.Column("final_diagnosis", sa.String(100)),
        sa.Column("reviewed_at", sa.DateTime(timezone=True)),
    )
    for column in ("created_at", "image_sha256", "case_ref", "model_sha256", "melanoma_probability", "alert",
                   "review_decision"):
        op.create_index(f"ix_predictions_{column}", "predictions", [column])
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("prediction_id", sa.Integer, sa.ForeignKey("predictions.id"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("final_diagnosis", sa.String(100)),
        sa.Column("reviewer", sa.String(200)),
        sa.Column("note", sa.Text),
    )
    op.create_index("ix_reviews_prediction_id", "reviews", ["prediction_id"])


def downgrade() -> None:
    op.drop_table("reviews")
    op.drop_table("predictions")
