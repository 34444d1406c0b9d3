"""Why the customer is contacting, from one message or key press. Pure: no I/O, so the
conversation and `switchboard simulate` (replaying past traffic) share it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import structlog

from service.rules.experiments import ESCALATION_REASON as EXPERIMENT_REASON
from service.rules.experiments import Arm
from service.rules.loader import Rules
from service.rules.routing import Decision
from service.understanding.classifier import Prediction, wants_agent

log = structlog.get_logger(__name__)

@dataclass(frozen=True, slots=True)
class Understood:
    outcome: Literal["agent", "classified", "missed"]
    contact_type: str | None = None
    confidence: float = 0.0
    via: str = ""  # classified: menu (a key), speech or classifier
    reason: str = ""  # missed: invalid_input, out_of_scope or low_confidence
    ranked: tuple[tuple[str, float], ...] = ()  # missed: what to offer in a "did you mean"


def understand(rules: Rules, kind: str, text: str, input_confidence: float | None = None,
               menu_offered: bool = True, prediction: Prediction | None = None) -> Understood:
    """`kind` is the Inbound kind: "digits" for a key press, else words typed or spoken
    (`input_confidence` is the speech recogniser's). A key picks a contact type only when
    the phone menu was offered (`menu_offered`); 0 asks for a person at any time.
    `prediction`: the classifier's for `text` when the caller already has it."""
    if asks_for_agent(kind, text):
        return Understood("agent")
    if kind == "digits":
        chosen = next((t.id for t in rules.catalog.types.values() if str(t.ivr_digit) == text),
                      None) if menu_offered else None
        return Understood("classified", chosen, 1.0, "menu") if chosen else \
            Understood("missed", reason="invalid_input")
    prediction = prediction or rules.classifier.predict(text)
    confidence = prediction.confidence * (input_confidence or 1.0)
    if confidence >= rules.catalog.threshold:
        return Understood("classified", prediction.contact_type, confidence,
                          "speech" if input_confidence else "classifier")
    if prediction.out_of_scope:  # not something we handle: offer the main menu instead
        return Understood("missed", reason="out_of_scope", ranked=main_menu(rules))
    return Understood("missed", reason="low_confidence", ranked=prediction.ranked)


async def understand_off_loop(rules: Rules, kind: str, text: str,
                              input_confidence: float | None = None,
                              menu_offered: bool = True) -> Understood:
    """understand(), with the classifier's encoder stage in its own thread (the service's
    way: its milliseconds no longer hold up the event loop's other requests). Should the
    stage fail, the n-gram model's prediction serves: the customer is still understood."""
    prediction = None
    if kind != "digits" and not asks_for_agent(kind, text) and rules.classifier is not None:
        try:
            prediction = await rules.classifier.predict_off_loop(text)
        except Exception:
            log.exception("classifier.encoder_stage_failed")
            prediction = rules.classifier.cheap_prediction(text)
    return understand(rules, kind, text, input_confidence, menu_offered, prediction)


def asks_for_agent(kind: str, text: str) -> bool:
    """0 on the keypad, or words asking for a person: honoured at any step."""
    return (kind == "digits" and text == "0") or wants_agent(text)


def main_menu(rules: Rules, size: int = 3) -> tuple[tuple[str, float], ...]:
    """The catalog's most common types (the phone menu's first keys), for "did you mean"."""
    keyed = sorted((t for t in rules.catalog.types.values() if t.ivr_digit),
                   key=lambda t: t.ivr_digit)
    return tuple((t.id, 0.0) for t in keyed[:size])


def escalation_reason(rules: Rules, contact_type: str, decision: Decision,
                      arm: Arm | None = None) -> str | None:
    """Why a classified contact goes straight to an agent; None: self-service first. An
    experiment's arm may send it to an agent or give it self-service of its own."""
    if not decision.self_service:
        return decision.reason
    if arm is not None and arm.agent:
        return EXPERIMENT_REASON
    if arm is not None and (arm.answer or arm.flow):
        return None
    if rules.catalog.types[contact_type].agent_only:
        return "no_self_service"
    return None
