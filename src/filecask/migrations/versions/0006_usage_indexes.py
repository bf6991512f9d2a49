"""What a user keeps alive is what a user pays for: indexes for the per-user figures.

A user's usage now counts the entries of the bundles they hold and the reservations of
their unfinished resumable uploads, and both are looked up by user in every quota check
(`bundle_holders.user_id`, `uploads.user_id`; neither was indexed: the unique constraint of
`bundle_holders` leads with `bundle_id`). Indexes only: no row changes, and the upgrade is
as quick as building them.

Revision ID: 0006
Revises: 0005
Create Date: 2027-02-01
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_bundle_holders_user_id", "bundle_holders", ["user_id"])
    op.create_index("ix_uploads_user_id", "uploads", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_uploads_user_id", table_name="uploads")
    op.drop_index("ix_bundle_holders_user_id", table_name="bundle_holders")
