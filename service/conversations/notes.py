"""Private notes on a contact: words for agents and supervisors that the customer never sees.

An agent who holds a contact writes one from the console (`note` frame); a supervisor whispers
one to a live contact over the API (`POST /api/contacts/{id}/notes`). Either way the note is
masked like the customer's words (redaction.py), kept in the contact's transcript as a private
line (`from: "note"`, never replayed to the customer nor sent on any channel), recorded as a
`note_added` event and pushed to the agent who holds the contact. A waiting contact's queue
entry gets it too, so the next agent (a transfer) sees it; the contact's summary keeps the last
few, so a returning customer's earlier contacts show them (docs/agents.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from service.conversations.handoff import Handoff, HandoffError, kept_line
from service.conversations.record import NOTE, Conversation

log = structlog.get_logger(__name__)

MAX_NOTE_CHARS = 2000
Role = Literal["agent", "supervisor"]


@dataclass(frozen=True)
class NoteAuthor:
    """Who wrote a note: an agent (their id and name) or a supervisor (a token's name)."""
    role: Role
    name: str
    id: str | None = None


@dataclass(frozen=True)
class Note:
    """One note as kept on the contact."""
    contact_id: str
    text: str
    author: NoteAuthor
    at: float
    id: str | None = None  # the console's id of its note frame (a resent frame names it)

    def line(self) -> dict[str, Any]:
        """The note's private line in the contact's transcript."""
        return {"from": NOTE, "private": True, "text": self.text, "at": self.at,
                "author_id": self.author.id, "author_name": self.author.name,
                "role": self.author.role, **({"id": self.id} if self.id else {})}

    @classmethod
    def of_line(cls, contact_id: str, line: dict[str, Any]) -> "Note":
        """A note kept in a transcript, as a Note again."""
        return cls(contact_id, line["text"], NoteAuthor(line["role"], line["author_name"],
                                                        line.get("author_id")),
                   line["at"], line.get("id"))

    def frame(self) -> dict[str, Any]:
        """The `note` frame pushed to the agent who holds the contact."""
        return {"type": "note", "contact_id": self.contact_id, "note": self.line()}


def checked_text(text: Any) -> str:
    """A note's text as written, trimmed; HandoffError('bad_frame') when it cannot be one."""
    if not isinstance(text, str) or not text.strip():
        raise HandoffError("bad_frame", "a note needs text")
    if len(text) > MAX_NOTE_CHARS:
        raise HandoffError("bad_frame", f"a note is at most {MAX_NOTE_CHARS} characters "
                                        f"({len(text)} given)")
    return text.strip()


class Notes:
    """Notes of live contacts; through the hand-off's context store, bus and event log."""

    def __init__(self, handoff: Handoff):
        self._handoff = handoff

    async def add(self, contact_id: str, author: NoteAuthor, text: Any,
                  holder_only: bool = False, note_id: str | None = None) -> Note:
        """Keep a note on a live contact and push it to its agent; with `holder_only` only
        the agent who holds it may (HandoffError 'not_assigned' otherwise). A `note_id`
        already kept on the contact (a console resending) keeps nothing new: the note kept
        is pushed again."""
        text = checked_text(text)
        handoff = self._handoff
        if holder_only and await handoff.router.assigned_agent(contact_id) != author.id:
            raise HandoffError("not_assigned", "this contact is not assigned to you")
        async with handoff.context.leased_contact(contact_id) as found:
            key, conv = _live(contact_id, found)
            kept = kept_line(conv, note_id, NOTE) if note_id else None
            if kept is not None:
                return await self._again(conv, Note.of_line(contact_id, kept))
            note = Note(contact_id, handoff.rules().redactor.mask(text), author, time.time(),
                        note_id)
            conv["transcript"].append(note.line())
            await handoff.context.save(key, conv)  # the summary keeps the latest notes
        await handoff.router.append_message(contact_id, note.line())  # a waiting entry's
        handoff.record_conv("note_added", conv, author_id=author.id,
                             author_name=author.name, role=author.role, text=note.text,
                             **({"note_id": note_id} if note_id else {}))
        if conv.get("agent_id"):
            await self._push(conv["agent_id"], note)
        log.info("notes.added", contact_id=contact_id, role=author.role)
        return note

    async def _again(self, conv: Conversation, note: Note) -> Note:
        """A repeated note frame: the note kept the first time, pushed again so the console
        that resent it settles; nothing recorded."""
        log.info("notes.repeat_ignored", contact_id=note.contact_id, note_id=note.id)
        if conv.get("agent_id"):
            await self._push(conv["agent_id"], note)
        return note

    async def _push(self, agent_id: str, note: Note) -> None:
        """Live to the agent's consoles; the note is kept already, so a bus that fails only
        delays it until the console re-syncs (the `assigned` frame's context holds it)."""
        try:
            await self._handoff.bus.publish(f"agent:{agent_id}", note.frame())
        except Exception as exc:
            log.warning("notes.push_failed", contact_id=note.contact_id, error=str(exc))


def _live(contact_id: str, found: tuple[str, Conversation] | None) -> tuple[str, Conversation]:
    """The contact's conversation while it is open, else HandoffError naming why."""
    if found is None:
        raise HandoffError("unknown_contact", f"there is no live contact {contact_id!r}")
    key, conv = found
    if conv["contact_id"] != contact_id or conv["status"] == "closed":
        # (the address's next contact may have taken the conversation's key)
        raise HandoffError("contact_closed", f"contact {contact_id} has ended; notes are for "
                                          "live contacts")
    return key, conv
