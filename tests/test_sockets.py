"""The sockets: a reconnected console keeps its context; no socket negotiates compression."""

from __future__ import annotations

from service.agents.desk import add_agent
from tests.test_agents import (  # noqa: F401
    ALL_SKILLS,
    AgentSocket,
    ChatSocket,
    app_settings,
    instance,
    twilio,
)
from tests.twilio_driver import text

CUSTOMER = "+15555550177"


async def connect(client, token: str) -> AgentSocket:
    ws = await client.ws_connect("/agent/ws")
    await ws.send_json({"type": "auth", "token": token})
    agent = AgentSocket(ws)
    await agent.next("ready")
    return agent


async def test_a_reconnected_console_keeps_the_whole_context_and_when_it_escalated(
        app_settings, db):  # noqa: F811
    async with instance(app_settings) as client:
        token = await add_agent(db, "Robin", ALL_SKILLS, None)
        agent = await connect(client, token)
        await agent.send(type="presence", status="available")
        await agent.next("presence")
        await text(client, CUSTOMER, "I forgot my password and can't log in")
        await text(client, CUSTOMER, "no")
        offer = await agent.next("offer")
        await agent.send(type="accept", contact_id=offer["contact_id"])
        await agent.next("assigned")
        await agent.ws.close()

        again = await connect(client, token)
        assigned = await again.next("assigned")
        assert assigned["contact_id"] == offer["contact_id"]
        context, offered = assigned["context"], offer["context"]
        assert context["escalated_at"] == offered["escalated_at"] is not None
        for key in ("customer", "channel", "contact_type", "reason", "self_service_steps",
                    "earlier_contacts"):
            assert context[key] == offered[key], key
        assert context["transcript"][:len(offered["transcript"])] == offered["transcript"]
        await again.ws.close()


async def test_sockets_refuse_per_message_compression_a_browser_offers(app_settings, db):  # noqa: F811
    async with instance(app_settings) as client:
        for path in ("/chat/ws", "/agent/ws"):
            ws = await client.ws_connect(path, compress=15)  # offers permessage-deflate
            assert ws.compress == 0, path  # plain frames: no deflate context per socket
            await ws.close()
        chat = await client.ws_connect("/chat/ws", compress=15)
        await chat.send_json({"type": "start", "session": None})
        assert (await ChatSocket(chat).next("session"))["session"]  # and it still works
        await chat.close()
