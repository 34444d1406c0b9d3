"""Twilio's REST API for the Twilio channels' outbound side (messages, call updates), never
blocking the event loop: the twilio library's async client, pointed at a configurable API base
URL so tests and staging can use a local Twilio stand-in.

Each call is one attempt. A refusal becomes `DeliveryFailed` carrying Twilio's error code
(63016: outside WhatsApp's 24-hour window), so whoever sends can tell the failures apart and
decide about retries: 429 and 5xx are retryable (with Twilio's `Retry-After`), a connection
refused is retryable and certainly not sent, a timeout or a dropped connection is retryable and
perhaps sent (`maybe_sent`), any other 4xx is final.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import AsyncIterator
from xml.sax.saxutils import escape

import aiohttp
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from service.model import AgentLine, DeliveryFailed

TWILIO_API = "https://api.twilio.com"
OUTSIDE_WINDOW = "63016"  # Twilio: freeform message outside the 24-hour customer-care window
# Twilio answers these when it is busy or down; the request was not taken and may be repeated.
THROTTLED_STATUSES = (429, 503)
MAX_RETRY_AFTER_S = 3600.0  # a Retry-After beyond this is read as this


class _Throttled(Exception):
    """Twilio answered 429 or 503; `retry_after_s` is its Retry-After, when it gave one."""

    def __init__(self, status: int, retry_after_s: float | None, code: str | None):
        super().__init__(f"Twilio answered {status}")
        self.status, self.retry_after_s, self.code = status, retry_after_s, code


class _RebasedHttpClient(AsyncTwilioHttpClient):
    def __init__(self, base_url: str, timeout: float):
        super().__init__(timeout=timeout)
        self._base_url = base_url.rstrip("/")

    async def request(self, method, url, params=None, data=None, headers=None, auth=None,
                      timeout=None, allow_redirects=False):
        if url.startswith(TWILIO_API):
            url = self._base_url + url[len(TWILIO_API):]
        if auth is not None:  # aiohttp deprecates BasicAuth objects: send the header itself
            credentials = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            headers = {**(headers or {}), "Authorization": f"Basic {credentials}"}
        # The library passes no timeout of its own: every request gets the client's.
        response = await super().request(method, url, params, data, headers, None,
                                         timeout or self.timeout, allow_redirects)
        if response.status_code in THROTTLED_STATUSES:  # the library drops the headers
            raise _Throttled(response.status_code, retry_after(response.headers),
                             _error_code(response.text))
        return response


def retry_after(headers) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date), capped; None without one."""
    raw = (headers or {}).get("Retry-After")
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(raw) - datetime.now(timezone.utc)).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _error_code(body: str) -> str | None:
    try:
        code = json.loads(body).get("code")
    except (ValueError, AttributeError):
        return None
    return str(code) if code is not None else None


class TwilioRest:
    """One account's REST client, shared by the Twilio channels; its session opens on first use."""

    def __init__(self, account_sid: str, auth_token: str, base_url: str = TWILIO_API,
                 timeout: float = 10):
        self._account_sid = account_sid or "AC" + "0" * 32
        self._auth_token = auth_token or "unset"
        self._base_url, self._timeout = base_url, timeout
        self._http: _RebasedHttpClient | None = None
        self._client: Client | None = None

    def _rest(self) -> Client:
        if self._client is None:  # inside the running loop: aiohttp sessions belong to one
            self._http = _RebasedHttpClient(self._base_url, self._timeout)
            self._client = Client(self._account_sid, self._auth_token, http_client=self._http)
        return self._client

    async def send_message(self, to: str, from_: str, body: str,
                           status_callback: str | None = None) -> str:
        """Create one outbound message; its MessageSid. Twilio posts its states to
        `status_callback`."""
        extra = {"status_callback": status_callback} if status_callback else {}
        async with _mapped_failures():
            message = await self._rest().messages.create_async(to=to, from_=from_, body=body,
                                                               **extra)
        return message.sid

    async def find_message(self, to: str, from_: str, body: str, since: float) -> str | None:
        """The MessageSid of the newest message with this body from `from_` to `to` created
        since `since` (listed by To, From and DateSent; Twilio lists newest first), or None."""
        day = datetime.fromtimestamp(since, timezone.utc) - timedelta(days=1)
        async with _mapped_failures():
            found = await self._rest().messages.list_async(
                to=to, from_=from_, date_sent_after=day.replace(hour=0, minute=0, second=0,
                                                                microsecond=0), limit=200)
        for message in found:
            created = message.date_created
            if message.body == body and (created is None or created.timestamp() >= since - 60):
                return message.sid
        return None

    async def bridge_call(self, call_sid: str, agent: AgentLine) -> None:
        """Take a queued call out of the queue and ring the agent who accepted it."""
        if agent.phone:
            target = f"<Number>{escape(agent.phone)}</Number>"
        else:
            target = f"<Client>{escape(agent.client_identity or f'agent-{agent.id}')}</Client>"
        twiml = f'<?xml version="1.0" encoding="UTF-8"?><Response><Dial>{target}</Dial></Response>'
        async with _mapped_failures():
            await self._rest().calls(call_sid).update_async(twiml=twiml)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


@contextlib.asynccontextmanager
async def _mapped_failures() -> AsyncIterator[None]:
    """Twilio's answers and network failures of one request as `DeliveryFailed`."""
    try:
        yield
    except Exception as exc:  # CancelledError is not an Exception: it passes untouched
        failure = _failure(exc)
        if failure is None:
            raise
        raise failure from exc


def _failure(exc: Exception) -> DeliveryFailed | None:
    if isinstance(exc, _Throttled):
        return DeliveryFailed("throttled" if exc.status == 429 else "unavailable",
                              f"Twilio is busy ({exc.status}); retrying", code=exc.code,
                              retryable=True, retry_after_s=exc.retry_after_s)
    if isinstance(exc, TwilioRestException):
        return _refused(exc)
    if isinstance(exc, aiohttp.ClientConnectorError):  # no connection: nothing was sent
        return DeliveryFailed("unreachable", f"Twilio could not be reached: {exc}",
                              retryable=True)
    if isinstance(exc, (aiohttp.ClientError, asyncio.TimeoutError, OSError)):
        return DeliveryFailed("no_answer", f"Twilio did not answer: {exc!r}", retryable=True,
                              maybe_sent=True)
    return None


# Twilio's permanent refusals an agent meets most, in words (others keep Twilio's message).
REFUSALS = {"21610": "the customer has unsubscribed from this number (replied STOP)",
            "21211": "the customer's number is not a valid phone number",
            "21614": "the customer's number cannot receive text messages",
            "21408": "texting that country is not enabled for this account"}


def _refused(exc: TwilioRestException) -> DeliveryFailed:
    code = str(exc.code) if exc.code is not None else None
    if code == OUTSIDE_WINDOW:
        return DeliveryFailed("outside_window", outside_window_message(), code=code)
    why = REFUSALS.get(code or "", exc.msg)
    return DeliveryFailed("refused", f"Twilio refused it ({code or exc.status}): {why}",
                          code=code, retryable=exc.status >= 500 or exc.status == 429)


def outside_window_message() -> str:
    return ("not sent: the customer last wrote more than 24 hours ago, and WhatsApp lets a "
            "business write freely only within 24 hours of the customer's last message "
            f"(Twilio error {OUTSIDE_WINDOW}); the customer has to write first")
