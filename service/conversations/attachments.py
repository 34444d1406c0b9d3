"""Files customers send with a message (a photo of a damaged parcel, a screenshot, a PDF): kept
on the contact, shown to its agent, fetched again through the contact's channel.

A message's attachments (`model.Attachment`, checked at the channel's edge) are numbered within
their contact (1, 2, ...) and kept on the conversation record (`attachments`: number, type, the
channel's own reference, when). The customer's transcript line and the agent's `message` frame
name them by number and type only; the `received` event keeps the reference too, so a
supervisor can still open one after the contact ended. The console fetches one by number
through `GET /api/contacts/{id}/attachments/{n}` (reporting/attachments_api.py): the agent who
holds the contact or a supervisor, the bytes from the channel's `fetch_attachment`. The core
never reads a reference: only the channel that made it does.

Agents send files too (`Attachments.send`, `POST /api/contacts/{id}/files`): on channels whose
traits have `sends_files`, the file is kept in the service's file store (`infra/files.py`: 5 MB,
images and PDFs recognised from their bytes), numbered among the contact's files and sent
through the outbox (action `file`) under the console's id, like an agent's text.
"""

from __future__ import annotations

from typing import Any, Sequence

import structlog

from service.conversations.handoff import Handoff, HandoffError, kept_line
from service.conversations.notes import NoteAuthor
from service.conversations.record import Conversation
from service.model import (
    Attachment,
    AttachmentBody,
    AttachmentUnavailable,
    FilesUnavailable,
    stored_ref,
)

log = structlog.get_logger(__name__)

MAX_PER_CONTACT = 100  # far beyond a real conversation; a flood past it is logged, not kept


def keep(conv: Conversation, attachments: Sequence[Attachment], now: float
         ) -> list[dict[str, Any]]:
    """Number a message's attachments within the contact and keep them on its record; the
    entries kept (number, type, reference)."""
    kept = conv.setdefault("attachments", [])
    added: list[dict[str, Any]] = []
    for attachment in attachments:
        if len(kept) >= MAX_PER_CONTACT:
            log.warning("attachments.over_limit", contact_id=conv.get("contact_id"),
                        dropped=len(attachments) - len(added), limit=MAX_PER_CONTACT)
            break
        entry = {"n": len(kept) + 1, "content_type": attachment.content_type,
                 "ref": attachment.ref, "at": now}
        kept.append(entry)
        added.append(entry)
    return added


def shown(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """What an agent and the transcript see of attachments: number and type."""
    return [{"n": entry["n"], "content_type": entry["content_type"]} for entry in entries]


def recorded(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the `received` event keeps of attachments: number, type and reference."""
    return [{"n": e["n"], "content_type": e["content_type"], "ref": e["ref"]} for e in entries]


def of_record(conv: Conversation, n: int) -> Attachment | None:
    """The contact's attachment number `n`, if it has one."""
    entry = next((e for e in conv.get("attachments", ()) if e["n"] == n), None)
    return Attachment(entry["content_type"], entry["ref"]) if entry else None


class Attachments:
    """Who may open a contact's attachments, and their bytes through its channel."""

    def __init__(self, handoff: Handoff):
        self._handoff = handoff

    async def live(self, contact_id: str, n: int, asker: NoteAuthor
                   ) -> tuple[str, Attachment] | None:
        """The live contact's channel and attachment `n`; None when the contact is not live.
        HandoffError: not_assigned (an agent who does not hold it), no_attachment."""
        if asker.role == "agent" and \
                await self._handoff.router.assigned_agent(contact_id) != asker.id:
            raise HandoffError("not_assigned", "this contact is not assigned to you")
        found = await self._handoff.conversation(contact_id)
        if found is None:
            if asker.role == "agent":  # assigned a moment ago, ended since
                raise HandoffError("unknown_contact", f"contact {contact_id} has ended")
            return None
        conv = found[1]
        attachment = of_record(conv, n)
        if attachment is None:
            raise HandoffError("no_attachment", f"contact {contact_id} has no attachment {n}")
        return conv["channel"], attachment

    async def fetch(self, channel: str, attachment: Attachment) -> AttachmentBody:
        """The attachment's bytes from the channel that received it (AttachmentUnavailable)."""
        outbound = self._handoff.channel(channel)
        if outbound is None:
            raise AttachmentUnavailable("unsupported", f"no channel {channel} here")
        return await outbound.fetch_attachment(attachment)

    async def send(self, agent: dict[str, Any], contact_id: str, data: bytes,
                   claimed_type: str, message_id: str) -> dict[str, Any] | None:
        """A file from the agent to their own contact: kept in the file store (FileRefused:
        empty, too large, not the type claimed), then sent through the outbox under
        `message_id`. A repeat of an id already kept stores nothing: its status frame."""
        _, conv = await self._handoff.assigned(agent, contact_id)
        channel = self._handoff.channel(conv["channel"])
        if channel is None or not channel.traits.sends_files or self._handoff.files is None:
            raise HandoffError("not_file", "this contact's channel cannot carry files")
        kept = kept_line(conv, message_id, "agent")
        if kept is not None and kept.get("attachments"):
            attachment = of_record(conv, kept["attachments"][0]["n"])
        else:
            try:
                stored = await self._handoff.files.put(data, claimed_type)
            except FilesUnavailable as exc:
                raise HandoffError("not_recorded", "the file was not sent: it could not be "
                                   "kept for sending; try again in a moment") from exc
            attachment = Attachment(stored.content_type, stored_ref(stored.id))
        if attachment is None:
            raise HandoffError("bad_frame", f"id {message_id} is already another message")
        return await self._handoff.agent_file(agent, contact_id, attachment, message_id)
