"""What auditors check in the logs at INFO: no customer's words, no secret."""

from __future__ import annotations

import pytest

from service.agents.desk import add_agent
from tests.conftest import AUTH_TOKEN, service_logs
from tests.test_agents import (  # noqa: F401
    ALL_SKILLS,
    AgentSocket,
    app_settings,
    instance,
    open_chat,
    twilio,  # noqa: F401
)
from tests.twilio_driver import text

WORDS = ("zebra-pancake-sonnet", "quokka-lantern-tuesday", "marzipan-orbit-cello")


@pytest.fixture
def info_logs(capsys):
    """The service's own log output as production writes it (JSON, INFO)."""
    with service_logs(capsys, "info") as read:
        yield read


async def test_no_message_body_or_secret_is_logged_at_info(app_settings, db, info_logs):  # noqa: F811
    async with instance(app_settings) as client:
        token = await add_agent(db, "Kim", ALL_SKILLS, None)
        agent = AgentSocket(await client.ws_connect("/agent/ws"))
        await agent.send(type="auth", token=token)
        await agent.next("ready")
        await agent.send(type="presence", status="available")
        await agent.next("presence")
        await text(client, "+15555550188", f"my parcel {WORDS[0]} never came")
        await text(client, "+15555550188", "I want to talk to a human")
        offer = await agent.next("offer")
        await agent.send(type="accept", contact_id=offer["contact_id"])
        await agent.next("assigned")
        await agent.send(type="message", contact_id=offer["contact_id"],
                         text=f"sorry about {WORDS[1]}")
        chat, _ = await open_chat(client)
        await chat.send(type="message", text=f"hello {WORDS[2]}")
        await chat.next("message")
        await agent.ws.close()
        await chat.ws.close()
    output = info_logs()
    assert '"event"' in output  # the service logged while we watched
    for secret in (*WORDS, AUTH_TOKEN, token):
        assert secret not in output, f"{secret!r} is in the logs"
