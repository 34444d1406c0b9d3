"""The channels this build serves, one line each: nothing registers itself by being imported.

The composition root (app.py) builds them; the rest of the core sees only their traits and
their names (routing's `channel = x`, `agents add --capacity`), all read from this list.
"""

from __future__ import annotations

from channels.base import Channel
from channels.twilio_sms import TwilioSms
from channels.twilio_voice import TwilioVoice
from channels.twilio_whatsapp import TwilioWhatsApp
from channels.webchat import WebChat

CHANNEL_TYPES: tuple[type[Channel], ...] = (TwilioSms, TwilioVoice, WebChat, TwilioWhatsApp)


def channel_names() -> tuple[str, ...]:
    """Every channel value, as its module declares it."""
    return tuple(c.traits.name for c in CHANNEL_TYPES)


assert len(set(channel_names())) == len(CHANNEL_TYPES), "two channels declare one name"
