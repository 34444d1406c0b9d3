"""Twilio's own signature vectors, checked through our webhook guard on a real HTTP server."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from channels.twilio_auth import TwilioSignature

VECTORS = json.loads((Path(__file__).parent / "fixtures/twilio/signature_test_vectors.json")
                     .read_text())["vectors"]
# Our webhooks are form posts; JSON-body vectors concern Twilio's JSON callbacks we do not take.
FORM_VECTORS = [v for v in VECTORS if "params" in v]


def _form(params: dict) -> str:
    pairs = [(k, item) for k, value in params.items()
             for item in (value if isinstance(value, list) else [value])]
    return urlencode(pairs)


@pytest.mark.parametrize("vector", FORM_VECTORS, ids=[v["id"] for v in FORM_VECTORS])
async def test_signature_vector(vector):
    url = urlsplit(vector["url"])
    guard = TwilioSignature(vector["auth_token"], f"{url.scheme}://{url.netloc}")

    async def webhook(request: web.Request) -> web.Response:
        await guard.verified_form(request)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post(url.path, webhook)
    async with TestClient(TestServer(app)) as client:
        response = await client.post(
            url.path + (f"?{url.query}" if url.query else ""), data=_form(vector["params"]),
            headers={"X-Twilio-Signature": vector["expected_signature"],
                     "Content-Type": "application/x-www-form-urlencoded"})
    expected = 200 if vector["crosscheck_twilio_python_9_13_0_validate"] else 403
    assert response.status == expected


def test_all_vectors_twilio_python_accepts_are_exercised():
    accepted = [v["id"] for v in VECTORS if v["crosscheck_twilio_python_9_13_0_validate"]]
    exercised = {v["id"] for v in FORM_VECTORS}
    assert [a for a in accepted if a not in exercised] == ["json_body_sha256",
                                                           "json_body_sha256_only_param",
                                                           "json_empty_body"]
