"""Frozen settings read from the environment; every bad variable is reported at once."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from service.infra.redis_url import parse_redis_url


class SettingsError(ValueError):
    """One or more environment variables are invalid; `problems` lists them all."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = "http://127.0.0.1:8080"
    database_url: str | None = None
    redis_url: str | None = None
    twilio_auth_token: str = ""
    twilio_account_sid: str = ""
    twilio_api_base_url: str = "https://api.twilio.com"
    twilio_timeout_s: float = 10.0  # one REST request; a send past it may have reached Twilio
    outbox_retry_base_s: float = 1.0  # the first retry's backoff; doubles, with jitter
    outbox_retry_max_s: float = 30.0  # also the longest wait after Twilio is back
    outbox_give_up_s: float = 3600.0  # an outbound message not taken in this long fails
    chat_identity_secret: str = ""
    chat_origins: tuple[str, ...] = ()  # empty: the widget may be embedded on any site
    offer_timeout_s: int = 20
    rules_dir: Path = Path("routing_rules")
    data_dir: Path = Path(".switchboard")
    log_format: str = "auto"
    log_level: str = "info"
    sms_idle_timeout_s: int = 1800
    max_body_bytes: int = 64 * 1024
    event_flush_interval_s: float = 0.2
    event_retention_days: int = 0  # 0: keep every month of the event log
    report_warm_days: int = 35  # the days whose report roll-ups are kept computed; 0: none
    report_warm_segments: tuple[str, ...] = ()  # customer attributes also warmed by segment
    event_loop: str = "auto"
    canary_check_s: float = 5.0  # how often each instance follows the canary and its guardrails
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"


ENV_VARS = {
    "SWITCHBOARD_HOST": "host",
    "SWITCHBOARD_PORT": "port",
    "SWITCHBOARD_PUBLIC_URL": "public_url",
    "DATABASE_URL": "database_url",
    "REDIS_URL": "redis_url",
    "TWILIO_AUTH_TOKEN": "twilio_auth_token",
    "TWILIO_ACCOUNT_SID": "twilio_account_sid",
    "TWILIO_API_BASE_URL": "twilio_api_base_url",
    "SWITCHBOARD_TWILIO_TIMEOUT_S": "twilio_timeout_s",
    "SWITCHBOARD_OUTBOX_RETRY_BASE_S": "outbox_retry_base_s",
    "SWITCHBOARD_OUTBOX_RETRY_MAX_S": "outbox_retry_max_s",
    "SWITCHBOARD_OUTBOX_GIVE_UP_S": "outbox_give_up_s",
    "SWITCHBOARD_CHAT_IDENTITY_SECRET": "chat_identity_secret",
    "SWITCHBOARD_CHAT_ORIGINS": "chat_origins",
    "SWITCHBOARD_OFFER_TIMEOUT_S": "offer_timeout_s",
    "SWITCHBOARD_RULES_DIR": "rules_dir",
    "SWITCHBOARD_DATA_DIR": "data_dir",
    "SWITCHBOARD_LOG_FORMAT": "log_format",
    "SWITCHBOARD_LOG_LEVEL": "log_level",
    "SWITCHBOARD_SMS_IDLE_TIMEOUT_S": "sms_idle_timeout_s",
    "SWITCHBOARD_EVENT_LOOP": "event_loop",
    "SWITCHBOARD_EVENT_RETENTION_DAYS": "event_retention_days",
    "SWITCHBOARD_REPORT_WARM_DAYS": "report_warm_days",
    "SWITCHBOARD_REPORT_WARM_SEGMENTS": "report_warm_segments",
    "SWITCHBOARD_CANARY_CHECK_S": "canary_check_s",
}


def _whole_number(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("must be a whole number") from None


def _port(raw: str) -> int:
    value = _whole_number(raw)
    if not 0 < value < 65536:
        raise ValueError("must be a TCP port between 1 and 65535")
    return value


def _positive_int(raw: str) -> int:
    value = _whole_number(raw)
    if value <= 0:
        raise ValueError("must be a positive whole number")
    return value


def _positive_seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("must be a number of seconds") from None
    if not 0 < value <= 7 * 86400:
        raise ValueError("must be more than 0 and at most 604800 seconds (7 days)")
    return value


def _retention_days(raw: str) -> int:
    value = _whole_number(raw)
    if not 0 <= value <= 36500:
        raise ValueError("must be a number of days from 0 (keep everything) to 36500")
    return value


def _warm_days(raw: str) -> int:
    value = _whole_number(raw)
    if not 0 <= value <= 3660:
        raise ValueError("must be a number of days from 0 (warm nothing) to 3660")
    return value


def _warm_segments(raw: str) -> tuple[str, ...]:
    from service.reporting import reports, rollups  # the report modules, only when set

    items = [item.strip() for item in raw.split(",") if item.strip()]
    names = []
    for item in items:
        try:
            names.append(reports.parse_segment_by(item))
        except reports.BadSegment:
            raise ValueError(f"{item!r} is not a customer attribute: list them as "
                             "customer.<name> (letters, digits, _ or -), comma-separated, "
                             "e.g. customer.tier,customer.region") from None
    if len(set(names)) > rollups.MAX_WARMED_ATTRIBUTES:
        raise ValueError(f"lists {len(set(names))} attributes; at most "
                         f"{rollups.MAX_WARMED_ATTRIBUTES} are warmed")
    return tuple(dict.fromkeys(names))


def _http_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an absolute http:// or https:// URL")
    return raw.rstrip("/")


def _url_with_scheme(*schemes: str):
    def parse(raw: str) -> str:
        if urlsplit(raw).scheme not in schemes:
            raise ValueError(f"must start with {' or '.join(s + '://' for s in schemes)}")
        return raw

    return parse


def _redis_url(raw: str) -> str:
    parse_redis_url(raw)  # one server, a cluster or Sentinel: see service/infra/redis_url.py
    return raw


def _origins(raw: str) -> tuple[str, ...]:
    origins = []
    for item in (part.strip() for part in raw.split(",")):
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.netloc or \
                parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{item!r} is not an origin like https://shop.example.com")
        origins.append(f"{parts.scheme}://{parts.netloc}".lower())
    return tuple(origins)


def _choice(*options: str):
    def parse(raw: str) -> str:
        if raw.lower() not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return raw.lower()

    return parse


def _directory(raw: str) -> Path:
    path = Path(raw)
    if path.exists() and not path.is_dir():
        raise ValueError("exists and is not a directory")
    return path


PARSERS = {
    "host": str,
    "port": _port,
    "public_url": _http_url,
    "database_url": _url_with_scheme("postgres", "postgresql"),
    "redis_url": _redis_url,
    "twilio_auth_token": str,
    "twilio_account_sid": str,
    "twilio_api_base_url": _http_url,
    "twilio_timeout_s": _positive_seconds,
    "outbox_retry_base_s": _positive_seconds,
    "outbox_retry_max_s": _positive_seconds,
    "outbox_give_up_s": _positive_seconds,
    "chat_identity_secret": str,
    "chat_origins": _origins,
    "offer_timeout_s": _positive_int,
    "rules_dir": _directory,
    "data_dir": _directory,
    "log_format": _choice("auto", "json", "console"),
    "log_level": _choice("debug", "info", "warning", "error"),
    "sms_idle_timeout_s": _positive_int,
    "event_loop": _choice("auto", "uvloop", "asyncio"),
    "event_retention_days": _retention_days,
    "report_warm_days": _warm_days,
    "report_warm_segments": _warm_segments,
    "canary_check_s": _positive_seconds,
}


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from the environment, collecting every problem before failing."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    problems: list[str] = []
    for var, attr in ENV_VARS.items():
        raw = environ.get(var)
        if raw is None or raw == "":
            continue
        try:
            values[attr] = PARSERS[attr](raw)
        except ValueError as exc:
            problems.append(f"{var}={raw!r}: {exc}")
    if problems:
        raise SettingsError(problems)
    if "public_url" not in values:
        host = values.get("host", Settings.host)
        values["public_url"] = f"http://{host}:{values.get('port', Settings.port)}"
    return Settings(**values)
