"""Twilio's own signature vectors, checked through our webhook guard on a real HTTP server."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import MultiDict, MultiDictProxy
from twilio.request_validator import RequestValidator

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


FIELD_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)),
                     max_size=6)


@given(st.lists(st.tuples(FIELD_TEXT, FIELD_TEXT), max_size=10), FIELD_TEXT)
@settings(max_examples=500, deadline=None)
def test_our_signature_is_twilios_for_any_form(pairs, path):
    """Repeated names, repeated values, empty and non-ASCII fields: the same HMAC as twilio's
    RequestValidator, so a faster computation accepts and refuses exactly what it does."""
    token = "12345678901234567890123456789012"
    url = "https://hooks.example/twilio/sms?x=" + path
    form = MultiDictProxy(MultiDict(pairs))
    assert TwilioSignature(token, "https://hooks.example").signature(url, form) == \
        RequestValidator(token).compute_signature(url, form)
