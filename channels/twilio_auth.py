"""X-Twilio-Signature checking, shared by every Twilio webhook."""

from __future__ import annotations

import hmac
from typing import cast

from aiohttp import web
from multidict import MultiDictProxy
from twilio.request_validator import RequestValidator


class TwilioSignature:
    def __init__(self, auth_token: str, public_url: str):
        self._validator = RequestValidator(auth_token)
        self._public_url = public_url.rstrip("/")

    def url_for(self, request: web.Request) -> str:
        """The URL Twilio signed: our public base URL plus the path and query it called."""
        return self._public_url + request.path_qs

    async def verified_form(self, request: web.Request) -> MultiDictProxy[str]:
        """The POSTed form, or 403 when the signature does not match (400 when unreadable)."""
        signature = request.headers.get("X-Twilio-Signature", "")
        if request.content_type != "application/x-www-form-urlencoded":
            raise web.HTTPUnsupportedMediaType(text="expected a form-encoded Twilio webhook")
        try:
            form = await request.post()
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"unreadable form body: {exc}") from exc
        fields = cast("MultiDictProxy[str]", form)  # a urlencoded body holds no file parts
        if not signature or not self._valid(self.url_for(request), fields, signature):
            raise web.HTTPForbidden(text="invalid X-Twilio-Signature")
        return fields

    def _valid(self, url: str, form: MultiDictProxy[str], signature: str) -> bool:
        # Twilio signs the URL we configured, so one HMAC usually settles it; validate() also
        # tries the URL with and without a default port, which costs three times as much.
        expected = self._validator.compute_signature(url, form)
        return hmac.compare_digest(expected, signature) or \
            self._validator.validate(url, form, signature)
