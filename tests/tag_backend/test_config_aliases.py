"""Settings under the names Label Studio's own ML backends use, and warnings about the environment."""

from __future__ import annotations

import logging

import pytest

from tag_backend.config import ALIASES, ENV_VARS, environment_warnings, settings_from_env
from tag_backend.errors import ConfigError

BY_NAME = {v.name: v for v in ENV_VARS}
SAMPLES = {
    "LABEL_STUDIO_HOST": ("http://ls.example:8080", "http://other:8080"),
    "LABEL_STUDIO_ACCESS_TOKEN": ("token-a", "token-b"),
    "LOG_LEVEL": ("DEBUG", "ERROR"),
    "WORKERS": ("2", "3"),
    "THREADS": ("8", "2"),
    "PORT": ("9191", "9292"),
    "MODEL_DIR": ("/data/models", "/srv/tag"),
    "ML_SERVER_BASIC_AUTH_USER": ("alice", "bob"),
    "ML_SERVER_BASIC_AUTH_PASS": ("s3cret-a", "s3cret-b"),
}


def test_every_alias_has_a_sample_and_a_real_target():
    assert set(SAMPLES) == set(ALIASES)
    assert all(target in BY_NAME for target in ALIASES.values())


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_alias_alone_sets_the_setting(alias):
    var = BY_NAME[ALIASES[alias]]
    value, _ = SAMPLES[alias]
    settings = settings_from_env({alias: value})
    assert getattr(settings, var.field) == var.parse(value)


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_our_name_wins_and_a_disagreement_is_a_warning(alias, caplog):
    name = ALIASES[alias]
    var = BY_NAME[name]
    theirs, ours = SAMPLES[alias]
    with caplog.at_level(logging.WARNING, logger="tag_backend.config"):
        settings = settings_from_env({alias: theirs, name: ours})
    assert getattr(settings, var.field) == var.parse(ours)
    warnings = [m for m in caplog.messages if alias in m and name in m]
    assert len(warnings) == 1
    if var.secret:
        assert ours not in warnings[0] and theirs not in warnings[0]


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_both_spellings_agreeing_is_silent(alias):
    value, _ = SAMPLES[alias]
    assert environment_warnings({alias: value, ALIASES[alias]: value}) == []


def test_a_bad_value_under_an_alias_names_the_alias():
    with pytest.raises(ConfigError, match=r"^WORKERS \(read as TAG_WORKERS\)"):
        settings_from_env({"WORKERS": "many"})


def test_unknown_tag_variables_are_reported_with_a_suggestion():
    warnings = environment_warnings({"TAG_PRESETT": "fast", "TAG_DEVICE": "cpu", "TAG_TEST_CACHE": "/tmp"})
    assert warnings == ["TAG_PRESETT is not a setting of this backend and is ignored (did you mean TAG_PRESET?)"]


def test_unknown_setting_warning_is_logged_at_start(caplog):
    with caplog.at_level(logging.WARNING, logger="tag_backend.config"):
        settings_from_env({"TAG_MAX_REGION": "5"})
    assert any("TAG_MAX_REGION" in m and "TAG_MAX_REGIONS" in m for m in caplog.messages)


def test_gunicorn_config_follows_the_settings(monkeypatch):
    import importlib

    monkeypatch.setenv("PORT", "9555")
    monkeypatch.setenv("THREADS", "6")
    monkeypatch.setenv("TAG_WORKERS", "1")
    import tag_backend.gunicorn_conf as conf

    conf = importlib.reload(conf)
    assert (conf.bind, conf.workers, conf.threads, conf.timeout) == ("0.0.0.0:9555", 1, 6, 0)
    assert not getattr(conf, "preload_app", False)
