"""The SMS reply's TwiML is written directly; it must be the document twilio's own
MessagingResponse writes, byte for byte, for any text."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from hypothesis import given, settings
from hypothesis import strategies as st
from twilio.twiml.messaging_response import MessagingResponse

from channels.twilio_sms import render
from service.model import Reply

# Any code point, lone surrogates included (ElementTree writes them as character references).
ANY_TEXT = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF,
                                          exclude_categories=()), max_size=30)
MARKUP = st.text(alphabet='<>&"\' aé\n\r\t', max_size=12)


def twilios(messages: tuple[str, ...]) -> str:
    response = MessagingResponse()
    for text in messages:
        response.message(text)
    return str(response)


@given(st.lists(ANY_TEXT | MARKUP, max_size=4))
@settings(max_examples=1000, deadline=None)
def test_sms_twiml_is_what_messaging_response_writes(texts):
    messages = tuple(texts)
    assert render(Reply(messages=messages)) == twilios(messages)


def test_a_reply_with_markup_characters_reads_back_as_sent():
    text = 'Orders < 5 kg & "fragile" > nothing: reply <YES>'
    document = render(Reply(messages=(text, "Did that help?")))
    root = ET.fromstring(document.encode("utf-8"))
    assert [m.text for m in root.findall("Message")] == [text, "Did that help?"]
    assert render(Reply()) == '<?xml version="1.0" encoding="UTF-8"?><Response />'
