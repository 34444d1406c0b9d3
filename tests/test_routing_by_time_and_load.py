"""Routing on when and on how busy: time intervals (matcher `hours`, Alertmanager's
`time_intervals`) and queue load (matcher `waiting.<queue>`)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from service.__main__ import main
from service.appkeys import ROUTER
from tests.conftest import service_with_rules
from tests.test_rules_validation import CATALOG, ROUTES, errors, write_rules
from tests.twilio_driver import text

INTERVALS = """\
time_intervals:
  - name: business_hours
    time_intervals:
      - weekdays: ['monday:friday']
        times:
          - start_time: 09:00
            end_time: '17:30'
        location: America/New_York
      - weekdays: [saturday]
        times: [{start_time: '10:00', end_time: '14:00'}]
        location: America/New_York
  - name: weekend
    time_intervals:
      - weekdays: ['saturday:sunday']
"""
AFTER_HOURS = ROUTES + """\
    - name: after hours
      matchers: ['hours != business_hours']
      self_service: false
      reason: after_hours
"""
NEW_YORK = ZoneInfo("America/New_York")


def tree(tmp_path):
    from service.rules.loader import load_rules

    return load_rules(write_rules(tmp_path, routes=INTERVALS + AFTER_HOURS),
                      with_classifier=False).tree


@pytest.mark.parametrize("local, expected", [
    ("2026-11-23T09:00", {"business_hours"}),  # Monday, opening minute
    ("2026-11-23T17:29", {"business_hours"}),
    ("2026-11-23T17:30", set()),  # the end is not in it
    ("2026-11-23T08:59", set()),
    ("2026-11-28T11:00", {"business_hours", "weekend"}),  # Saturday morning
    ("2026-11-28T15:00", {"weekend"}),
    ("2026-11-29T11:00", {"weekend"}),  # Sunday
])
def test_intervals_follow_weekdays_times_and_the_time_zone(tmp_path, local, expected):
    moment = datetime.fromisoformat(local).replace(tzinfo=NEW_YORK)
    assert tree(tmp_path).intervals_at(moment.timestamp()) == expected


def test_the_hours_matcher_routes_by_the_time_of_the_decision(tmp_path):
    routes = tree(tmp_path)
    monday_noon = datetime(2026, 11, 23, 17, 0, tzinfo=timezone.utc).timestamp()  # 12:00 NY
    monday_night = datetime(2026, 11, 24, 3, 0, tzinfo=timezone.utc).timestamp()
    attrs = {"channel": "sms", "contact_type": "complaint"}
    assert routes.decide({**attrs, "hours": routes.intervals_at(monday_noon)}).route_path == "root"
    night = routes.decide({**attrs, "hours": routes.intervals_at(monday_night)})
    assert (night.route_path, night.self_service, night.reason) == \
        ("root > after hours", False, "after_hours")


def test_rules_test_takes_a_time(tmp_path, capsys):
    directory = write_rules(tmp_path, routes=INTERVALS + AFTER_HOURS)
    assert main(["rules", "test", str(directory), "contact_type=complaint",
                 "at=2026-11-23T22:00-05:00"]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["input"]["hours"] == [] and decision["reason"] == "after_hours"
    assert main(["rules", "test", str(directory), "contact_type=complaint",
                 "at=2026-11-28T11:00-05:00"]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["input"]["hours"] == ["business_hours", "weekend"]
    assert decision["route_path"] == "root"
    assert main(["rules", "test", str(directory), "at=tomorrow"]) == 1
    assert "at='tomorrow': expected an ISO 8601 time" in capsys.readouterr().err


INTERVAL_CASES = [
    ("unknown interval", INTERVALS + AFTER_HOURS.replace("!= business_hours", "!= office_hours"),
     ["routes.yaml:31: unknown time interval 'office_hours' (time_intervals defines: "
      "business_hours, weekend) (route -> routes -> 1 -> matchers -> 0)"]),
    ("regex on hours", INTERVALS + AFTER_HOURS.replace("!= business_hours", "=~ business.*"),
     ["routes.yaml:31: 'hours' names a time interval: write 'hours = <name>' or "
      "'hours != <name>' (route -> routes -> 1 -> matchers -> 0)"]),
    ("bad weekday", INTERVALS.replace("'monday:friday'", "'mon:fri'") + ROUTES,
     ["routes.yaml:4: 'mon:fri' is not a weekday or a range such as 'monday:friday' "
      "(time_intervals -> 0 -> time_intervals -> 0 -> weekdays)"]),
    ("end before start", INTERVALS.replace("end_time: '17:30'", "end_time: '08:00'") + ROUTES,
     ["routes.yaml:6: start_time and end_time are 'HH:MM' (00:00 to 24:00), start before end "
      "(time_intervals -> 0 -> time_intervals -> 0 -> times -> 0)"]),
    ("not a time", INTERVALS.replace("end_time: '17:30'", "end_time: half past five") + ROUTES,
     ["routes.yaml:6: start_time and end_time are 'HH:MM' (00:00 to 24:00), start before end "
      "(time_intervals -> 0 -> time_intervals -> 0 -> times -> 0)"]),
    ("unknown zone", INTERVALS.replace("location: America/New_York\n      - weekdays: [sat",
                                       "location: America/Gotham\n      - weekdays: [sat")
     + ROUTES,
     ["routes.yaml:8: unknown time zone 'America/Gotham' (an IANA name such as "
      "'Europe/London') (time_intervals -> 0 -> time_intervals -> 0 -> location)"]),
    ("unsupported key", INTERVALS.replace("      - weekdays: ['saturday:sunday']",
                                          "      - weekdays: ['saturday:sunday']\n"
                                          "        weeks: [52]") + ROUTES,
     ["routes.yaml:15: unknown key 'weeks' (time_intervals -> 1 -> time_intervals -> 0 -> "
      "weeks)"]),
    ("duplicate name", INTERVALS.replace("name: weekend", "name: business_hours") + ROUTES,
     ["routes.yaml:12: name must be a unique lower_snake_case name "
      "(time_intervals -> 1 -> name)"]),
]


@pytest.mark.parametrize("routes,expected", [c[1:] for c in INTERVAL_CASES],
                         ids=[c[0] for c in INTERVAL_CASES])
def test_time_interval_errors(tmp_path, routes, expected):
    assert errors(tmp_path, routes=routes) == expected


async def test_a_live_turn_routes_on_the_hours_it_falls_in(settings, redis_client, tmp_path):
    """An interval with no weekdays or times is always on: complaints go to the night desk."""
    catalog = CATALOG.replace("    examples: [I want to complain, this is unacceptable]",
                              "    examples: [I want to complain, this is unacceptable, "
                              "I am very unhappy with the service]")
    always = "time_intervals:\n  - name: always\n    time_intervals:\n      - {}\n"
    routes = always + ROUTES + ("    - name: night desk\n      matchers: ['hours = always', "
                                "'contact_type = complaint']\n      reason: night_desk\n"
                                "      self_service: false\n")
    directory = write_rules(tmp_path, catalog=catalog, routes=routes)
    async with service_with_rules(settings, directory) as client:
        await text(client, "+15555550144", "I want to complain")
        [entry] = await client.app[ROUTER].waiting("general")
    assert entry["reason"] == "night_desk"


LOAD_CASES = [
    ("unknown queue", ROUTES.replace("'contact_type = track_order'", "'waiting.billing > 5'"),
     ["routes.yaml:14: unknown queue 'billing' in 'waiting.billing' "
      "(route -> routes -> 0 -> matchers -> 0)"]),
    ("not compared as a number", ROUTES.replace("'contact_type = track_order'",
                                                "'waiting.orders = many'"),
     ["routes.yaml:14: 'waiting.orders' is a number: compare it with <, <=, > or >= "
      "(route -> routes -> 0 -> matchers -> 0)"]),
]


@pytest.mark.parametrize("routes,expected", [c[1:] for c in LOAD_CASES],
                         ids=[c[0] for c in LOAD_CASES])
def test_queue_load_errors(tmp_path, routes, expected):
    assert errors(tmp_path, routes=routes) == expected


async def test_a_busy_queue_sends_the_next_contact_elsewhere(settings, redis_client, tmp_path):
    """Once a contact waits for Orders, the next order question goes to Care instead; the
    figure comes from the snapshot each instance refreshes every second."""
    from service.appkeys import QUEUE_LOAD

    routes = ROUTES.replace("""      queue: orders
""", """      queue: orders
      routes:
        - name: orders busy
          matchers: ['waiting.orders >= 1']
          queue: general
          reason: orders_busy
          self_service: false
""")
    directory = write_rules(tmp_path, routes=routes)
    async with service_with_rules(settings, directory) as client:
        await text(client, "+15555550145", "where is my order")
        await text(client, "+15555550145", "no")  # self-service failed: waits for Orders
        await client.app[QUEUE_LOAD].refresh()
        assert client.app[QUEUE_LOAD].waiting == {"general": 0, "orders": 1}
        await text(client, "+15555550146", "where is my order")
        [busy] = await client.app[ROUTER].waiting("general")
    assert (busy["reason"], busy["context"]["customer"]["address"]) == \
        ("orders_busy", "+15555550146")
