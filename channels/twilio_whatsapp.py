"""WhatsApp through Twilio: the Messaging webhook at /twilio/whatsapp with `whatsapp:+...`
addresses, replies as <Message> TwiML, agents' texts through the REST API.

The customer is their phone number, so a WhatsApp contact shares history with the number's SMS
and calls. WhatsApp lets a business write freely only within 24 hours of the customer's last
message: an agent's text outside that window is refused here (and Twilio's 63016, should the
clocks disagree, is reported the same way) rather than lost. An approved message template
(Twilio's Content API: a ContentSid and its variables) may be sent at any time: that is how an
agent reaches a customer after the window, and the customer's answer opens it again.
"""

from __future__ import annotations

import time
from typing import ClassVar

from channels.twilio_rest import OUTSIDE_WINDOW, outside_window_message
from channels.twilio_sms import TwilioMessaging
from service.model import Attachment, ChannelTraits, DeliveryFailed, Destination

WINDOW_S = 24 * 3600


class TwilioWhatsApp(TwilioMessaging):
    traits: ClassVar[ChannelTraits] = ChannelTraits(
        name="whatsapp", identity="phone", prompt_style="text", default_capacity=3,
        idles_out=True, carrier_keywords=False, agent_can_type=True,
        route_prefix="/twilio/whatsapp", reply_window_s=WINDOW_S, customer_paced=True,
        templates_after_window=True, sends_files=True)

    def wire_address(self, address: str) -> str:
        return f"whatsapp:{address}"

    async def send_text(self, to: Destination, text: str,
                        message_id: str | None = None) -> str | None:
        _within_window(to)
        return await super().send_text(to, text, message_id)

    async def send_file(self, to: Destination, attachment: Attachment,
                        message_id: str | None = None) -> str | None:
        _within_window(to)
        return await super().send_file(to, attachment, message_id)


def _within_window(to: Destination) -> None:
    """Refuse a free-form message past the customer's 24 hours, before Twilio is asked."""
    if to.customer_last_at is not None and time.time() - to.customer_last_at > WINDOW_S:
        raise DeliveryFailed("outside_window", outside_window_message(), code=OUTSIDE_WINDOW)
