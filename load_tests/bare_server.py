"""The baseline: aiohttp answering Twilio's webhooks with fixed TwiML and nothing else.

Same aiohttp, the same event loop and collector settings (`service/runtime.py`) and the
same `web.run_app(..., access_log=None)` as `switchboard serve`, so the difference to the full
service is what the service does per turn.
The reply has the size of a typical self-service answer. POST /twilio/sms and the voice
webhook paths get the same reply (for voice the benchmark replays the calls' requests here).

    python load_tests/bare_server.py --port 8081 [--parse-form]
"""

from __future__ import annotations

import argparse
import os

from aiohttp import web

from service.infra.runtime import new_event_loop, tune_gc

VOICE_PATHS = ("/twilio/voice", "/twilio/voice/gather", "/twilio/voice/no-input",
               "/twilio/voice/wait", "/twilio/voice/queue-result", "/twilio/voice/status")
TWIML = ('<?xml version="1.0" encoding="UTF-8"?><Response><Message>Every order is listed under '
         "Orders at example.com/orders, and your confirmation email has a Track package link. "
         "Processing means we are packing it, Shipped means it is with the carrier (tracking can "
         "take up to 24 hours to update), and Delivered shows when and where it was left."
         "</Message><Message>Did that help? Reply YES or NO.</Message></Response>")


async def sms(request: web.Request) -> web.Response:
    return web.Response(text=TWIML, content_type="text/xml")


async def sms_reading_form(request: web.Request) -> web.Response:
    await request.post()
    return web.Response(text=TWIML, content_type="text/xml")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--parse-form", action="store_true",
                        help="parse the form body first (a reference point, not the baseline)")
    args = parser.parse_args()
    app = web.Application()
    handler = sms_reading_form if args.parse_form else sms
    for path in ("/twilio/sms", *VOICE_PATHS):
        app.router.add_post(path, handler)
    app.router.add_get("/healthz", healthz)
    tune_gc()
    loop = new_event_loop(os.environ.get("SWITCHBOARD_EVENT_LOOP", "auto"))
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None, loop=loop)


if __name__ == "__main__":
    main()
