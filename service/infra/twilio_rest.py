"""Outbound Twilio REST calls (agent replies by SMS, bridging calls to agents), never blocking
the event loop: the twilio library's async client, pointed at a configurable API base URL so
tests and staging can use a local Twilio stand-in."""

from __future__ import annotations

import base64
from xml.sax.saxutils import escape

from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

TWILIO_API = "https://api.twilio.com"


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
    def __init__(self, account_sid: str, auth_token: str, base_url: str = TWILIO_API,
                 timeout: float = 10):
        self._http = _RebasedHttpClient(base_url, timeout)
        self._client = Client(account_sid or "AC" + "0" * 32, auth_token or "unset",
                              http_client=self._http)

    async def send_sms(self, to: str, from_: str, body: str) -> str:
        message = await self._client.messages.create_async(to=to, from_=from_, body=body)
        return message.sid

    async def bridge_call(self, call_sid: str, agent: dict) -> None:
        """Take a queued call out of the queue and ring the agent who accepted it."""
        if agent.get("phone"):
            target = f"<Number>{escape(agent['phone'])}</Number>"
        else:
            identity = agent.get("client_identity") or f"agent-{agent['id']}"
            target = f"<Client>{escape(identity)}</Client>"
        twiml = f'<?xml version="1.0" encoding="UTF-8"?><Response><Dial>{target}</Dial></Response>'
        await self._client.calls(call_sid).update_async(twiml=twiml)

    async def close(self) -> None:
        await self._http.close()
