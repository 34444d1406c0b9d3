"""Every channel in the composition root's list keeps the contract the core relies on, so a
forgotten piece fails here instead of a customer."""

from __future__ import annotations

import inspect
from typing import get_args

import pytest

from channels.base import ChannelConfig
from service.agents.queues import Dispatcher
from service.app import create_app
from service.appkeys import CHANNEL_LIST
from service.channel_list import CHANNEL_TYPES, channel_names
from service.conversations import prompts
from service.model import (
    ChannelTraits,
    DeliveryFailed,
    Destination,
    IdentityKind,
    PromptStyle,
    Reply,
)
from service.rules.loader import load_rules
from service.rules.yamlfile import ConfigError
from tests.conftest import RULES_DIR
from tests.test_rules_validation import ROUTES, write_rules

IDS = [c.traits.name for c in CHANNEL_TYPES]


async def _nothing(inbound) -> Reply:
    return Reply()


def test_every_channel_value_has_exactly_one_channel():
    assert sorted(IDS) == sorted(channel_names())
    assert len(set(IDS)) == len(IDS) == 4


@pytest.mark.parametrize("channel", CHANNEL_TYPES, ids=IDS)
def test_traits_are_declared_and_valid(channel):
    traits = channel.traits
    assert isinstance(traits, ChannelTraits)
    assert traits.identity in get_args(IdentityKind)
    assert traits.prompt_style in get_args(PromptStyle)
    assert traits.default_capacity >= 1
    assert traits.route_prefix.startswith("/") and not traits.route_prefix.endswith("/")
    assert traits.end_outcome


@pytest.mark.parametrize("channel", CHANNEL_TYPES, ids=IDS)
def test_prompts_exist_for_its_style(channel):
    style = channel.traits.prompt_style
    catalog = load_rules(RULES_DIR, with_classifier=False).catalog
    assert prompts.CONFIRM[style] and prompts.RESOLVED[style]
    for text in (prompts.greeting(catalog, style), prompts.repeat_greeting("Refund", style),
                 prompts.not_understood(catalog, list(catalog.types)[:2], style),
                 prompts.queued("Care", 2, 300, style)):
        assert text.strip()


@pytest.mark.parametrize("channel", CHANNEL_TYPES, ids=IDS)
def test_routes_are_under_its_own_prefix(channel):
    instance = channel(ChannelConfig("https://example.test", "token"), _nothing)
    paths = [route.path for route in instance.routes()]
    assert paths
    prefix = channel.traits.route_prefix
    assert all(p == prefix or p.startswith(prefix + "/") for p in paths), paths
    others = [c.traits.route_prefix for c in CHANNEL_TYPES if c is not channel]
    assert prefix not in others


@pytest.mark.parametrize("channel", CHANNEL_TYPES, ids=IDS)
def test_outbound_methods_are_present(channel):
    for name in ("send_text", "connect_agent", "join_agent", "release_agent", "drop_agent",
                 "call_back", "close", "ask", "find_sent", "fetch_attachment",
                 "send_template"):
        method = getattr(channel, name, None)
        assert method is not None and inspect.iscoroutinefunction(method), name


@pytest.mark.parametrize("channel", CHANNEL_TYPES, ids=IDS)
async def test_a_channel_that_cannot_call_back_says_so_in_its_traits(channel):
    """The core offers a callback only where the traits say the channel places calls; the
    others refuse a call_back with DeliveryFailed (never a provider request)."""
    instance = channel(ChannelConfig("https://example.test", "token"), _nothing)
    to = Destination("contact-1", "+15555550100", "+15005550006", "thread-1")
    if channel.traits.calls_back:
        assert channel.traits.live_call  # a callback keeps its place like a held call
        assert any(route.path.endswith("/callback-status") for route in instance.routes())
        return
    with pytest.raises(DeliveryFailed) as refused:
        await instance.call_back(to, 1)
    assert refused.value.reason == "not_call" and not refused.value.retryable


@pytest.mark.parametrize("channel", CHANNEL_TYPES, ids=IDS)
async def test_a_channel_without_templates_refuses_one_without_asking_its_provider(channel):
    """Message templates go only where the traits say so (`templates_after_window`, which
    needs a reply window to matter); elsewhere send_template refuses, never retried."""
    if channel.traits.templates_after_window:
        assert channel.traits.reply_window_s and channel.traits.agent_can_type
        return
    instance = channel(ChannelConfig("https://example.test", "token"), _nothing)
    to = Destination("contact-1", "+15555550100", "+15005550006", "thread-1")
    with pytest.raises(DeliveryFailed) as refused:
        await instance.send_template(to, "HX" + "0" * 32, {"1": "Ana"})
    assert refused.value.reason == "not_template" and not refused.value.retryable


@pytest.mark.parametrize("channel", CHANNEL_TYPES, ids=IDS)
def test_agents_get_capacity_for_it(channel, settings):
    app = create_app(settings)
    names = [c.traits.name for c in app[CHANNEL_LIST]]
    defaults = {c.traits.name: c.traits.default_capacity for c in app[CHANNEL_LIST]}
    dispatcher = Dispatcher(None, default_capacity=defaults)  # type: ignore[arg-type]
    capacity = dispatcher.capacity_of({"capacity": {"voice": 1}})
    assert channel.traits.name in names
    assert capacity[channel.traits.name] >= 1


@pytest.mark.parametrize("channel", CHANNEL_TYPES, ids=IDS)
def test_routing_accepts_its_channel_value(channel, tmp_path):
    name = channel.traits.name
    directory = write_rules(tmp_path, routes=ROUTES.replace("contact_type = track_order",
                                                            f"channel = {name}"))
    tree = load_rules(directory, with_classifier=False).tree
    decision = tree.decide({"channel": name, "contact_type": None, "confidence": None,
                            "repeat_contact": False, "hours": ()})
    assert decision.route_path != tree.decide({"channel": "elsewhere", "contact_type": None,
                                               "confidence": None, "repeat_contact": False,
                                               "hours": ()}).route_path


@pytest.mark.parametrize("channel", CHANNEL_TYPES, ids=IDS)
def test_routes_name_only_the_channels_the_deployment_serves(channel, tmp_path):
    name = channel.traits.name
    directory = write_rules(tmp_path, routes=ROUTES.replace("contact_type = track_order",
                                                            f"channel = {name}"))
    others = tuple(n for n in IDS if n != name)
    with pytest.raises(ConfigError, match=f"unknown channel '{name}'"):
        load_rules(directory, with_classifier=False, channels=others)
