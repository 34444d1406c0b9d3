from pathlib import Path

import pytest

from service.__main__ import main
from service.settings import SettingsError, settings_from_env


def test_defaults():
    settings = settings_from_env({})
    assert (settings.host, settings.port, settings.public_url) == \
        ("127.0.0.1", 8080, "http://127.0.0.1:8080")
    assert settings.database_url is None and settings.redis_url is None
    assert settings.rules_dir == Path("routing_rules")


def test_public_url_follows_host_and_port_unless_given():
    assert settings_from_env({"SWITCHBOARD_PORT": "9000"}).public_url == "http://127.0.0.1:9000"
    given = settings_from_env({"SWITCHBOARD_PUBLIC_URL": "https://sb.example.com/"})
    assert given.public_url == "https://sb.example.com"


def test_every_bad_variable_is_reported_at_once():
    with pytest.raises(SettingsError) as caught:
        settings_from_env({"SWITCHBOARD_PORT": "http", "DATABASE_URL": "mysql://db/x",
                           "REDIS_URL": "localhost:6379", "SWITCHBOARD_PUBLIC_URL": "example.com",
                           "SWITCHBOARD_LOG_FORMAT": "xml", "SWITCHBOARD_EVENT_LOOP": "trio"})
    assert caught.value.problems == [
        "SWITCHBOARD_PORT='http': must be a whole number",
        "SWITCHBOARD_PUBLIC_URL='example.com': must be an absolute http:// or https:// URL",
        "DATABASE_URL='mysql://db/x': must start with postgres:// or postgresql://",
        "REDIS_URL='localhost:6379': must start with redis:// or rediss:// or unix://",
        "SWITCHBOARD_LOG_FORMAT='xml': must be one of auto, json, console",
        "SWITCHBOARD_EVENT_LOOP='trio': must be one of auto, uvloop, asyncio",
    ]


def test_cli_prints_problems_without_a_traceback(monkeypatch, capsys):
    monkeypatch.setenv("SWITCHBOARD_PORT", "70000")
    assert main(["rules", "check", "routing_rules"]) == 2
    err = capsys.readouterr().err
    assert "SWITCHBOARD_PORT='70000': must be a TCP port between 1 and 65535" in err
    assert "Traceback" not in err



def test_chat_origins_are_normalised_and_bad_ones_named():
    parsed = settings_from_env({"SWITCHBOARD_CHAT_ORIGINS":
                                "https://Shop.Example.com, http://localhost:3000/"})
    assert parsed.chat_origins == ("https://shop.example.com", "http://localhost:3000")
    with pytest.raises(SettingsError) as caught:
        settings_from_env({"SWITCHBOARD_CHAT_ORIGINS": "https://shop.example.com/help,shop.io"})
    assert caught.value.problems == [
        "SWITCHBOARD_CHAT_ORIGINS='https://shop.example.com/help,shop.io': "
        "'https://shop.example.com/help' is not an origin like https://shop.example.com"]


def test_event_retention_is_days_from_zero():
    assert settings_from_env({}).event_retention_days == 0
    assert settings_from_env({"SWITCHBOARD_EVENT_RETENTION_DAYS": "400"}).event_retention_days \
        == 400
    for raw in ("-1", "a year", "40000"):
        with pytest.raises(SettingsError) as caught:
            settings_from_env({"SWITCHBOARD_EVENT_RETENTION_DAYS": raw})
        assert caught.value.problems[0].startswith(f"SWITCHBOARD_EVENT_RETENTION_DAYS={raw!r}")
