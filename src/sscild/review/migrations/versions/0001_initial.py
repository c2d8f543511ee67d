"""Initial schema: readers, assignments, answers.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "readers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime, nullable=False))
    op.create_table(
        "assignments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("reader_id", sa.Integer, sa.ForeignKey("readers.id"), nullable=False, index=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("case_id", sa.String(32), nullable=False),
        sa.Column("replicate", sa.Integer, nullable=False),
        sa.UniqueConstraint("reader_id", "position"))
    op.create_table(
        "answers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("assignment_id", sa.Integer, sa.ForeignKey("assignments.id"), nullable=False, index=True),
        sa.Column("reader_id", sa.Integer, sa.ForeignKey("readers.id"), nullable=False, index=True),
        sa.Column("level", sa.String(4), nullable=False),
        sa.Column("tot", sa.Integer, nullable=False),
        sa.Column("gg", sa.Integer, nullable=False),
        sa.Column("ret", sa.Integer, nullable=False),
        sa.Column("misplaced", sa.Boolean, nullable=False),
        sa.Column("corrected_offset", sa.Integer),
        sa.Column("likert_tot", sa.Integer),
        sa.Column("likert_gg", sa.Integer),
        sa.Column("likert_ret", sa.Integer),
        sa.Column("comment", sa.Text, nullable=False),
        sa.Column("seconds", sa.Float),
        sa.Column("answered_at", sa.DateTime, nullable=False),
        sa.Column("n_edits", sa.Integer, nullable=False),
        sa.UniqueConstraint("assignment_id", "level"))


def downgrade() -> None:
    op.drop_table("answers")
    op.drop_table("assignments")
    op.drop_table("readers")
