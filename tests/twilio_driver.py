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


# ---- voice ------------------------------------------------------------------------------

# Documented TwiML verbs and the attributes we may use on each (Twilio's TwiML reference).
TWIML_VOCABULARY = {
    "Response": set(),
    "Say": {"voice", "language", "loop"},
    "Gather": {"input", "action", "method", "timeout", "speechTimeout", "numDigits", "hints",
               "language", "finishOnKey", "actionOnEmptyResult", "partialResultCallback",
               "speechModel", "profanityFilter", "enhanced"},
    "Redirect": {"method"},
    "Enqueue": {"action", "method", "waitUrl", "waitUrlMethod", "workflowSid"},
    "Pause": {"length"},
    "Play": {"loop", "digits"},
    "Hangup": set(),
    "Leave": set(),
    "Dial": {"action", "method", "timeout", "callerId", "record"},
    "Conference": {"participantLabel", "startConferenceOnEnter", "endConferenceOnExit", "beep",
                   "waitUrl", "waitMethod"},
    "Message": {"to", "from", "action", "method"},
}
NESTING = {"Response": {"Say", "Gather", "Redirect", "Enqueue", "Pause", "Play", "Hangup",
                        "Leave", "Dial", "Message"},
           "Gather": {"Say", "Play", "Pause"}}


def check_twiml(twiml: str) -> ET.Element:
    """Parse TwiML and insist on documented verbs, attributes and nesting only."""
    assert twiml.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(twiml)
    assert root.tag == "Response"

    def walk(element: ET.Element) -> None:
        assert element.tag in TWIML_VOCABULARY, f"undocumented verb <{element.tag}>"
        unknown = set(element.attrib) - TWIML_VOCABULARY[element.tag]
        assert not unknown, f"<{element.tag}> has undocumented attributes {unknown}"
        for child in element:
            assert child.tag in NESTING.get(element.tag, set()), \
                f"<{child.tag}> cannot be inside <{element.tag}>"
            walk(child)

    walk(root)
    return root


class Call:
    """Drives one phone call the way Twilio does: posts, parses TwiML, follows its URLs."""

    def __init__(self, client: TestClient, caller: str, sid: str | None = None):
        self.client = client
        self.caller = caller
        self.sid = sid or f"CA{next(_sids):032d}"
        self.twiml: ET.Element | None = None
        self.raw = ""

    def params(self, **extra: str) -> dict[str, str]:
        return {"CallSid": self.sid, "AccountSid": "AC" + "0" * 32, "From": self.caller,
                "To": SERVICE_NUMBER, "Caller": self.caller, "Called": SERVICE_NUMBER,
                "CallStatus": "in-progress", "Direction": "inbound", "ApiVersion": "2010-04-01",
                "FromCountry": "US", "ToCountry": "US", **extra}

    async def _post(self, path: str, **extra: str) -> ET.Element:
        response = await post_signed(self.client, path, self.params(**extra))
        assert response.status == 200, await response.text()
        assert response.content_type == "text/xml"
        self.raw = await response.text()
        self.twiml = check_twiml(self.raw)
        return self.twiml

    async def dial(self) -> "Call":
        await self._post("/twilio/voice", CallStatus="ringing")
        return self

    def said(self) -> list[str]:
        return [s.text or "" for s in self.twiml.iter("Say")]

    def verbs(self) -> list[str]:
        return [child.tag for child in self.twiml]

    def _gather_action(self) -> str:
        gather = self.twiml.find("Gather")
        assert gather is not None, f"no <Gather> in {self.raw}"
        return gather.get("action")

    async def press(self, digits: str) -> "Call":
        await self._post(self._gather_action(), Digits=digits)
        return self

    async def speak(self, words: str, confidence: float = 0.92) -> "Call":
        await self._post(self._gather_action(), SpeechResult=words, Confidence=str(confidence))
        return self

    async def stay_silent(self) -> "Call":
        redirect = self.twiml.find("Redirect")
        assert redirect is not None and self.twiml.find("Gather") is not None
        await self._post(redirect.text)
        return self

    async def hold(self, position: int = 1) -> "Call":
        if self.twiml.find("Enqueue") is not None:
            self._enqueue_action()
            self.wait_url = self.twiml.find("Enqueue").get("waitUrl")
        await self._post(self.wait_url, QueuePosition=str(position), QueueTime="5",
                         AvgQueueTime="30", CurrentQueueSize="1",
                         QueueSid="QU" + "0" * 32)
        return self

    async def leave_queue(self, result: str = "hangup") -> "Call":
        action = getattr(self, "queue_action", None) or self._enqueue_action()
        await self._post(action, QueueResult=result, QueueTime="12", QueueSid="QU" + "0" * 32)
        return self

    def _enqueue_action(self) -> str:
        enqueue = self.twiml.find("Enqueue")
        assert enqueue is not None, f"not queued: {self.raw}"
        self.queue_action = enqueue.get("action")
        return self.queue_action

    async def hang_up(self, status: str = "completed") -> "Call":
        await self._post("/twilio/voice/status", CallStatus=status, CallDuration="42")
        return self
