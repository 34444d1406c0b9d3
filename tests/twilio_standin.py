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

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{account}/Messages.json", self._message)
        app.router.add_post("/2010-04-01/Accounts/{account}/Calls/{call}.json", self._call)
        return app

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
        return web.json_response({"sid": request.match_info["call"], "status": "in-progress"})


async def start_standin() -> tuple[TwilioStandIn, TestServer]:
    standin = TwilioStandIn()
    server = TestServer(standin.app())
    await server.start_server()
    return standin, server
