"""What the bot says, worded for each prompt style a channel declares (model.PromptStyle):
typed replies ("text"), a widget with buttons ("buttons"), keys on the phone ("keys").

One place for customer-facing wording, so the same flow reads right everywhere.
"""

from __future__ import annotations

from typing import Sequence

from service.model import PromptStyle
from service.rules.catalog import Catalog

CONFIRM: dict[PromptStyle, str] = {
    "text": "Did that help? Reply YES or NO.",
    "buttons": "Did that help?",
    "keys": "Did that help? Press 1 for yes or 2 for no, or say yes or no.",
}
RESOLVED: dict[PromptStyle, str] = {
    "text": "Great, glad that helped! Text us any time if you need anything else.",
    "buttons": "Great, glad that helped! Come back any time.",
    "keys": "Great, glad that helped. Thanks for calling, goodbye.",
}
# Answers to the carrier keywords (HELP, START) on channels that have them.
SMS_HELP = ("Support by text: tell us what you need in a few words, or reply AGENT to talk to "
            "a person. Reply STOP to opt out. Msg&data rates may apply.")
SLOW_DOWN = ("You're sending messages faster than we can read them. We'll answer your next "
             "message in a moment.")
SMS_RESUBSCRIBED = "You're subscribed again. Text us any time."
FAILED_VOICE = "Sorry, we're having technical trouble. Please hold for the next available agent."


def greeting(catalog: Catalog, style: PromptStyle) -> str:
    if style != "keys":
        return "Hi! Tell me in a few words what you need help with."
    keys = " ".join(f"{t.label}: press {t.ivr_digit}."
                    for t in sorted(catalog.types.values(), key=lambda t: t.ivr_digit or 99)
                    if t.ivr_digit)
    return (f"Thanks for calling. {keys} To talk to a person, press 0. Or tell me in a few "
            "words why you are calling.")


def repeat_greeting(label: str, style: PromptStyle) -> str:
    if style == "keys":
        return (f"Welcome back. Are you calling about your {label.lower()} question from "
                "earlier? Press 1 for yes, or 2 for something else.")
    return f"Welcome back. Is this about your {label.lower()} question from earlier?"


def not_understood(catalog: Catalog, menu: Sequence[str], style: PromptStyle) -> str:
    if style == "keys":
        return "Sorry, I didn't get that. " + greeting(catalog, style).removeprefix(
            "Thanks for calling. ")
    options = " ".join(f"{i}) {catalog.label(t)}" for i, t in enumerate(menu, 1))
    if style == "buttons":
        return ("Sorry, I'm not sure I understood. Is it about one of these? Or tell me in "
                "other words.")
    return (f"Sorry, I'm not sure I understood. Is it about: {options}? Reply with a number, "
            "or tell me in other words. Reply AGENT to talk to a person.")


def queued(team: str, position: int, wait_s: int, style: PromptStyle) -> str:
    minutes = max(1, round(wait_s / 60))
    if style == "keys":
        return (f"I'm connecting you to our {team} team. You are number {position} in line, "
                f"about {minutes} minutes. They will see everything you told me.")
    return (f"I'm passing you to our {team} team. You're number {position} in line (about "
            f"{minutes} min). They'll see everything you've told me, so you won't need to "
            "repeat yourself.")


def hold(position: int, wait_s: int) -> str:
    minutes = max(1, round(wait_s / 60))
    return (f"You are number {position} in line. The estimated wait is about {minutes} "
            f"minute{'s' if minutes != 1 else ''}. Thanks for holding.")
