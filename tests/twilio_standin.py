"""A local stand-in for Twilio's REST API: records what the service asks Twilio to do.

Only Twilio is stood in for (it is a third-party service on the internet); PostgreSQL and
Redis in these tests are real.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.test_utils import TestServer

_sids = itertools.count(1)


@dataclass
class TwilioStandIn:
    messages: list[dict[str, str]] = field(default_factory=list)
    call_updates: list[dict[str, str]] = field(default_factory=list)
    fail_with: int | None = None
    refuse_with_code: int | None = None  # a Twilio error code, answered as Twilio's 400 does
    # Conference Participants resource: every create, update and delete, in order, as
    # {"action": "create" | "update" | "delete", "conference", "participant", **form}.
    participants: list[dict[str, str]] = field(default_factory=list)
    conferences: dict[str, str] = field(default_factory=dict)  # friendly name -> CF sid

    def app(self) -> web.Application:
        app = web.Application()
        base = "/2010-04-01/Accounts/{account}"
        app.router.add_post(f"{base}/Messages.json", self._message)
        app.router.add_post(f"{base}/Calls/{{call}}.json", self._call)
        app.router.add_get(f"{base}/Conferences.json", self._list_conferences)
        app.router.add_post(f"{base}/Conferences/{{conference}}/Participants.json",
                            self._create_participant)
        app.router.add_post(f"{base}/Conferences/{{conference}}/Participants/{{participant}}.json",
                            self._update_participant)
        app.router.add_delete(
            f"{base}/Conferences/{{conference}}/Participants/{{participant}}.json",
            self._delete_participant)
        return app

    def conference_sid(self, name: str) -> str:
        """The SID of a conference, created (as Twilio does) on first use of its name."""
        return self.conferences.setdefault(name, f"CF{next(_sids):032d}")

    async def _list_conferences(self, request: web.Request) -> web.Response:
        name = request.query.get("FriendlyName")
        found = [{"sid": sid, "friendly_name": n, "status": "in-progress",
                  "account_sid": request.match_info["account"]}
                 for n, sid in self.conferences.items() if name in (None, n)]
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

    async def _update_participant(self, request: web.Request) -> web.Response:
        if request.match_info["conference"] not in self.conferences.values():
            return _not_found()
        form = _multi(await request.post())
        self.participants.append({"action": "update", **request.match_info, **form})
        return web.json_response(self._participant(request, request.match_info["conference"],
                                                   "CA" + "9" * 32,
                                                   request.match_info["participant"]))

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
        if self.fail_with:
            return web.json_response({"code": 20003, "message": "nope"}, status=self.fail_with)
        if self.refuse_with_code:
            return web.json_response({"code": self.refuse_with_code, "status": 400,
                                      "message": "Twilio refused the message",
                                      "more_info": "https://www.twilio.com/docs/errors/"
                                                   f"{self.refuse_with_code}"}, status=400)
        form = dict(await request.post())
        self.messages.append(form)
        return web.json_response({"sid": f"SM{next(_sids):032d}", "status": "queued",
                                  "to": form.get("To"), "from": form.get("From"),
                                  "body": form.get("Body")}, status=201)

    async def _call(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.call_updates.append({"call_sid": request.match_info["call"], **form})
        if "<Conference" in form.get("Twiml", ""):  # the caller dialled into a conference
            self.conference_sid(form["Twiml"].split("</Conference>")[0].rsplit(">", 1)[1])
        return web.json_response({"sid": request.match_info["call"], "status": "in-progress"})


def _multi(form) -> dict[str, str]:
    """A form with repeated keys (ConferenceStatusCallbackEvent) kept, joined by spaces."""
    joined: dict[str, str] = {}
    for key, value in form.items():
        joined[key] = f"{joined[key]} {value}" if key in joined else value
    return joined


def _not_found() -> web.Response:
    return web.json_response({"code": 20404, "status": 404, "message": "not found",
                              "more_info": "https://www.twilio.com/docs/errors/20404"},
                             status=404)


async def start_standin() -> tuple[TwilioStandIn, TestServer]:
    standin = TwilioStandIn()
    server = TestServer(standin.app())
    await server.start_server()
    return standin, server
