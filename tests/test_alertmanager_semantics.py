"""Alertmanager's routing, matcher and time-interval semantics, table-driven, end to end through
`switchboard rules test`: each case is a routes.yaml tree, contacts given as the command's
KEY=VALUE arguments, and the decision expected for each (or the error `rules test` must print)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest

from service.__main__ import main
from tests.test_rules_validation import write_rules

QUEUES = """\
queues:
  general: {label: Care, skills: [care]}
  orders: {label: Orders, skills: [orders]}
  vip: {label: VIP desk, skills: [vip]}
"""


@dataclass(frozen=True)
class Case:
    name: str
    tree: str  # routes.yaml after the queues
    contacts: tuple[tuple[str, dict], ...]  # ("KEY=VALUE ...", decision fields expected)


CASES = [
    Case("the first matching child wins, depth first", """
route:
  queue: general
  priority: 5
  self_service: true
  routes:
    - name: orders
      matchers: ['contact_type = track_order']
      queue: orders
      routes:
        - name: repeat
          matchers: ['repeat_contact = true']
          priority: 2
    - name: sms
      matchers: ['channel = sms']
      priority: 7
""", (
        ("contact_type=track_order channel=sms", {"route_path": "root > orders", "priority": 5}),
        ("contact_type=track_order repeat_contact=true channel=sms",
         {"route_path": "root > orders > repeat", "queue": "orders", "priority": 2}),
        ("contact_type=complaint channel=sms", {"route_path": "root > sms", "priority": 7}),
        ("contact_type=complaint channel=chat", {"route_path": "root", "queue": "general"}),
    )),
    Case("continue: later siblings match too and the last match applies", """
route:
  queue: general
  priority: 5
  self_service: true
  routes:
    - name: voice first
      matchers: ['channel = voice']
      priority: 1
      continue: true
    - name: complaints
      matchers: ['contact_type = complaint']
      queue: orders
    - name: never reached after a match without continue
      matchers: ['channel = voice']
      queue: vip
""", (
        ("channel=voice contact_type=track_order",
         {"route_path": "root > never reached after a match without continue",
          "queue": "vip", "priority": 5}),
        ("channel=voice contact_type=complaint",
         {"route_path": "root > complaints", "queue": "orders"}),
        ("channel=sms contact_type=track_order", {"route_path": "root"}),
    )),
    Case("a child without matchers matches everything", """
route:
  queue: general
  priority: 5
  self_service: true
  routes:
    - name: vip
      matchers: ['customer.tier = vip']
      queue: vip
      routes:
        - name: everything else of vip
          priority: 0
    - name: catch all
      matchers: []
      priority: 8
""", (
        ("customer.tier=vip", {"route_path": "root > vip > everything else of vip",
                               "queue": "vip", "priority": 0}),
        ("channel=chat", {"route_path": "root > catch all", "queue": "general",
                          "priority": 8}),
    )),
    Case("an attribute the contact lacks matches as the empty string", """
route:
  queue: general
  priority: 5
  self_service: true
  routes:
    - name: has a job
      matchers: ['customer.job =~ ".+"']
      priority: 1
    - name: no tier
      matchers: ['customer.tier = ""']
      priority: 2
      routes:
        - name: any job at all
          matchers: ['customer.job =~ ".*"']
          priority: 3
    - name: not vip
      matchers: ['customer.tier != vip', 'customer.tier !~ "gold|silver"']
      priority: 4
""", (
        ("customer.job=chef", {"route_path": "root > has a job", "priority": 1}),
        ("channel=sms", {"route_path": "root > no tier > any job at all", "priority": 3}),
        ("customer.tier=", {"route_path": "root > no tier > any job at all"}),
        ("customer.tier=bronze", {"route_path": "root > not vip", "priority": 4}),
        ("customer.tier=gold", {"route_path": "root", "priority": 5}),
    )),
    Case("a contact not classified has the empty contact type", """
route:
  queue: general
  priority: 5
  self_service: true
  routes:
    - name: unclassified
      matchers: ['contact_type = ""']
      self_service: false
      reason: not_understood
    - name: not an order
      matchers: ['contact_type != track_order']
      queue: vip
""", (
        ("channel=voice", {"route_path": "root > unclassified", "self_service": False,
                           "reason": "not_understood"}),
        ("contact_type=complaint", {"route_path": "root > not an order", "queue": "vip"}),
        ("contact_type=track_order", {"route_path": "root"}),
    )),
    Case("regexes are anchored at both ends", """
route:
  queue: general
  priority: 5
  self_service: true
  routes:
    - name: exactly vip
      matchers: ['customer.tier =~ "vip"']
      queue: vip
    - name: starts with vip
      matchers: ['customer.tier =~ "vip.*"']
      priority: 1
    - name: no digits
      matchers: ['customer.code !~ "\\d+"']
      priority: 2
""", (
        ("customer.tier=vip", {"route_path": "root > exactly vip", "queue": "vip"}),
        ("customer.tier=vipplus", {"route_path": "root > starts with vip", "priority": 1}),
        ("customer.tier=avip customer.code=12a", {"route_path": "root > no digits"}),
        ("customer.tier=avip customer.code=123", {"route_path": "root"}),
    )),
    Case("quoted values may contain escaped quotes and backslashes", r"""
route:
  queue: general
  priority: 5
  self_service: true
  routes:
    - name: quoted
      matchers: ['customer.nickname = "the \"boss\""']
      priority: 1
    - name: backslash
      matchers: ['customer.path = "C:\\shop"']
      priority: 2
    - name: equals sign and spaces
      matchers: ['customer.note = "a = b "']
      priority: 3
""", (
        ('customer.nickname=the "boss"', {"route_path": "root > quoted"}),
        ("customer.nickname=the boss", {"route_path": "root"}),
        (r"customer.path=C:\shop", {"route_path": "root > backslash"}),
        ("customer.note=a = b ", {"route_path": "root > equals sign and spaces"}),
    )),
    Case("children inherit what they do not set", """
route:
  queue: general
  priority: 5
  self_service: true
  reason: rule
  routes:
    - name: orders
      matchers: ['contact_type = track_order']
      queue: orders
      self_service: false
      reason: order_desk
      routes:
        - name: urgent
          matchers: ['confidence >= 0.9']
          priority: 1
""", (
        ("contact_type=track_order confidence=0.95",
         {"route_path": "root > orders > urgent", "queue": "orders", "priority": 1,
          "self_service": False, "reason": "order_desk"}),
        ("contact_type=track_order", {"route_path": "root > orders", "priority": 5}),
    )),
    Case("time intervals: weekday ranges, end time excluded, the interval's own zone", """
time_intervals:
  - name: open
    time_intervals:
      - weekdays: ['monday:friday']
        times: [{start_time: '09:00', end_time: '17:00'}]
        location: Europe/London
route:
  queue: general
  priority: 5
  self_service: true
  routes:
    - name: closed
      matchers: ['hours != open']
      self_service: false
      reason: after_hours
""", (
        ("at=2026-11-27T16:59:59+00:00", {"route_path": "root"}),  # Friday
        ("at=2026-11-27T17:00+00:00", {"route_path": "root > closed", "reason": "after_hours"}),
        ("at=2026-11-28T12:00+00:00", {"route_path": "root > closed"}),  # Saturday
        ("at=2026-11-30T09:00+00:00", {"route_path": "root"}),  # Monday
        ("at=2026-07-01T08:30+00:00", {"route_path": "root"}),  # 09:30 summer time
        ("at=2026-07-01T16:30+00:00", {"route_path": "root > closed"}),  # 17:30 summer time
    )),
    Case("holidays: negative days of the month, months and years", """
time_intervals:
  - name: month_end
    time_intervals:
      - days_of_month: ['-2:-1']
        months: ['january:march', 12]
        years: [2026]
        location: America/New_York
route:
  queue: general
  priority: 5
  self_service: true
  routes:
    - name: month end
      matchers: ['hours = month_end']
      closed: {queue: orders}
""", (
        ("at=2026-02-27T12:00-05:00", {"route_path": "root > month end",
                                       "closed": {"queue": "orders"}}),
        ("at=2026-02-26T23:59-05:00", {"route_path": "root"}),
        ("at=2026-03-01T03:00+00:00", {"route_path": "root > month end"}),  # 28 Feb, 22:00
        ("at=2026-04-30T12:00-04:00", {"route_path": "root"}),  # April is not listed
        ("at=2026-12-31T12:00-05:00", {"route_path": "root > month end"}),
        ("at=2027-01-31T12:00-05:00", {"route_path": "root"}),  # 2027 is not listed
    )),
]


def decide(directory, args: str, capsys) -> dict:
    assert main(["rules", "test", str(directory), *_split(args)]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def _split(args: str) -> list[str]:
    """KEY=VALUE items; a value runs until the next ' key=' (values may hold spaces)."""
    items: list[str] = []
    for word in args.split(" "):
        if items and ("=" not in word or word.split("=", 1)[0] not in _KEYS and
                      not word.split("=", 1)[0].startswith("customer.")):
            items[-1] += " " + word
        else:
            items.append(word)
    return items


_KEYS = ("channel", "contact_type", "confidence", "repeat_contact", "at")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decisions_through_rules_test(tmp_path, capsys, case):
    directory = write_rules(tmp_path, routes=QUEUES + textwrap.dedent(case.tree))
    for args, expected in case.contacts:
        decision = decide(directory, args, capsys)
        assert {key: decision[key] for key in expected} == expected, args


ERROR_CASES = [
    ("a weekday range that runs backwards", """
time_intervals:
  - name: weekend
    time_intervals:
      - weekdays: ['friday:monday']
route: {queue: general, priority: 5, self_service: true}
""", "routes.yaml:9: 'friday:monday' runs backwards: a range goes from Monday towards Sunday "
     "(write two items, such as 'friday:sunday' and 'monday') "
     "(time_intervals -> 0 -> time_intervals -> 0 -> weekdays)"),
    ("a quote inside a quoted value that is not escaped", """
route:
  queue: general
  priority: 5
  self_service: true
  routes:
    - matchers: ['customer.nickname = "the "boss""']
""", "routes.yaml:11: cannot read the value of matcher 'customer.nickname = \"the \"boss\"\"': "
     "a quoted value ends with its only unescaped quote (write \\\" for a quote inside it) "
     "(route -> routes -> 0 -> matchers -> 0)"),
    ("a quoted value never closed", """
route:
  queue: general
  priority: 5
  self_service: true
  routes:
    - matchers: ['customer.tier = "vip']
""", "routes.yaml:11: cannot read the value of matcher 'customer.tier = \"vip'"),
    ("the root route has no matchers", """
route: {queue: general, priority: 5, self_service: true, matchers: []}
""", "routes.yaml:6: the root route matches everything: it takes no matchers (route -> matchers)"),
]


@pytest.mark.parametrize("tree,message", [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
def test_invalid_trees_are_refused_with_file_and_line(tmp_path, capsys, tree, message):
    directory = write_rules(tmp_path, routes=QUEUES + textwrap.dedent(tree))
    assert main(["rules", "test", str(directory), "channel=sms"]) == 1
    assert message in capsys.readouterr().err.replace(f"{directory}/", "")


def test_the_installed_command_gives_the_same_decision(tmp_path):
    """One case through the `switchboard` executable itself, in its own process."""
    case = CASES[3]
    directory = write_rules(tmp_path, routes=QUEUES + textwrap.dedent(case.tree))
    result = subprocess.run([sys.executable, "-m", "service", "rules", "test", str(directory),
                             "channel=sms"], capture_output=True, text=True, timeout=60,
                            check=True)
    assert json.loads(result.stdout)["route_path"] == "root > no tier > any job at all"
