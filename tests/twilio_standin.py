"""A local stand-in for Twilio's REST API: records what the service asks Twilio to do, and
plays Twilio's failure modes on demand.

Only Twilio is stood in for (it is a third-party service on the internet); PostgreSQL and
Redis in these tests are real. Failure modes: answer a status (503, 429) with or without
`Retry-After`; refuse a message with a Twilio error code (21610, 21211, 63016, ...); refuse
connections (the server stops listening); lose the answer (the message is taken, then the
request hangs until the client gives up); drop the connection without taking the message.
It serves media files (GET .../Messages/{MM}/Media/{ME}, as Twilio's MMS and WhatsApp MediaUrl
point at them) only with the account's basic auth, optionally through a 307 to a file host of
another origin as Twilio does (`redirect_media`), deletes them (DELETE .../Media/{ME}.json),
and fails both on demand (`fail_media_with` a status, `hang_media` never answers). Messages
from Content API templates (`ContentSid`, `ContentVariables`) are checked against the
templates it was told are approved (`content_templates`). It lists messages (GET Messages.json filtered by
To, From and DateSent), places calls (POST Calls.json, `fail_calls` answers the next ones 503)
and posts signed status callbacks of messages and placed calls to the service, as Twilio does.
A message with a `MediaUrl` (a file an agent sent) has that URL fetched, as Twilio does before
delivering it, without credentials; what came back is kept in `media_sent`.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from twilio.request_validator import RequestValidator

_sids = itertools.count(1)
MESSAGES = "/2010-04-01/Accounts/{account}/Messages.json"


@dataclass
class TwilioStandIn:
    messages: list[dict[str, str]] = field(default_factory=list)  # taken, in order
    call_updates: list[dict[str, str]] = field(default_factory=list)
    attempts: list[float] = field(default_factory=list)  # when each message POST arrived
    lookups: list[dict[str, str]] = field(default_factory=list)  # Messages list queries
    fail_with: int | None = None  # answer every message POST with this HTTP status
    retry_after: str | None = None  # ... and this Retry-After header
    refuse_with_code: int | None = None  # a Twilio error code, answered as Twilio's 400 does
    # Conference Participants resource: every create, update and delete, in order, as
    # {"action": "create" | "update" | "delete", "conference", "participant", **form}.
    participants: list[dict[str, str]] = field(default_factory=list)
    conferences: dict[str, str] = field(default_factory=dict)  # friendly name -> CF sid
    # Calls resource creates (calls placed), in order: the form plus "sid".
    calls: list[dict[str, str]] = field(default_factory=list)
    ringing: set[str] = field(default_factory=set)  # participant labels not yet answered
    call_attempts: int = 0  # every Calls create that arrived, answered or not
    fail_calls: int = 0  # answer the next N Calls creates with 503 (taking nothing)
    refuse_calls_with_code: int | None = None  # refuse every Calls create (Twilio's 400)
    ended: set[str] = field(default_factory=set)  # CF sids whose caller hung up (it ended)
    # Media resources: ME sid -> (content type, bytes); media_url() adds one.
    media: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    media_fetches: list[dict[str, str]] = field(default_factory=list)  # every GET, with auth
    fail_media_with: int | None = None  # answer media GETs with this status
    hang_media: bool = False  # never answer media GETs
    account_sid: str = "AC" + "1" * 32  # whose basic auth media GETs need
    media_deletes: list[str] = field(default_factory=list)  # ME sids deleted, in order
    # As Twilio does: a media GET answers 307 to its file host (here `localhost`, another
    # origin), which serves the bytes without auth; what that host was sent is kept.
    redirect_media: bool = False
    file_host_requests: list[dict[str, str]] = field(default_factory=list)

    # Content API templates the account has approved: ContentSid -> its text with {{n}}. A
    # message naming another ContentSid is refused (21655), one whose ContentVariables are not
    # a JSON object filling every {{n}} with text too (21656), as Twilio does; the message
    # resource's body is the text with the variables in, as Twilio renders it.
    content_templates: dict[str, str] = field(default_factory=dict)
    # Files of messages sent with a MediaUrl, fetched as Twilio does: {"url", "status",
    # "content_type", "data"}, in order.
    media_sent: list[dict] = field(default_factory=list)
    lose_answers: bool = False  # take the message, then never answer
    drop_connections: int = 0  # close the next N message requests' connections, taking nothing
    auth_token: str = "test-auth-token"
    service_url: str = ""  # where status callbacks really go (the test server)
    sids: dict[str, dict[str, str]] = field(default_factory=dict)  # sid -> the message
    server: TestServer | None = None
    port: int | None = None

    def app(self) -> web.Application:
        app = web.Application()
        base = "/2010-04-01/Accounts/{account}"
        app.router.add_delete(f"{base}/Messages/{{message}}/Media/{{media}}.json",
                              self._delete_media)
        app.router.add_get(f"{base}/Messages/{{message}}/Media/{{media}}", self._media)
        app.router.add_get("/files/{media}", self._file_host)
        app.router.add_post(MESSAGES, self._message)
        app.router.add_get(MESSAGES, self._list)
        app.router.add_post(f"{base}/Calls.json", self._create_call)
        app.router.add_post(f"{base}/Calls/{{call}}.json", self._call)
        app.router.add_get(f"{base}/Conferences.json", self._list_conferences)
        app.router.add_post(f"{base}/Conferences/{{conference}}/Participants.json",
                            self._create_participant)
        app.router.add_get(f"{base}/Conferences/{{conference}}/Participants.json",
                           self._list_participants)
        app.router.add_post(f"{base}/Conferences/{{conference}}/Participants/{{participant}}.json",
                            self._update_participant)
        app.router.add_delete(
            f"{base}/Conferences/{{conference}}/Participants/{{participant}}.json",
            self._delete_participant)
        app.router.add_get(
            f"{base}/Conferences/{{conference}}/Participants/{{participant}}.json",
            self._fetch_participant)
        return app

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen (again) on the same port."""
        self.server = TestServer(self.app(), port=self.port or 0)
        await self.server.start_server()
        self.port = self.server.port

    async def stop(self) -> None:
        """Stop listening: connections are refused until start() again."""
        if self.server is not None:
            await self.server.close()
            self.server = None

    def media_url(self, content_type: str, data: bytes, account: str | None = None) -> str:
        """A new Media resource holding `data`: its URL, as a webhook's MediaUrl{N} names it."""
        media_sid, message_sid = f"ME{next(_sids):032d}", f"MM{next(_sids):032d}"
        self.media[media_sid] = (content_type, data)
        return (f"{self.url}/2010-04-01/Accounts/{account or self.account_sid}/Messages/"
                f"{message_sid}/Media/{media_sid}")

    def _authorised(self, request: web.Request) -> bool:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return request.headers.get("Authorization") == f"Basic {expected}"

    async def _delete_media(self, request: web.Request) -> web.Response:
        """Twilio's Media resource DELETE (basic auth); `fail_media_with` fails it too."""
        if not self._authorised(request):
            return web.json_response({"code": 20003, "status": 401}, status=401)
        if self.fail_media_with:
            return web.json_response({"code": 20500, "status": self.fail_media_with,
                                      "message": "Twilio is having trouble"},
                                     status=self.fail_media_with)
        if self.media.pop(request.match_info["media"], None) is None:
            return _not_found()
        self.media_deletes.append(request.match_info["media"])
        return web.Response(status=204)

    async def _media(self, request: web.Request) -> web.StreamResponse:
        authorised = self._authorised(request)
        self.media_fetches.append({"path": request.path, "authorised": str(authorised)})
        if not authorised:
            return web.json_response({"code": 20003, "status": 401,
                                      "message": "Authenticate"}, status=401)
        if self.hang_media:
            await asyncio.sleep(3600)
        if self.fail_media_with:
            return web.json_response({"code": 20500, "status": self.fail_media_with,
                                      "message": "Twilio is having trouble"},
                                     status=self.fail_media_with)
        found = self.media.get(request.match_info["media"])
        if found is None:
            return _not_found()
        if self.redirect_media:
            raise web.HTTPTemporaryRedirect(
                f"http://localhost:{self.port}/files/{request.match_info['media']}")
        content_type, data = found
        return web.Response(body=data, content_type=content_type)

    async def _file_host(self, request: web.Request) -> web.Response:
        self.file_host_requests.append({"host": request.host,
                                        "authorization": request.headers.get("Authorization",
                                                                             "")})
        found = self.media.get(request.match_info["media"])
        if found is None:
            return _not_found()
        return web.Response(body=found[1], content_type=found[0])

    def bodies(self) -> list[str]:
        return [m.get("Body", "") for m in self.messages]

    def conference_sid(self, name: str) -> str:
        """The SID of a conference, created (as Twilio does) on first use of its name."""
        return self.conferences.setdefault(name, f"CF{next(_sids):032d}")

    async def _list_conferences(self, request: web.Request) -> web.Response:
        name = request.query.get("FriendlyName")
        found = [{"sid": sid, "friendly_name": n, "status": "in-progress",
                  "account_sid": request.match_info["account"]}
                 for n, sid in self.conferences.items()
                 if name in (None, n) and sid not in self.ended]
        return web.json_response({"conferences": found, "meta": {
            "key": "conferences", "page": 0, "page_size": 50, "next_page_url": None,
            "previous_page_url": None, "url": str(request.rel_url)}})

    async def _create_participant(self, request: web.Request) -> web.Response:
        conference = request.match_info["conference"]
        sid = conference if conference.startswith("CF") else self.conference_sid(conference)
        form = _multi(await request.post())
        call_sid = f"CA{next(_sids):032d}"
        self.participants.append({"action": "create", "conference": conference,
                                  "participant": call_sid, **form})
        return web.json_response(self._participant(request, sid, call_sid, form.get("Label")),
                                 status=201)

    async def _list_participants(self, request: web.Request) -> web.Response:
        """The participants in the conference now: created and not deleted (by label), each
        `connected` unless its label is in `ringing`."""
        sid = request.match_info["conference"]
        names = {n for n, s in self.conferences.items() if s == sid}
        present: dict[str, str] = {}
        for change in self.participants:
            label = change.get("Label") or change.get("participant")
            if change["action"] == "create" and change["conference"] in names | {sid}:
                present[label] = change["participant"]
            elif change["action"] == "delete" and change["conference"] == sid:
                present.pop(label, None)
        found = [{**self._participant(request, sid, call_sid, label),
                  "status": "ringing" if label in self.ringing else "connected"}
                 for label, call_sid in present.items()]
        return web.json_response({"participants": found, "meta": {
            "key": "participants", "page": 0, "page_size": 50, "next_page_url": None,
            "previous_page_url": None, "url": str(request.rel_url)}})

    async def _update_participant(self, request: web.Request) -> web.Response:
        if request.match_info["conference"] not in self.conferences.values():
            return _not_found()
        form = _multi(await request.post())
        self.participants.append({"action": "update", **request.match_info, **form})
        return web.json_response(self._participant(request, request.match_info["conference"],
                                                   "CA" + "9" * 32,
                                                   request.match_info["participant"]))

    async def _fetch_participant(self, request: web.Request) -> web.Response:
        """A participant of a conference in progress; 404 once the conference ended."""
        sid = request.match_info["conference"]
        if sid not in self.conferences.values() or sid in self.ended:
            return _not_found()
        found = self._participant(request, sid, "CA" + "8" * 32,
                                  request.match_info["participant"])
        return web.json_response({**found, "status": "connected"})

    async def _delete_participant(self, request: web.Request) -> web.Response:
        if request.match_info["conference"] not in self.conferences.values():
            return _not_found()
        self.participants.append({"action": "delete", **request.match_info})
        return web.Response(status=204)

    @staticmethod
    def _participant(request, conference_sid: str, call_sid: str, label) -> dict:
        return {"account_sid": request.match_info["account"], "call_sid": call_sid,
                "conference_sid": conference_sid, "label": label, "status": "queued",
                "hold": False, "muted": False, "start_conference_on_enter": True,
                "end_conference_on_exit": False}

    async def _message(self, request: web.Request) -> web.Response:
        self.attempts.append(time.monotonic())
        if self.drop_connections:
            self.drop_connections -= 1
            assert request.transport is not None
            request.transport.close()  # the client cannot tell whether Twilio got it
            await asyncio.sleep(3600)
        if self.fail_with:
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return web.json_response({"code": 20429 if self.fail_with == 429 else 20500,
                                      "message": "Twilio is busy", "status": self.fail_with},
                                     status=self.fail_with, headers=headers)
        if self.refuse_with_code:
            return web.json_response({"code": self.refuse_with_code, "status": 400,
                                      "message": "Twilio refused the message",
                                      "more_info": "https://www.twilio.com/docs/errors/"
                                                   f"{self.refuse_with_code}"}, status=400)
        form = dict(await request.post())
        refused = self._refusal(form)
        if refused:
            return refused
        sid = f"SM{next(_sids):032d}"
        self.messages.append(form)
        rendered = self._rendered(form) if "ContentSid" in form else form.get("Body")
        self.sids[sid] = {**form, "sid": sid, "created": formatdate(usegmt=True),
                          "rendered": rendered or ""}
        if form.get("MediaUrl"):
            self.media_sent.append(await self.fetch_media_url(form["MediaUrl"]))
        if self.lose_answers:
            await asyncio.sleep(3600)  # the client times out: Twilio has it, the answer is lost
        return web.json_response(_resource(self.sids[sid]), status=201)

    async def fetch_media_url(self, url: str) -> dict:
        """GET a message's MediaUrl as Twilio does (no credentials): status, type, bytes. The
        public URL's host is the test server (`service_url`) when one is set."""
        parts = urlsplit(url)
        target = f"{self.service_url}{parts.path}?{parts.query}" if self.service_url else url
        async with aiohttp.ClientSession() as session, session.get(target) as response:
            return {"url": url, "status": response.status,
                    "content_type": response.headers.get("Content-Type", ""),
                    "data": await response.read()}

    def _refusal(self, form: dict[str, str]) -> web.Response | None:
        """Twilio's 400 for a message it cannot take as written, or None."""
        if "ContentSid" not in form:
            return None if form.get("Body") or form.get("MediaUrl") else _refused(
                21602, "Message body is required")
        if form.get("Body"):
            return _refused(21619, "A text message body or media url must be specified, "
                            "not both a body and a ContentSid")
        if form["ContentSid"] not in self.content_templates:
            return _refused(21655, "The ContentSid is Invalid")
        try:
            self._rendered(form)
        except (ValueError, KeyError, TypeError):
            return _refused(21656, "The ContentVariables Parameter is invalid")
        return None

    def _rendered(self, form: dict[str, str]) -> str:
        """The template's text with ContentVariables in; KeyError or ValueError if unfit."""
        values = json.loads(form.get("ContentVariables") or "{}")
        if not isinstance(values, dict) or not all(
                isinstance(v, str) and v for v in values.values()):
            raise ValueError("variables are text")
        return re.sub(r"\{\{(\d+)\}\}", lambda m: values[m[1]],
                      self.content_templates[form["ContentSid"]])

    def templated(self) -> list[dict[str, str]]:
        """The template messages taken, in order."""
        return [m for m in self.messages if "ContentSid" in m]

    async def _list(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        self.lookups.append(query)
        since = next((v[:10] for k, v in query.items() if k.startswith("DateSent")), "")
        found = [_resource(m) for m in reversed(self.sids.values())  # newest first
                 if m.get("To") == query.get("To", m.get("To"))
                 and m.get("From") == query.get("From", m.get("From"))
                 and _day(m["created"]) >= since]
        return web.json_response({"messages": found, "next_page_uri": None, "page": 0,
                                  "page_size": 200, "uri": request.path_qs,
                                  "first_page_uri": request.path_qs,
                                  "previous_page_uri": None, "end": len(found), "start": 0})

    async def _call(self, request: web.Request) -> web.Response:
        if self.fail_with:
            return web.json_response({"code": 20500, "message": "Twilio is busy"},
                                     status=self.fail_with)
        form = dict(await request.post())
        self.call_updates.append({"call_sid": request.match_info["call"], **form})
        if "<Conference" in form.get("Twiml", ""):  # the caller dialled into a conference
            self.conference_sid(form["Twiml"].split("</Conference>")[0].rsplit(">", 1)[1])
        return web.json_response({"sid": request.match_info["call"], "status": "in-progress"})

    async def _create_call(self, request: web.Request) -> web.Response:
        self.call_attempts += 1
        if self.fail_calls:
            self.fail_calls -= 1
            return web.json_response({"code": 20500, "message": "Twilio is busy",
                                      "status": 503}, status=503)
        if self.refuse_calls_with_code:
            return web.json_response({"code": self.refuse_calls_with_code, "status": 400,
                                      "message": "Twilio refused the call"}, status=400)
        form = _multi(await request.post())
        sid = f"CA{next(_sids):032d}"
        self.calls.append({**form, "sid": sid})
        return web.json_response({"sid": sid, "status": "queued", "to": form.get("To"),
                                  "from": form.get("From"),
                                  "account_sid": request.match_info["account"]}, status=201)

    async def send_call_status(self, call: dict[str, str], status: str,
                               signature: str | None = None) -> int:
        """Post a placed call's StatusCallback (CallStatus `status`), signed as Twilio signs
        it; the HTTP status."""
        callback = call["StatusCallback"]
        params = {"CallSid": call["sid"], "AccountSid": "AC" + "1" * 32, "To": call["To"],
                  "From": call["From"], "CallStatus": status, "Direction": "outbound-api",
                  "ApiVersion": "2010-04-01",
                  "CallbackSource": "call-progress-events"}
        signed = RequestValidator(self.auth_token).compute_signature(callback, params)
        parts = urlsplit(callback)
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{self.service_url}{parts.path}?{parts.query}",
                                    data=params, headers={
                                        "X-Twilio-Signature": signature or signed}) as response:
                return response.status

    async def send_status(self, sid: str, status: str, error_code: str | None = None,
                          signature: str | None = None) -> int:
        """Post the message's StatusCallback, signed as Twilio signs it; the HTTP status."""
        message = self.sids[sid]
        callback = message["StatusCallback"]
        params = {"MessageSid": sid, "SmsSid": sid, "MessageStatus": status,
                  "SmsStatus": status, "AccountSid": "AC" + "1" * 32, "To": message["To"],
                  "From": message["From"], "ApiVersion": "2010-04-01"}
        if error_code:
            params["ErrorCode"] = error_code
        signed = RequestValidator(self.auth_token).compute_signature(callback, params)
        parts = urlsplit(callback)
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{self.service_url}{parts.path}?{parts.query}",
                                    data=params, headers={
                                        "X-Twilio-Signature": signature or signed}) as response:
                return response.status


def _resource(message: dict[str, str]) -> dict[str, str | None]:
    return {"sid": message["sid"], "status": "queued", "to": message.get("To"),
            "from": message.get("From"), "body": message.get("rendered", message.get("Body")),
            "date_created": message["created"], "date_sent": message["created"],
            "date_updated": message["created"]}


def _day(rfc2822: str) -> str:
    return parsedate_to_datetime(rfc2822).date().isoformat()


def _multi(form) -> dict[str, str]:
    """A form with repeated keys (ConferenceStatusCallbackEvent) kept, joined by spaces."""
    joined: dict[str, str] = {}
    for key, value in form.items():
        joined[key] = f"{joined[key]} {value}" if key in joined else value
    return joined


def _refused(code: int, message: str) -> web.Response:
    return web.json_response({"code": code, "status": 400, "message": message,
                              "more_info": f"https://www.twilio.com/docs/errors/{code}"},
                             status=400)


def _not_found() -> web.Response:
    return web.json_response({"code": 20404, "status": 404, "message": "not found",
                              "more_info": "https://www.twilio.com/docs/errors/20404"},
                             status=404)


async def start_standin() -> tuple[TwilioStandIn, TestServer]:
    standin = TwilioStandIn()
    await standin.start()
    assert standin.server is not None
    return standin, standin.server
