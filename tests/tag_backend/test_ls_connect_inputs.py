"""`tag-backend ls-connect`: inputs refused before any Label Studio call, with the setting to change.

The Label Studio side (project, storage, connection, pre-labels, idempotence) is tested against a
real Label Studio in tests/e2e/test_ls_connect.py.
"""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from tag_backend.cli import main
from tag_backend.ls.connect import ConnectRequest, LabelStudioSetupError, _is_blank, connect_project


@pytest.mark.parametrize("changes, expected", [
    ({"ls_url": ""}, "LABEL_STUDIO_URL"),
    ({"ls_url": "localhost:8080"}, "http://"),
    ({"api_key": ""}, "LABEL_STUDIO_API_KEY"),
    ({"images": None, "project_id": None}, "--images"),
    ({"images": "relative/dir"}, "absolute"),
])
def test_bad_requests_name_the_setting(changes, expected):
    base = {"ls_url": "http://127.0.0.1:1", "api_key": "t", "backend_url": "http://127.0.0.1:2", "images": "/imgs"}
    with pytest.raises(LabelStudioSetupError, match=expected):
        connect_project(ConnectRequest(**{**base, **changes}))


def test_cli_reads_the_label_studio_aliases_and_reports_unreachable_servers(monkeypatch, tmp_path):
    for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LABEL_STUDIO_HOST", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("LABEL_STUDIO_ACCESS_TOKEN", "token")
    result = CliRunner().invoke(main, ["ls-connect", "--images", str(tmp_path), "--timeout", "5"])
    assert result.exit_code == 1
    assert "cannot reach Label Studio at http://127.0.0.1:9" in result.output and "LABEL_STUDIO_URL" in result.output


def test_cli_without_a_token_says_where_to_get_one(monkeypatch, tmp_path):
    for name in ("LABEL_STUDIO_API_KEY", "LABEL_STUDIO_ACCESS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(main, ["ls-connect", "--url", "http://127.0.0.1:9", "--images", str(tmp_path)])
    assert result.exit_code == 1 and "Personal Access Token" in result.output


@pytest.mark.parametrize("config, blank", [
    ("", True), (None, True), ("<View></View>", True), ("<View>\n</View>", True), ("<View/>", True),
    ("<View><Header value='x'/></View>", False),
])
def test_blank_configs_are_a_new_projects(config, blank):
    assert _is_blank(config) is blank
