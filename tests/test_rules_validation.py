"""Table-driven: bad rules produce exact `file:line: message (key path)` errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from service.__main__ import main
from service.rules.loader import load_rules
from service.rules.yamlfile import ConfigError

CATALOG = """\
classifier:
  threshold: 0.5
contact_types:
  track_order:
    label: Track an order
    ivr_digit: 1
    skills: [orders]
    self_service:
      answer: Look under Orders.
    examples: [where is my order, track my parcel]
  complaint:
    label: Complaint
    skills: [care]
    agent_only: true
    examples: [I want to complain, this is unacceptable]
"""

ROUTES = """\
queues:
  general:
    label: Care
    skills: [care]
  orders:
    label: Orders
    skills: [orders]
route:
  queue: general
  priority: 5
  self_service: true
  routes:
    - name: orders
      matchers: ['contact_type = track_order']
      queue: orders
"""


def write_rules(tmp_path: Path, catalog: str = CATALOG, routes: str = ROUTES) -> Path:
    (tmp_path / "catalog.yaml").write_text(textwrap.dedent(catalog))
    (tmp_path / "routes.yaml").write_text(textwrap.dedent(routes))
    return tmp_path


def errors(tmp_path: Path, **files: str) -> list[str]:
    directory = write_rules(tmp_path, **files)
    with pytest.raises(ConfigError) as caught:
        load_rules(directory, with_classifier=False)
    prefix = str(directory) + "/"
    return [str(issue).removeprefix(prefix) for issue in caught.value.issues]


ROUTE_CASES = [
    ("unknown contact type",
     ROUTES.replace("contact_type = track_order", "contact_type = biling"),
     ["routes.yaml:14: unknown contact type 'biling' (route -> routes -> 0 -> matchers -> 0)"]),
    ("unknown queue", ROUTES.replace("queue: orders", "queue: order"),
     ["routes.yaml:15: unknown queue 'order' (route -> routes -> 0 -> queue)"]),
    ("unknown key", ROUTES.replace("      queue: orders", "      queue: orders\n      contine: true"),
     ["routes.yaml:16: unknown key 'contine' (route -> routes -> 0 -> contine)"]),
    ("regex matching nothing",
     ROUTES.replace("'contact_type = track_order'", "'contact_type =~ \"refund_.*\"'"),
     ["routes.yaml:14: 'refund_.*' matches no contact type (route -> routes -> 0 -> matchers -> 0)"]),
    ("unknown attribute", ROUTES.replace("contact_type = track_order", "tier = vip"),
     ["routes.yaml:14: unknown attribute 'tier' (use channel, contact_type, confidence, "
      "repeat_contact, hours, waiting.<queue> or customer.<field>) "
      "(route -> routes -> 0 -> matchers -> 0)"]),
    ("number compared as text", ROUTES.replace("contact_type = track_order", "confidence = high"),
     ["routes.yaml:14: 'confidence' is a number: compare it with <, <=, > or >= "
      "(route -> routes -> 0 -> matchers -> 0)"]),
    ("unknown channel", ROUTES.replace("contact_type = track_order", "channel = fax"),
     ["routes.yaml:14: unknown channel 'fax' (route -> routes -> 0 -> matchers -> 0)"]),
    ("priority out of range", ROUTES.replace("priority: 5", "priority: 12"),
     ["routes.yaml:10: priority must be a whole number from 0 (most urgent) to 9 "
      "(route -> priority)"]),
    ("missing root key", ROUTES.replace("  self_service: true\n", ""),
     ["routes.yaml:8: missing required key 'self_service' (route)"]),
    ("queue without its label, a misspelt one instead",
     ROUTES.replace("    label: Care\n", "    lable: Care\n"),
     ["routes.yaml:2: missing required key 'label' (queues -> general)",
      "routes.yaml:3: unknown key 'lable' (queues -> general -> lable)"]),
    ("unreadable matcher", ROUTES.replace("'contact_type = track_order'", "'track_order'"),
     ["routes.yaml:14: cannot read matcher 'track_order': write it as 'attribute op value', "
      "for example 'contact_type = track_order' (route -> routes -> 0 -> matchers -> 0)"]),
    ("several problems at once",
     ROUTES.replace("queue: orders", "queue: order").replace("priority: 5", "priority: -1"),
     ["routes.yaml:10: priority must be a whole number from 0 (most urgent) to 9 "
      "(route -> priority)",
      "routes.yaml:15: unknown queue 'order' (route -> routes -> 0 -> queue)"]),
    ("duplicate key", ROUTES.replace("  priority: 5\n", "  priority: 5\n  priority: 4\n"),
     ["routes.yaml:11: duplicate key 'priority'"]),
    ("invalid YAML", ROUTES.replace("  queue: general\n  priority", "  queue: [general\n  priority"),
     ["routes.yaml:10: invalid YAML: did not find expected ',' or ']'"]),
]


@pytest.mark.parametrize("routes,expected", [c[1:] for c in ROUTE_CASES],
                         ids=[c[0] for c in ROUTE_CASES])
def test_routes_errors(tmp_path, routes, expected):
    assert errors(tmp_path, routes=routes) == expected


CATALOG_CASES = [
    ("both answer and agent_only",
     CATALOG.replace("    agent_only: true\n", "    agent_only: true\n    self_service: {answer: x}\n"),
     ["catalog.yaml:12: give exactly one of 'self_service' or 'agent_only: true' "
      "(contact_types -> complaint)"]),
    ("digit reserved", CATALOG.replace("ivr_digit: 1", "ivr_digit: 0"),
     ["catalog.yaml:6: ivr_digit must be a whole number from 1 to 9 (0 is reserved for 'talk "
      "to a person') (contact_types -> track_order -> ivr_digit)"]),
    ("duplicate digit", CATALOG.replace("    agent_only: true\n", "    agent_only: true\n    ivr_digit: 1\n"),
     ["catalog.yaml:15: ivr_digit 1 is already used by 'track_order' "
      "(contact_types -> complaint -> ivr_digit)"]),
    ("threshold out of range", CATALOG.replace("threshold: 0.5", "threshold: 5"),
     ["catalog.yaml:2: threshold must be a number between 0 and 1 (classifier -> threshold)"]),
    ("empty examples", CATALOG.replace("examples: [where is my order, track my parcel]",
                                       "examples: []"),
     ["catalog.yaml:10: 'examples' must be a non-empty list of text "
      "(contact_types -> track_order -> examples)"]),
    ("unknown key in type", CATALOG.replace("    label: Complaint\n",
                                            "    label: Complaint\n    lable: x\n"),
     ["catalog.yaml:13: unknown key 'lable' (contact_types -> complaint -> lable)"]),
    ("type id not snake_case", CATALOG.replace("  complaint:", "  Complaint-2:"),
     ["catalog.yaml:11: contact type ids are lower_snake_case (contact_types -> Complaint-2)"]),
    ("missing training file", CATALOG + "training_data: [data/missing.csv]\n",
     ["catalog.yaml:16: training file 'data/missing.csv' does not exist (training_data -> 0)"]),
]


@pytest.mark.parametrize("catalog,expected", [c[1:] for c in CATALOG_CASES],
                         ids=[c[0] for c in CATALOG_CASES])
def test_catalog_errors(tmp_path, catalog, expected):
    assert errors(tmp_path, catalog=catalog) == expected


def test_training_file_with_unknown_type_names_its_line(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "extra.csv").write_text(
        "text,contact_type\nwhere is it,track_order\nbad,biling\n")
    assert errors(tmp_path, catalog=CATALOG + "training_data: [data/extra.csv]\n") == [
        "data/extra.csv:3: unknown contact type 'biling'"]


def test_the_example_deployment_is_valid():
    rules = load_rules(Path("routing_rules"), with_classifier=False)
    assert len(rules.catalog.types) == 27
    assert {"track_order", "cancel_order", "recover_password", "contact_human_agent",
            "complaint"} <= set(rules.catalog.types)


def test_rules_check_command(tmp_path, capsys):
    assert main(["rules", "check", str(write_rules(tmp_path))]) == 0
    assert "OK (2 contact types, 2 queues" in capsys.readouterr().out
    bad = tmp_path / "bad"
    bad.mkdir()
    write_rules(bad, routes=ROUTES.replace("queue: orders", "queue: order"))
    assert main(["rules", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}/routes.yaml:15: unknown queue 'order'" in err
    assert "1 problem(s)" in err


def test_empty_sections_are_named(tmp_path):
    """Every section that maps names to specs says so, with its line, when it is empty."""
    catalog = "classifier:\n  threshold: 0.5\ncontact_types: {}\n"
    routes = ROUTES.replace(ROUTES[:ROUTES.index("route:")], "queues: []\n")
    assert errors(tmp_path, catalog=catalog, routes=routes) == [
        "catalog.yaml:3: expected a non-empty mapping of contact types (contact_types)"]
    assert errors(tmp_path, routes=routes) == [
        "routes.yaml:1: expected a non-empty mapping of queues (queues)"]
    (tmp_path / "flows.yaml").write_text("# no flows yet\nflows:\n")
    assert errors(tmp_path) == ["flows.yaml:2: expected a non-empty mapping of flows (flows)"]
