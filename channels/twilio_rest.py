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
import re
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any, AsyncIterator, Mapping
from xml.sax.saxutils import escape

import aiohttp
import yarl
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from service.model import AgentLine, AttachmentBody, AttachmentUnavailable, DeliveryFailed

TWILIO_API = "https://api.twilio.com"
OUTSIDE_WINDOW = "63016"  # Twilio: freeform message outside the 24-hour customer-care window
# Twilio answers these when it is busy or down; the request was not taken and may be repeated.
THROTTLED_STATUSES = (429, 503)
MAX_RETRY_AFTER_S = 3600.0  # a Retry-After beyond this is read as this
MAX_MEDIA_BYTES = 5 * 1024 * 1024  # Twilio's own cap on one inbound MMS/WhatsApp media file
MEDIA_CHUNK_BYTES = 64 * 1024
# A Media resource of one of the account's messages, the only URL shape we ever fetch.
MEDIA_PATH = re.compile(r"/2010-04-01/Accounts/(AC[0-9a-fA-F]{32})/Messages/"
                        r"((?:MM|SM)[0-9a-fA-F]{32})/Media/(ME[0-9a-fA-F]{32})")


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
        self._media_account = account_sid or None  # media of other accounts is refused
        self._media: aiohttp.ClientSession | None = None
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
        return await self._create_message(to, from_, status_callback, body=body)

    async def send_media(self, to: str, from_: str, media_url: str,
                         status_callback: str | None = None) -> str:
        """Create one message carrying a file Twilio fetches from `media_url` (MediaUrl, no
        Body); its MessageSid."""
        return await self._create_message(to, from_, status_callback, media_url=[media_url])

    async def send_content(self, to: str, from_: str, content_sid: str,
                           variables: Mapping[str, str],
                           status_callback: str | None = None) -> str:
        """Create one message from an approved Content template (`ContentSid` and its
        `ContentVariables` as a JSON string, no `Body`); its MessageSid."""
        return await self._create_message(to, from_, status_callback, content_sid=content_sid,
                                          content_variables=json.dumps(dict(variables)))

    async def _create_message(self, to: str, from_: str, status_callback: str | None,
                              **fields: Any) -> str:
        extra = {"status_callback": status_callback} if status_callback else {}
        async with _mapped_failures():
            message = await self._rest().messages.create_async(to=to, from_=from_, **fields,
                                                               **extra)
        return message.sid

    async def conference_call(self, call_sid: str, conference: str, wait_url: str) -> None:
        """Take a queued call out of the queue into the contact's conference, where it hears
        `wait_url` until an agent joins; the conference ends when the caller leaves."""
        await _calling(self._rest().calls(call_sid).update_async(
            twiml=conference_twiml(conference, wait_url)))

    async def place_call(self, to: str, from_: str, twiml: str, status_callback: str) -> str:
        """Call a customer (Calls resource) who then hears `twiml`; Twilio posts the call's
        progress (answered, completed, or why it was not answered) to `status_callback`.
        The new call's CallSid."""
        call = await _calling(self._rest().calls.create_async(
            to=to, from_=from_, twiml=twiml, status_callback=status_callback,
            status_callback_method="POST", status_callback_event=["answered", "completed"]))
        return call.sid

    async def add_participant(self, conference: str, from_: str, agent: AgentLine,
                              status_url: str | None = None) -> None:
        """Dial an agent into the conference (Conference Participants resource); Twilio
        reports their joining and leaving to `status_url` when given."""
        target = agent.phone or f"client:{agent.client_identity or f'agent-{agent.id}'}"
        callback = {"conference_status_callback": status_url,
                    "conference_status_callback_method": "POST",
                    "conference_status_callback_event": ["join", "leave"]} if status_url else {}
        await _calling(self._rest().conferences(conference).participants.create_async(
            from_=from_, to=target, label=agent_label(agent.id), beep="false",
            start_conference_on_enter=True, end_conference_on_exit=False, **callback))

    async def hold_customer(self, conference_sid: str, hold_url: str | None) -> None:
        """Put the caller on hold with `hold_url`'s TwiML looping, or (None) take them off."""
        fields = {"hold": True, "hold_url": hold_url, "hold_method": "POST"} if hold_url \
            else {"hold": False}
        await _calling(self._rest().conferences(conference_sid).participants(
            CUSTOMER_LABEL).update_async(**fields))

    async def remove_participant(self, conference_sid: str, label: str) -> None:
        """Drop one participant (an agent's leg) from the conference."""
        await _calling(self._rest().conferences(conference_sid).participants(
            label).delete_async())

    async def connected_labels(self, conference_sid: str) -> set[str]:
        """The labels of the conference's participants who are in it now (answered)."""
        found = await _calling(self._rest().conferences(conference_sid).participants.list_async(
            limit=50))
        return {p.label for p in found if p.label and p.status == "connected"}

    async def caller_in_conference(self, conference_sid: str) -> bool:
        """Whether the caller is still a participant of the conference (not hung up)."""
        try:
            found = await _calling(self._rest().conferences(conference_sid).participants(
                CUSTOMER_LABEL).fetch_async())
        except DeliveryFailed as exc:
            if exc.code == "20404" or "(404)" in str(exc):
                return False
            raise
        return found.status not in ("complete", "failed")

    async def redirect_call(self, call_sid: str, url: str) -> None:
        """Take a live call to the TwiML at `url` (it leaves its conference)."""
        await _calling(self._rest().calls(call_sid).update_async(url=url, method="POST"))

    async def conference_sid(self, conference: str) -> str:
        """The SID of the contact's conference in progress (participants are changed by it)."""
        found = await _calling(self._rest().conferences.list_async(
            friendly_name=conference, status="in-progress", limit=1))
        if not found:
            raise DeliveryFailed("refused", f"no conference {conference} in progress")
        return found[0].sid

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

    def is_media_url(self, url: str) -> bool:
        """Whether `url` is a Media resource of our account on the configured API host (the
        only media we fetch with the account's credentials: anything else could be a request
        forgery aimed at another host)."""
        try:
            parsed, base = yarl.URL(url), yarl.URL(self._base_url)
        except (ValueError, TypeError):
            return False
        if (parsed.scheme, parsed.host, parsed.port) != (base.scheme, base.host, base.port) \
                or parsed.user or parsed.password or parsed.query_string or parsed.fragment:
            return False
        path = parsed.path.removeprefix(base.path.rstrip("/"))
        found = MEDIA_PATH.fullmatch(path)
        return found is not None and self._media_account in (None, found.group(1))

    async def fetch_media(self, url: str) -> AttachmentBody:
        """The bytes of one Media resource (basic auth; Twilio may redirect to its file host,
        which never gets the credentials), at most MAX_MEDIA_BYTES; AttachmentUnavailable
        naming why not."""
        if not self.is_media_url(url):
            raise AttachmentUnavailable("unsupported", "not a media URL of this Twilio account")
        try:  # aiohttp drops the credentials when a redirect leaves the API's origin
            async with self._media_session().get(url, headers=self._basic_auth(),
                                                 max_redirects=3) as response:
                if response.status == 404:
                    raise AttachmentUnavailable("gone", "Twilio no longer has this file (404)")
                if response.status != 200:
                    raise AttachmentUnavailable(
                        "unavailable", f"Twilio answered {response.status} for the file")
                if (response.content_length or 0) > MAX_MEDIA_BYTES:
                    raise _too_large()
                data = bytearray()
                async for chunk in response.content.iter_chunked(MEDIA_CHUNK_BYTES):
                    data += chunk
                    if len(data) > MAX_MEDIA_BYTES:
                        raise _too_large()
                return AttachmentBody(response.content_type or "application/octet-stream",
                                      bytes(data))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise AttachmentUnavailable(
                "unavailable", f"Twilio did not hand over the file: {exc!r}") from exc

    async def delete_media(self, url: str) -> None:
        """Delete one Media resource (an erasure); already gone (404) is done. Failures are
        retryable DeliveryFailed: deleting twice does no harm, so nothing is looked up."""
        if not self.is_media_url(url):
            raise DeliveryFailed("refused", "not a media URL of this Twilio account")
        try:
            async with self._media_session().delete(
                    url if url.endswith(".json") else f"{url}.json",
                    headers=self._basic_auth()) as response:
                if response.status in (200, 204, 404):
                    return
                failure = DeliveryFailed(
                    "refused", f"Twilio answered {response.status} to the media delete",
                    code=_error_code(await response.text()),
                    retryable=response.status >= 500 or response.status == 429,
                    retry_after_s=retry_after(response.headers))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise DeliveryFailed("no_answer", f"Twilio did not answer: {exc!r}",
                                 retryable=True) from exc
        raise failure

    def _media_session(self) -> aiohttp.ClientSession:
        if self._media is None:  # inside the running loop: aiohttp sessions belong to one
            self._media = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
        return self._media

    def _basic_auth(self) -> dict[str, str]:
        credentials = base64.b64encode(f"{self._account_sid}:{self._auth_token}".encode())
        return {"Authorization": f"Basic {credentials.decode()}"}

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self._media is not None:
            await self._media.close()


def _too_large() -> AttachmentUnavailable:
    return AttachmentUnavailable("too_large", f"the file is larger than "
                                 f"{MAX_MEDIA_BYTES // (1024 * 1024)} MB")


CUSTOMER_LABEL = "customer"  # the caller's participant label in the contact's conference


def conference_twiml(conference: str, wait_url: str) -> str:
    """The customer's leg into the contact's conference: `wait_url` until an agent is in,
    and the conference ends when the customer leaves."""
    return ('<?xml version="1.0" encoding="UTF-8"?><Response><Dial>'
            f'<Conference participantLabel="{CUSTOMER_LABEL}" startConferenceOnEnter="false"'
            f' endConferenceOnExit="true" beep="false" waitUrl="{escape(wait_url)}"'
            f' waitMethod="POST">{escape(conference)}</Conference></Dial></Response>')


def agent_label(agent_id: str) -> str:
    """An agent's participant label: Twilio changes and removes participants by label too."""
    return f"agent-{agent_id}"


async def _calling(request):
    """One REST call, its failures as DeliveryFailed."""
    async with _mapped_failures():
        return await request


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
            "21408": "texting that country is not enabled for this account",
            "21655": "the template's ContentSid is not one of this account's (check "
                     "replies.yaml `templates`)",
            "21656": "the template's variables do not match its approved text",
            "63027": "the template is not approved for this sender or language"}


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
