"""What the bot says, worded for each channel: typed replies on SMS and chat, keys on the phone.

One place for customer-facing wording, so the same flow reads right everywhere.
"""

from __future__ import annotations

from typing import Sequence

from service.rules.catalog import Catalog

CONFIRM = {
    "sms": "Did that help? Reply YES or NO.",
    "chat": "Did that help?",
    "voice": "Did that help? Press 1 for yes or 2 for no, or say yes or no.",
}
RESOLVED = {
    "sms": "Great, glad that helped! Text us any time if you need anything else.",
    "chat": "Great, glad that helped! Come back any time.",
    "voice": "Great, glad that helped. Thanks for calling, goodbye.",
}
SMS_HELP = ("Support by text: tell us what you need in a few words, or reply AGENT to talk to "
            "a person. Reply STOP to opt out. Msg&data rates may apply.")
SMS_RESUBSCRIBED = "You're subscribed again. Text us any time."
FAILED_VOICE = "Sorry, we're having technical trouble. Please hold for the next available agent."


def greeting(catalog: Catalog, channel: str) -> str:
    if channel != "voice":
        return "Hi! Tell me in a few words what you need help with."
    keys = " ".join(f"{t.label}: press {t.ivr_digit}."
                    for t in sorted(catalog.types.values(), key=lambda t: t.ivr_digit or 99)
                    if t.ivr_digit)
    return (f"Thanks for calling. {keys} To talk to a person, press 0. Or tell me in a few "
            "words why you are calling.")


def repeat_greeting(label: str, channel: str) -> str:
    if channel == "voice":
        return (f"Welcome back. Are you calling about your {label.lower()} question from "
                "earlier? Press 1 for yes, or 2 for something else.")
    return f"Welcome back. Is this about your {label.lower()} question from earlier?"


def not_understood(catalog: Catalog, menu: Sequence[str], channel: str) -> str:
    if channel == "voice":
        return "Sorry, I didn't get that. " + greeting(catalog, channel).removeprefix(
            "Thanks for calling. ")
    options = " ".join(f"{i}) {catalog.label(t)}" for i, t in enumerate(menu, 1))
    if channel == "chat":
        return "Sorry, I'm not sure I understood. Is it about one of these? Or tell me in other words."
    return (f"Sorry, I'm not sure I understood. Is it about: {options}? Reply with a number, "
            "or tell me in other words. Reply AGENT to talk to a person.")


def queued(team: str, position: int, wait_s: int, channel: str) -> str:
    minutes = max(1, round(wait_s / 60))
    if channel == "voice":
        return (f"I'm connecting you to our {team} team. You are number {position} in line, "
                f"about {minutes} minutes. They will see everything you told me.")
    return (f"I'm passing you to our {team} team. You're number {position} in line (about "
            f"{minutes} min). They'll see everything you've told me, so you won't need to "
            "repeat yourself.")


def hold(position: int, wait_s: int) -> str:
    minutes = max(1, round(wait_s / 60))
    return (f"You are number {position} in line. The estimated wait is about {minutes} "
            f"minute{'s' if minutes != 1 else ''}. Thanks for holding.")
