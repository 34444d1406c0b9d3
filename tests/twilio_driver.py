"""Posts webhooks the way Twilio does: form-encoded and signed over our public URL."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from urllib.parse import urlencode

from aiohttp.test_utils import TestClient
from twilio.request_validator import RequestValidator

from tests.conftest import AUTH_TOKEN, PUBLIC_URL

_sids = itertools.count(1)
SERVICE_NUMBER = "+15005550006"


def sign(path: str, params: dict[str, str], token: str = AUTH_TOKEN) -> str:
    return RequestValidator(token).compute_signature(PUBLIC_URL + path, params)


async def post_signed(client: TestClient, path: str, params: dict[str, str],
                      signature: str | None = None):
    headers = {"X-Twilio-Signature": signature if signature is not None else sign(path, params),
               "Content-Type": "application/x-www-form-urlencoded"}
    return await client.post(path, data=urlencode(params), headers=headers)


def sms_params(text: str, sender: str, sid: str | None = None) -> dict[str, str]:
    sid = sid or f"SM{next(_sids):032d}"
    return {"ToCountry": "US", "SmsMessageSid": sid, "NumMedia": "0", "SmsSid": sid,
            "SmsStatus": "received", "Body": text, "To": SERVICE_NUMBER, "NumSegments": "1",
            "MessageSid": sid, "AccountSid": "AC" + "0" * 32, "From": sender,
            "ApiVersion": "2010-04-01"}


async def text(client: TestClient, sender: str, body: str, sid: str | None = None) -> list[str]:
    """Send one SMS; return the bodies of the <Message> elements Twilio would send back."""
    response = await post_signed(client, "/twilio/sms", sms_params(body, sender, sid))
    assert response.status == 200, await response.text()
    assert response.content_type == "text/xml"
    return messages(await response.text())


def messages(twiml: str) -> list[str]:
    root = ET.fromstring(twiml)
    assert root.tag == "Response"
    return [m.text or "" for m in root.findall("Message")]
