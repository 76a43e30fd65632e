"""Alembic environment of the concept store, run by ``Store`` through ``migrate_to_head``.

``Store`` passes its connection in ``config.attributes["connection"]``; there is no alembic.ini
and no URL here, so migrations always act on the database the store opened.
"""
from __future__ import annotations

from alembic import context

from database_tools.migrate import STORE_MIGRATIONS, run_env
from database_tools.schema import Base

run_env(context, Base.metadata, STORE_MIGRATIONS)
