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
        "REDIS_URL='localhost:6379': must start with redis:// or rediss:// or unix:// or "
        "redis+cluster:// or rediss+cluster:// or redis+sentinel:// or rediss+sentinel://",
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


def test_report_warm_days_are_days_from_zero():
    assert settings_from_env({}).report_warm_days == 35
    assert settings_from_env({"SWITCHBOARD_REPORT_WARM_DAYS": "0"}).report_warm_days == 0
    assert settings_from_env({"SWITCHBOARD_REPORT_WARM_DAYS": "90"}).report_warm_days == 90
    for raw in ("-1", "a month", "4000", "3.5"):
        with pytest.raises(SettingsError) as caught:
            settings_from_env({"SWITCHBOARD_REPORT_WARM_DAYS": raw})
        assert caught.value.problems[0].startswith(f"SWITCHBOARD_REPORT_WARM_DAYS={raw!r}: ")


def test_redis_url_names_one_server_a_cluster_or_sentinel():
    from service.infra.redis_url import parse_redis_url

    cluster = parse_redis_url("redis+cluster://:s3cret@10.0.0.1:7000,10.0.0.2")
    assert (cluster.shape, cluster.nodes, cluster.password) == \
        ("cluster", (("10.0.0.1", 7000), ("10.0.0.2", 6379)), "s3cret")
    sentinel = parse_redis_url("rediss+sentinel://a:26380,b/main/2?sentinel_password=pw")
    assert (sentinel.shape, sentinel.nodes, sentinel.master, sentinel.db, sentinel.tls,
            sentinel.sentinel_password) == \
        ("sentinel", (("a", 26380), ("b", 26379)), "main", 2, True, "pw")
    assert parse_redis_url("redis://localhost:6379/0").shape == "single"


def test_bad_cluster_and_sentinel_urls_are_named():
    with pytest.raises(SettingsError) as caught:
        settings_from_env({"REDIS_URL": "redis+sentinel://127.0.0.1:26379"})
    assert caught.value.problems == [
        "REDIS_URL='redis+sentinel://127.0.0.1:26379': name the primary: "
        "redis+sentinel://host:26379/<master name>/<db>"]
    for bad, message in [("redis+cluster://h:7000/3", "a cluster has only database 0"),
                         ("redis+cluster://h:99999", "port must be between 1 and 65535"),
                         ("redis+sentinel://h/main/x", "database 'x' is not a number")]:
        with pytest.raises(SettingsError, match=message):
            settings_from_env({"REDIS_URL": bad})


def test_outbox_timings_are_seconds_and_bad_ones_named():
    settings = settings_from_env({"SWITCHBOARD_TWILIO_TIMEOUT_S": "2.5",
                                  "SWITCHBOARD_OUTBOX_RETRY_BASE_S": "0.5",
                                  "SWITCHBOARD_OUTBOX_RETRY_MAX_S": "60",
                                  "SWITCHBOARD_OUTBOX_GIVE_UP_S": "7200"})
    assert (settings.twilio_timeout_s, settings.outbox_retry_base_s,
            settings.outbox_retry_max_s, settings.outbox_give_up_s) == (2.5, 0.5, 60.0, 7200.0)
    defaults = settings_from_env({})
    assert (defaults.twilio_timeout_s, defaults.outbox_retry_max_s) == (10.0, 30.0)
    with pytest.raises(SettingsError) as caught:
        settings_from_env({"SWITCHBOARD_TWILIO_TIMEOUT_S": "soon",
                           "SWITCHBOARD_OUTBOX_GIVE_UP_S": "0"})
    assert caught.value.problems == [
        "SWITCHBOARD_TWILIO_TIMEOUT_S='soon': must be a number of seconds",
        "SWITCHBOARD_OUTBOX_GIVE_UP_S='0': must be more than 0 and at most 604800 seconds "
        "(7 days)"]
