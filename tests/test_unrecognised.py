"""Unrecognised traffic as catalog work: what customers said that the catalog did not cover,
sent through the public endpoints, clustered on the API and the CLI, and a cluster adopted
into the rules so the next similar message is understood."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from service.__main__ import main
from service.appkeys import EVENTS
from service.infra.tokens import create_token
from service.reporting.reports import iso
from service.rules.adopt import ADOPTED_FILE, AdoptError, add_training_file, adopt
from service.understanding.clusters import TFIDF, cluster, cluster_id
from tests.conftest import RULES_DIR, _clean_tables, with_settings
from tests.test_agents import instance, login, open_chat
from tests.test_cli import use_servers
from tests.twilio_driver import text
from tests.twilio_standin import start_standin

CLARIFYING = "Sorry, I'm not sure I understood."
CRYPTO = ("can i pay in crypto", "do you accept bitcoin", "i want to pay with bitcoin")
PROMO = ("my discount code does not work", "the promo code isn't working",
         "coupon rejected at checkout")
PAYMENT_METHODS_ANSWER = "We accept"
PROBE = "is paying in crypto possible"


@pytest.fixture
async def standin():
    server, _ = await start_standin()
    yield server
    await server.stop()


@pytest.fixture
def rules_copy(tmp_path) -> Path:
    """The example rules in a directory the test may write."""
    copy = tmp_path / "rules"
    shutil.copytree(RULES_DIR, copy)
    return copy


@pytest.fixture
async def service_settings(settings, standin, redis_client, rules_copy):
    await _clean_tables(settings.database_url)
    return with_settings(settings, twilio_api_base_url=standin.url,
                         twilio_account_sid="AC" + "1" * 32, rules_dir=rules_copy)


def digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


async def unrecognised_traffic(client, db) -> None:
    """Crypto payments by SMS from three customers; promo codes by chat (twice, so escalated,
    then an agent's type at wrap-up) and by SMS; one classified message an agent corrected."""
    for n, words in enumerate(CRYPTO):
        replies = await text(client, f"+1555555010{n}", words)
        assert replies[-1].startswith(CLARIFYING), replies
    agent = await login(client, db)
    chat, _ = await open_chat(client)
    await chat.next("status")
    for words in PROMO[:2]:
        await chat.send(type="message", text=words)
        await chat.next("message")
    offer = await agent.next("offer")
    assert offer["reason"] == "low_confidence"
    await agent.send(type="accept", contact_id=offer["contact_id"])
    await agent.next("assigned")
    await agent.send(type="wrap_up", contact_id=offer["contact_id"], resolved=True,
                     contact_type="payment_issue")
    await agent.next("wrapped_up")
    assert (await text(client, "+15555550200", PROMO[2]))[-1].startswith(CLARIFYING)
    await text(client, "+15555550300", "I need to track my order")
    await text(client, "+15555550300", "no")  # the answer did not help: an agent
    offer = await agent.next("offer")
    await agent.send(type="accept", contact_id=offer["contact_id"])
    await agent.next("assigned")
    await agent.send(type="wrap_up", contact_id=offer["contact_id"], resolved=True,
                     contact_type="delivery_period")
    await agent.next("wrapped_up")
    assert await client.app[EVENTS].flush()


def by_examples(report: dict) -> dict[frozenset, dict]:
    return {frozenset(c["examples"]): c for c in report["clusters"]}


async def test_unrecognised_traffic_is_clustered_and_an_adopted_cluster_is_then_understood(
        service_settings, db, rules_copy, monkeypatch, capsys, database_url, redis_url):
    async with instance(service_settings) as client:
        await unrecognised_traffic(client, db)
        path = "/api/reports/unrecognised"
        assert (await client.get(path)).status == 401
        token = await create_token(db, "ops", "tests")
        auth = {"Authorization": f"Bearer {token}"}
        assert (await client.get(f"{path}?from=tomorrow", headers=auth)).status == 400
        assert (await client.get(f"{path}?limit=0", headers=auth)).status == 400
        largest = await (await client.get(f"{path}?limit=1", headers=auth)).json()
        assert (len(largest["clusters"]), largest["clusters_total"]) == (1, 3)
        response = await client.get(path, headers=auth)
        assert response.status == 200
        report = await response.json()
        assert report["similarity"]["method"] == "encoder"
        assert (report["messages"], report["clusters_total"]) == (7, 3)
        clusters = by_examples(report)
        crypto = clusters[frozenset(CRYPTO)]
        assert (crypto["messages"], crypto["contacts"], crypto["agent_types"]) == (3, 3, [])
        assert crypto["how"]["refused"] + crypto["how"]["clarified"] == 3
        promo = clusters[frozenset(PROMO)]
        assert (promo["messages"], promo["contacts"]) == (3, 2)
        assert promo["how"] == {"refused": 2, "clarified": 0, "escalated": 1, "corrected": 0}
        assert promo["agent_types"] == [{"contact_type": "payment_issue",
                                         "label": "Payment problem", "contacts": 1}]
        corrected = clusters[frozenset({"I need to track my order"})]
        assert corrected["how"]["corrected"] == 1
        assert corrected["agent_types"][0]["contact_type"] == "delivery_period"

        # the CLI shows the same clusters
        use_servers(monkeypatch, database_url, redis_url)
        monkeypatch.setenv("SWITCHBOARD_RULES_DIR", str(rules_copy))
        capsys.readouterr()
        assert await asyncio.to_thread(main, ["unrecognised", "report", "--format",
                                              "json"]) == 0
        from_cli = json.loads(capsys.readouterr().out)
        assert from_cli["clusters"] == report["clusters"]
        assert await asyncio.to_thread(main, ["unrecognised"]) == 0
        table = capsys.readouterr().out
        assert f"{crypto['id']}  3 messages, 3 contacts" in table
        assert "agents chose: payment_issue (1)" in table

        # a similar message is not understood yet: said by SMS (it joins the cluster), and
        # one never said, tried with `rules test`
        before = await text(client, "+15555550400", "can I pay with bitcoin?")
        assert before[-1].startswith(CLARIFYING)
        assert await client.app[EVENTS].flush()  # in the log before `adopt` reads it
        assert await asyncio.to_thread(main, ["rules", "test", str(rules_copy),
                                              f"text={PROBE}"]) == 0
        assert json.loads(capsys.readouterr().out)["self_service_path"].startswith(
            "clarifying question")

        # bad input changes nothing
        unchanged = digest(rules_copy)
        for argv, says in (
                (["adopt", "u00000000", "--type", "check_payment_methods"], "no cluster"),
                (["adopt", crypto["id"], "--type", "crypto_payments"], "unknown contact type"),
                (["adopt", crypto["id"], "--type", "track_order", "--new"], "exists already"),
                (["adopt", crypto["id"], "--type", "track_order", "--skill", "x"], "need --new"),
                (["adopt", crypto["id"], "--type", "check_payment_methods", "--rules",
                  str(rules_copy / "data")], "not a rules directory")):
            assert await asyncio.to_thread(main, ["unrecognised", *argv]) == 2, argv
            assert says in capsys.readouterr().err
            assert digest(rules_copy) == unchanged

        assert await asyncio.to_thread(main, ["unrecognised", "adopt", crypto["id"], "--type",
                                              "check_payment_methods"]) == 0
        assert "4 message(s) added" in capsys.readouterr().out
        assert await asyncio.to_thread(main, ["rules", "check", str(rules_copy)]) == 0
        assert (rules_copy / ADOPTED_FILE).read_text().splitlines() == [
            "text,contact_type", *(f"{t},check_payment_methods" for t in sorted(
                [*CRYPTO, "can I pay with bitcoin?"], key=str.lower))]
        reloaded = await client.post("/api/rules/reload", headers=auth)
        assert (await reloaded.json())["ok"] is True
        for sender, words in (("+15555550401", "can I pay with bitcoin?"),
                              ("+15555550402", PROBE)):
            after = await text(client, sender, words)
            assert after[0].startswith(PAYMENT_METHODS_ANSWER), after


def test_clusters_are_deterministic_and_count_each_time_a_text_was_said():
    said = ["Where is my parcel", "where is my  parcel", "Where is my parcel", "where is my parcel?",
            "reset my password", "please reset my password", "where's my parcel"]
    clusters = cluster(said, TFIDF)
    assert cluster(list(reversed(said)), TFIDF) == clusters
    by_size = [(sum(c.counts), len(c.texts)) for c in clusters]
    assert by_size == [(5, 3), (2, 2)]
    assert clusters[0].id == cluster_id("where is my parcel")
    assert clusters[0].texts[0] == "Where is my parcel"  # as it was spelled most often


def test_adopting_keeps_the_catalog_as_written_and_refuses_what_it_cannot_do(rules_copy):
    catalog = rules_copy / "catalog.yaml"
    original = catalog.read_text()
    done = adopt(rules_copy, ["my discount code does not work", "the promo code isn't working",
                              "My discount code does not work"], "promo_codes", new=True,
                 label="Promo codes")
    assert (done.new_type, done.added, done.already_known) == (
        True, ("my discount code does not work", "the promo code isn't working"), 0)
    written = catalog.read_text()
    assert written.startswith(original.rstrip("\n"))  # comments and layout as they were
    assert written[len(original):].splitlines() == [
        "", "  promo_codes:", '    label: "Promo codes"', "    skills: [care]",
        "    agent_only: true  # from unrecognised traffic: give it an answer or a flow when "
        "ready", "    examples:", '      - "my discount code does not work"',
        "      - \"the promo code isn't working\""]
    unchanged = digest(rules_copy)
    with pytest.raises(AdoptError, match="already an example of 'promo_codes'"):
        adopt(rules_copy, ["the promo code isn't working"], "promo_codes")
    with pytest.raises(AdoptError, match="lower_snake_case"):
        adopt(rules_copy, ["gift cards?"], "Gift-Cards", new=True)
    catalog.write_text(original.replace("training_data:\n  - data/bitext_train.csv  # relative "
                                        "to this directory; columns text,contact_type\n  - "
                                        "data/clinc150_track_order.csv\n",
                                        "training_data: [data/bitext_train.csv]\n"))
    unchanged = digest(rules_copy)
    with pytest.raises(AdoptError, match="not a block list"):
        adopt(rules_copy, ["do you sell gift cards"], "place_order")
    assert digest(rules_copy) == unchanged


def test_a_training_file_joins_the_end_of_the_list_once():
    catalog = "# shop\ntraining_data:\n  - a.csv  # mine\n\n  - b.csv\ncontact_types: {}\n"
    added = add_training_file(catalog, ADOPTED_FILE)
    assert added == ("# shop\ntraining_data:\n  - a.csv  # mine\n\n  - b.csv\n"
                     f"  - {ADOPTED_FILE}  # messages adopted from unrecognised traffic\n"
                     "contact_types: {}\n")
    assert add_training_file(added, ADOPTED_FILE) == added
    assert add_training_file("contact_types: {}", ADOPTED_FILE).endswith(
        f"contact_types: {{}}\ntraining_data:\n  - {ADOPTED_FILE}  # messages adopted from "
        "unrecognised traffic\n")


async def test_the_ops_panel_shows_the_clusters_as_the_api_has_them(service_settings, db):
    from playwright.async_api import expect

    from tests.browser import artifact, chromium, require_chromium
    from tests.test_ops_browser import sign_in

    require_chromium()
    async with instance(service_settings) as client:
        await unrecognised_traffic(client, db)
        token = await create_token(db, "ops", "browser test")
        now = datetime.now(timezone.utc)
        window = {"from": iso(now - timedelta(days=1)), "to": iso(now + timedelta(days=1))}
        response = await client.get("/api/reports/unrecognised", params=window,
                                    headers={"Authorization": f"Bearer {token}"})
        report = await response.json()
        assert len(report["clusters"]) == 3
        async with chromium() as browser:
            page = await (await browser.new_context(viewport={"width": 1360, "height": 900})
                          ).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await sign_in(page, str(client.make_url("/ops").with_query(window)), token)
            rows = page.locator("#unrecognised tbody tr")
            await expect(rows).to_have_count(len(report["clusters"]))
            assert await rows.evaluate_all("rows => rows.map(r => r.dataset.key)") == \
                [c["id"] for c in report["clusters"]]
            for found in report["clusters"]:
                row = page.locator(f'#unrecognised tr[data-key="{found["id"]}"]')
                for field in ("messages", "contacts"):
                    await expect(row.locator(f'[data-field="{field}"]')).to_have_text(
                        str(found[field]))
                for how, count in found["how"].items():
                    await expect(row.locator(f'[data-field="{how}"]')).to_have_text(str(count))
                await expect(row.locator('[data-field="agent_types"]')).to_have_text(
                    ", ".join(f'{t["label"]} ({t["contacts"]})' for t in found["agent_types"])
                    or "–")
                await expect(row.locator('[data-field="examples"] li')).to_have_text(
                    [f"“{text}”" for text in found["examples"]])
            await expect(page.locator("#unrecognised-note")).to_contain_text(
                f'{report["messages"]} messages · clustered by sentence embeddings, '
                f'similarity ≥ {report["similarity"]["threshold"]}')
            await page.locator("#unrecognised").scroll_into_view_if_needed()
            await page.locator("#unrecognised").locator("xpath=..").locator("xpath=..") \
                .screenshot(path=artifact("ops-unrecognised.png"))
            assert errors == []
