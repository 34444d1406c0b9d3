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
RESOLVED_THEN_SURVEY = "Great, glad that helped!"  # a survey question follows, on every style
# Answers to the carrier keywords (HELP, START) on channels that have them.
SMS_HELP = ("Support by text: tell us what you need in a few words, or reply AGENT to talk to "
            "a person. Reply STOP to opt out. Msg&data rates may apply.")
SLOW_DOWN = ("You're sending messages faster than we can read them. We'll answer your next "
             "message in a moment.")
# A message with files and no words, in self-service: the files are kept for an agent.
MEDIA_ONLY = ("Thanks, I've kept what you sent for our team, but I can't look at pictures or "
              "files myself. Please tell me in a few words what you need, or reply AGENT to "
              "talk to a person.")
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


def repeat_greeting(label: str, style: PromptStyle, when: str = "today") -> str:
    """Asks whether a returning customer is back about their last contact; `when` as
    templates.when says it ("today", "yesterday", "on Monday", "on 3 May")."""
    since = "earlier today" if when == "today" else when.removeprefix("on ")
    if style == "keys":
        return (f"Welcome back. Are you calling about your {label.lower()} question from "
                f"{since}? Press 1 for yes, or 2 for something else.")
    return f"Welcome back. Is this about your {label.lower()} question from {since}?"


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


# A queued caller's choice to be called back (conversations/callbacks.py), said after `hold`.
CALLBACK_OFFER = "To be called back instead and keep your place in line, press 1."
CALLBACK_CONFIRMED = ("Thanks. We'll call you back at this number when it's your turn, and "
                      "you keep your place in line. Goodbye.")
# A route's `closed: {callback: queue}`: the caller may be called back when agents are back.
CALLBACK_OFFER_CLOSED = ("To be called back at this number as soon as someone is available, "
                         "press 1. Otherwise, you can hang up.")
CALLBACK_WHEN_OPEN = ("Thanks. We'll call you back at this number as soon as someone is "
                      "available. Goodbye.")
CLOSED_GOODBYE = "Thanks for calling. Goodbye."


# ---- satisfaction surveys (conversations/surveys.py) -------------------------------------

SCALES = {"csat": (1, 5), "nps": (0, 10)}
_ASKED = {"csat": "How satisfied were you with the help you got today",
          "nps": "How likely are you to recommend us to a friend"}
_HOW: dict[PromptStyle, dict[str, str]] = {
    "text": {"csat": "? Reply with a number from 1 (not at all) to 5 (very), and a comment "
                     "after it if you like.",
             "nps": "? Reply with a number from 0 (not at all) to 10 (very likely), and a "
                    "comment after it if you like."},
    "buttons": {"csat": "? 1 is not at all, 5 is very.", "nps": "? 0 is not at all likely, "
                                                               "10 is very likely."},
    "keys": {"csat": "? Press 1 for not at all, up to 5 for very satisfied.",
             "nps": "? Press a number from 0 to 10, then the pound key."},
}
_AGAIN: dict[PromptStyle, str] = {
    "text": "Sorry, I need just a number from {low} to {high}. ",
    "buttons": "Sorry, please choose a number from {low} to {high}. ",
    "keys": "Sorry, I didn't get that. ",
}
SURVEY_THANKS: dict[PromptStyle, str] = {
    "text": "Thank you for your feedback!",
    "buttons": "Thank you for your feedback!",
    "keys": "Thank you for your feedback. Goodbye.",
}
SURVEY_LATE: dict[PromptStyle, str] = {
    "text": "Thanks! That survey has closed, but we've noted your answer.",
    "buttons": "Thanks! That survey has closed, but we've noted your answer.",
    "keys": "Thanks. That survey has closed. Goodbye.",
}
SURVEY_LET_GO: dict[PromptStyle, str] = {
    "text": "No problem, thanks anyway. Text us any time if you need anything.",
    "buttons": "No problem, thanks anyway.",
    "keys": "No problem. Goodbye.",
}


AFTER_AGENT_GOODBYE = "Thank you for calling. Goodbye."  # a call whose agent left, unsurveyed


def survey_question(kind: str, style: PromptStyle, wording: str | None = None) -> str:
    """The survey's question: the deployment's wording, or ours, then how to answer."""
    asked = (wording or _ASKED[kind]).rstrip(" ?")
    return asked + _HOW[style][kind]


def survey_again(kind: str, style: PromptStyle, wording: str | None = None) -> str:
    low, high = SCALES[kind]
    return _AGAIN[style].format(low=low, high=high) + survey_question(kind, style, wording)


def survey_scale(kind: str, style: PromptStyle) -> tuple[tuple[str, str], ...]:
    """(label, value) of each answer a widget shows or a one-key menu takes; none when the
    answer is typed or takes more than one key (0-10 on a phone ends with #)."""
    low, high = SCALES[kind]
    if style == "text" or (style == "keys" and high > 9):
        return ()
    return tuple((str(n), str(n)) for n in range(low, high + 1))
