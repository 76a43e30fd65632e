"""A write transaction of the store (its own module so the SQL helpers can take one without
importing the store)."""
from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .schema import Meta


class Txn:
    """A write transaction; :meth:`seq` bumps ``db_version`` once, on first content change."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._seq: int | None = None

    def seq(self) -> int:
        """The new ``db_version`` of this transaction (bumped and row-locked on first call)."""
        if self._seq is None:
            self.session.execute(
                update(Meta).where(Meta.id == 1).values(db_version=Meta.db_version + 1)
            )
            self._seq = int(self.session.scalar(select(Meta.db_version).where(Meta.id == 1)))
        return self._seq

    @property
    def changed(self) -> bool:
        return self._seq is not None
