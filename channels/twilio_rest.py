"""Twilio's REST API for the Twilio channels' outbound side (messages, call updates), never
blocking the event loop: the twilio library's async client, pointed at a configurable API base
URL so tests and staging can use a local Twilio stand-in.

Each call is one attempt. A refusal becomes `DeliveryFailed` carrying Twilio's error code
(63016: outside WhatsApp's 24-hour window), so whoever sends can tell the failures apart and
decide about retries.
"""

from __future__ import annotations

import asyncio
import base64
from xml.sax.saxutils import escape

import aiohttp
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from service.model import AgentLine, DeliveryFailed

TWILIO_API = "https://api.twilio.com"
OUTSIDE_WINDOW = "63016"  # Twilio: freeform message outside the 24-hour customer-care window


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
        return await super().request(method, url, params, data, headers, None, timeout,
                                     allow_redirects)


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

    async def send_message(self, to: str, from_: str, body: str) -> str:
        """Create one outbound message; its MessageSid."""
        try:
            message = await self._rest().messages.create_async(to=to, from_=from_, body=body)
        except TwilioRestException as exc:
            raise _refused(exc) from exc
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise DeliveryFailed("unreachable", f"Twilio could not be reached: {exc}",
                                 retryable=True) from exc
        return message.sid

    async def bridge_call(self, call_sid: str, agent: AgentLine) -> None:
        """Take a queued call out of the queue and ring the agent who accepted it."""
        if agent.phone:
            target = f"<Number>{escape(agent.phone)}</Number>"
        else:
            target = f"<Client>{escape(agent.client_identity or f'agent-{agent.id}')}</Client>"
        twiml = f'<?xml version="1.0" encoding="UTF-8"?><Response><Dial>{target}</Dial></Response>'
        try:
            await self._rest().calls(call_sid).update_async(twiml=twiml)
        except TwilioRestException as exc:
            raise _refused(exc) from exc
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise DeliveryFailed("unreachable", f"Twilio could not be reached: {exc}",
                                 retryable=True) from exc

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


def _refused(exc: TwilioRestException) -> DeliveryFailed:
    code = str(exc.code) if exc.code is not None else None
    if code == OUTSIDE_WINDOW:
        return DeliveryFailed("outside_window", outside_window_message(), code=code)
    return DeliveryFailed("refused", f"Twilio refused it ({code or exc.status}): {exc.msg}",
                          code=code, retryable=exc.status >= 500 or exc.status == 429)


def outside_window_message() -> str:
    return ("not sent: the customer last wrote more than 24 hours ago, and WhatsApp lets a "
            "business write freely only within 24 hours of the customer's last message "
            f"(Twilio error {OUTSIDE_WINDOW}); the customer has to write first")
