"""Console frame ids end to end, on real PostgreSQL and Valkey, the agent socket and the Twilio
stand-in: a `message`, `note` or `template` frame sent again with the same `id` (a console
resending after its connection dropped) is sent, kept and recorded once, and the repeat is
answered with the first one's state; a bad id is refused; two ids with the same words are two
messages whose statuses name each."""

from __future__ import annotations

import asyncio
import json
import uuid

from service.appkeys import EVENTS
from tests.test_agents import app_settings, instance, twilio  # noqa: F401 (fixtures)
from tests.test_message_templates import FILLED, named_customer, window_closed, with_agent
from tests.test_message_templates import app_settings as template_settings  # noqa: F401
from tests.test_notes import console_of, error_after, sms_contact_with, transcript
from tests.test_outbox import Console, outbox_rows, wait_for


async def events_of(client, db, kind: str) -> list[dict]:
    assert await client.app[EVENTS].flush()
    rows = await db.fetch("SELECT data FROM contact_events WHERE kind = $1 ORDER BY seq", kind)
    return [json.loads(r["data"]) for r in rows]


def status_for(message_id: str, state: str | None = None):
    return lambda f: (f["type"] == "message_status" and f["message_id"] == message_id
                      and state in (None, f["state"]))


def count(console: Console, predicate) -> int:
    return sum(1 for frame in console.frames if predicate(frame))


async def test_a_message_sent_again_with_its_id_goes_once_and_the_repeat_gets_its_status(
        app_settings, db, twilio):  # noqa: F811
    standin, _ = twilio
    async with instance(app_settings) as client:
        console, contact_id, token = await sms_contact_with(client, db, standin)
        message_id = str(uuid.uuid4())
        frame = {"type": "message", "contact_id": contact_id, "text": "Let me check that.",
                 "id": message_id}
        await console.send(**frame)
        await console.wait(status_for(message_id, "sent"))

        again = await console_of(client, token, available=False)  # as after a reconnect
        await again.send(**frame)
        answer = await again.wait(status_for(message_id))
        assert (answer["state"], answer["text"]) == ("sent", "Let me check that.")
        await console.send(**frame)  # and on the first console, too
        await wait_for(lambda: count(console, status_for(message_id, "sent")) == 2)

        await asyncio.sleep(0.5)
        assert standin.bodies().count("Let me check that.") == 1
        rows = [r for r in await outbox_rows(db) if r["id"] == message_id]
        assert [(r["action"], r["state"]) for r in rows] == [("send", "sent")]
        lines = [line for line in await transcript(client, contact_id)
                 if line.get("text") == "Let me check that."]
        assert [(line["from"], line["id"]) for line in lines] == [("agent", message_id)]
        said = [e for e in await events_of(client, db, "agent_message")
                if e["text"] == "Let me check that."]
        assert [e["message_id"] for e in said] == [message_id]
        assert console.errors() == [] and again.errors() == []


async def test_a_repeat_while_twilio_retries_gets_queued_and_sends_once_when_it_is_back(
        app_settings, db, twilio):  # noqa: F811
    standin, _ = twilio
    async with instance(app_settings) as client:
        console, contact_id, token = await sms_contact_with(client, db, standin)
        standin.fail_with = 503
        message_id = str(uuid.uuid4())
        frame = {"type": "message", "contact_id": contact_id, "text": "One moment please.",
                 "id": message_id}
        await console.send(**frame)
        await console.wait(lambda f: status_for(message_id, "queued")(f) and f["reason"])
        again = await console_of(client, token, available=False)
        await again.send(**frame)
        answer = await again.wait(lambda f: status_for(message_id)(f)
                                  and again.frames.index(f) > _last_assigned(again))
        assert answer["state"] == "queued" and "503" in answer["reason"]
        standin.fail_with = None
        await again.wait(status_for(message_id, "sent"))
        await asyncio.sleep(0.5)
        assert standin.bodies().count("One moment please.") == 1
        assert len([r for r in await outbox_rows(db) if r["id"] == message_id]) == 1


def _last_assigned(console: Console) -> int:
    kinds = [f["type"] for f in console.frames]
    return len(kinds) - 1 - kinds[::-1].index("assigned")


async def test_a_note_sent_again_with_its_id_is_kept_once_and_pushed_again(
        app_settings, db, twilio):  # noqa: F811
    standin, _ = twilio
    async with instance(app_settings) as client:
        console, contact_id, token = await sms_contact_with(client, db, standin)
        note_id = str(uuid.uuid4())
        frame = {"type": "note", "contact_id": contact_id, "text": "Asked for a refund twice",
                 "id": note_id}

        def echo(f) -> bool:
            return f["type"] == "note" and f["note"].get("id") == note_id

        await console.send(**frame)
        first = await console.wait(echo)
        again = await console_of(client, token, available=False)
        await again.send(**frame)
        repeated = await again.wait(echo)
        assert repeated["note"] == first["note"]  # the note kept, as it was kept
        await asyncio.sleep(0.3)
        notes = [line for line in await transcript(client, contact_id)
                 if line.get("from") == "note"]
        assert [(n["text"], n["id"]) for n in notes] == [("Asked for a refund twice", note_id)]
        added = await events_of(client, db, "note_added")
        assert [e["note_id"] for e in added] == [note_id]
        assert "Asked for a refund twice" not in standin.bodies()
        assert console.errors() == [] and again.errors() == []


async def test_a_template_sent_again_with_its_id_goes_once(
        template_settings, db, twilio, redis_client):  # noqa: F811
    standin, _ = twilio
    await named_customer(db, redis_client)
    async with instance(template_settings) as client:
        console, contact_id = await with_agent(client, db, standin)
        await window_closed(redis_client, contact_id)
        message_id = str(uuid.uuid4())
        frame = {"type": "template", "contact_id": contact_id, "template_id": "follow_up",
                 "id": message_id}
        await console.send(**frame)
        await console.wait(status_for(message_id, "sent"))
        await console.send(**frame)
        await wait_for(lambda: count(console, status_for(message_id, "sent")) == 2)
        await asyncio.sleep(0.5)
        assert len(standin.templated()) == 1
        rows = [r for r in await outbox_rows(db) if r["action"] == "template"]
        assert [(r["id"], r["state"]) for r in rows] == [(message_id, "sent")]
        from tests.test_message_templates import transcript as lines_of
        lines = [line for line in await lines_of(redis_client, contact_id)
                 if line.get("template")]
        assert [(line["text"], line["id"]) for line in lines] == [(FILLED, message_id)]
        said = [e for e in await events_of(client, db, "agent_message") if e.get("template")]
        assert [(e["message_id"], e["template"]) for e in said] == [(message_id, "follow_up")]
        assert console.errors() == []


async def test_a_bad_id_is_refused_naming_it_and_changes_nothing(
        app_settings, db, twilio):  # noqa: F811
    standin, _ = twilio
    async with instance(app_settings) as client:
        console, contact_id, _ = await sms_contact_with(client, db, standin)
        before = len(await transcript(client, contact_id))
        sent = len(standin.messages)
        upper = str(uuid.uuid4()).upper()
        for kind, bad in (("message", "not-a-uuid"), ("message", upper), ("message", 42),
                          ("note", "1234"), ("template", "")):
            refused = await error_after(console, type=kind, contact_id=contact_id,
                                        text="Hello", template_id="follow_up", id=bad)
            assert (refused["code"], refused["id"], refused["contact_id"]) == (
                "bad_frame", bad, contact_id)
            assert "UUID" in refused["message"] and repr(bad) in refused["message"]

        message_id = str(uuid.uuid4())  # a message's id cannot be a note's
        await console.send(type="message", contact_id=contact_id, text="Hi", id=message_id)
        await console.wait(status_for(message_id, "sent"))
        reused = await error_after(console, type="note", contact_id=contact_id, text="x",
                                   id=message_id)
        assert (reused["code"], reused["id"]) == ("bad_frame", message_id)

        not_yours = await error_after(console, type="message", contact_id="nobody",
                                      text="Hi", id=str(uuid.uuid4()))
        assert not_yours["code"] == "not_assigned" and "id" in not_yours
        await asyncio.sleep(0.3)
        assert len(standin.messages) == sent + 1
        assert len(await transcript(client, contact_id)) == before + 1


async def test_two_ids_with_the_same_words_are_two_messages_each_with_its_status(
        app_settings, db, twilio):  # noqa: F811
    standin, _ = twilio
    async with instance(app_settings) as client:
        console, contact_id, _ = await sms_contact_with(client, db, standin)
        first, second = str(uuid.uuid4()), str(uuid.uuid4())
        standin.refuse_with_code = 21610  # the first is refused for good, the second goes
        await console.send(type="message", contact_id=contact_id, text="Thanks!", id=first)
        refused = await console.wait(lambda f: f["type"] == "error"
                                     and f["code"] == "delivery_failed")
        assert refused["id"] == first
        standin.refuse_with_code = None
        await console.send(type="message", contact_id=contact_id, text="Thanks!", id=second)
        await console.wait(status_for(second, "sent"))
        assert console.statuses(first)[-1] == "failed"
        assert "sent" not in console.statuses(first)
        assert standin.bodies().count("Thanks!") == 1  # the refused one never went
        rows = [r for r in await outbox_rows(db) if r["id"] in (first, second)]
        assert [(r["id"], r["state"]) for r in rows] == [(first, "failed"), (second, "sent")]
        lines = [line["id"] for line in await transcript(client, contact_id)
                 if line.get("text") == "Thanks!"]
        assert lines == [first, second]

        third = str(uuid.uuid4())  # and two that both go: two sends
        await console.send(type="message", contact_id=contact_id, text="Thanks!", id=third)
        await console.wait(status_for(third, "sent"))
        assert standin.bodies().count("Thanks!") == 2


async def test_a_line_kept_whose_job_was_never_recorded_is_sent_once_by_the_repeat(
        app_settings, db, twilio):  # noqa: F811
    """The instance that kept the line stopped before recording its job: the console's
    repeat records and sends it, once, with one event and still one line."""
    from service.appkeys import HANDOFF
    standin, _ = twilio
    async with instance(app_settings) as client:
        console, contact_id, _ = await sms_contact_with(client, db, standin)
        message_id = str(uuid.uuid4())
        context = client.app[HANDOFF].context
        async with context.leased_contact(contact_id) as (key, conv):  # what it left behind
            conv["transcript"].append({"from": "agent", "text": "Are you there?",
                                       "at": 1.0, "id": message_id})
            await context.save(key, conv, summary=False)
        await console.send(type="message", contact_id=contact_id, text="Are you there?",
                           id=message_id)
        await console.wait(status_for(message_id, "sent"))
        await asyncio.sleep(0.3)
        assert standin.bodies().count("Are you there?") == 1
        lines = [line for line in await transcript(client, contact_id)
                 if line.get("id") == message_id]
        assert len(lines) == 1
        said = [e for e in await events_of(client, db, "agent_message")
                if e.get("message_id") == message_id]
        assert len(said) == 1


async def test_an_id_of_another_contacts_message_is_refused_and_nothing_is_kept(
        app_settings, db, twilio):  # noqa: F811
    from service.appkeys import OUTBOX
    from tests.test_outbox import _conv
    standin, _ = twilio
    async with instance(app_settings) as client:
        console, contact_id, _ = await sms_contact_with(client, db, standin)
        taken = str(uuid.uuid4())
        other = _conv(1)
        await client.app[OUTBOX].submit(other, "send", {"text": "Elsewhere"}, None, taken)
        await wait_for(lambda: "Elsewhere" in standin.bodies())
        before = len(await transcript(client, contact_id))
        refused = await error_after(console, type="message", contact_id=contact_id,
                                    text="Mine", id=taken)
        assert (refused["code"], refused["id"]) == ("bad_frame", taken)
        assert "already used" in refused["message"]
        await asyncio.sleep(0.3)
        assert "Mine" not in standin.bodies()
        assert len(await transcript(client, contact_id)) == before  # taken back out
        assert not [e for e in await events_of(client, db, "agent_message")
                    if e.get("message_id") == taken]


async def test_the_same_frame_on_two_consoles_at_once_goes_once(
        app_settings, db, twilio):  # noqa: F811
    standin, _ = twilio
    async with instance(app_settings) as client:
        console, contact_id, token = await sms_contact_with(client, db, standin)
        other = await console_of(client, token, available=False)
        for n in range(5):
            message_id = str(uuid.uuid4())
            words = f"Checking that now ({n})."
            frame = {"type": "message", "contact_id": contact_id, "text": words,
                     "id": message_id}
            await asyncio.gather(console.send(**frame), other.send(**frame))
            await console.wait(status_for(message_id, "sent"))
            await other.wait(status_for(message_id, "sent"))
            await wait_for(lambda: words in standin.bodies())
        await asyncio.sleep(0.5)
        bodies = [b for b in standin.bodies() if b.startswith("Checking that now")]
        assert sorted(bodies) == [f"Checking that now ({n})." for n in range(5)]
        lines = [line for line in await transcript(client, contact_id)
                 if line.get("text", "").startswith("Checking that now")]
        assert len(lines) == 5
        said = [e for e in await events_of(client, db, "agent_message")
                if e["text"].startswith("Checking that now")]
        assert len(said) == 5
        assert console.errors() == [] and other.errors() == []
