"""The PostgreSQL test server: missing binaries skip locally but fail in CI."""

from __future__ import annotations

import pytest

import pg_server


@pytest.mark.parametrize("value", ["true", "1", "TRUE"])
def test_missing_postgres_fails_in_ci(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        pg_server._unavailable("PostgreSQL binaries not found")


@pytest.mark.parametrize("value", [None, "", "false"])
def test_missing_postgres_skips_elsewhere(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception):
        pg_server._unavailable("PostgreSQL binaries not found")
