"""Holidays and exceptions: the rest of Alertmanager's `time_intervals` (days_of_month with
negative days, months, years), table-driven, across a change of summer time, and their errors."""

from __future__ import annotations

import textwrap
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from service.rules.loader import load_rules
from tests.test_rules_validation import ROUTES, errors, write_rules

INTERVALS = """\
time_intervals:
  - name: last_days
    time_intervals:
      - days_of_month: ['-3:-1']
  - name: first_week
    time_intervals:
      - days_of_month: ['1:7']
        location: America/New_York
  - name: month_end_rush
    time_intervals:
      - days_of_month: ['25:-1']
        months: [november, 12]
  - name: christmas
    time_intervals:
      - days_of_month: [25, 26]
        months: [december]
        years: ['2026:2027']
        location: Europe/London
  - name: spring
    time_intervals:
      - months: ['march:may']
  - name: early_in_the_year
    time_intervals:
      - months: [1:3]
  - name: day_thirty_one
    time_intervals:
      - days_of_month: [31]
  - name: open_new_york
    time_intervals:
      - weekdays: ['monday:friday']
        times: [{start_time: '09:00', end_time: '17:00'}]
        location: America/New_York
  - name: night_london
    time_intervals:
      - times: [{start_time: '01:00', end_time: '02:00'}]
        location: Europe/London
"""

UTC = ZoneInfo("UTC")


def at(text: str) -> float:
    moment = datetime.fromisoformat(text)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    directory = write_rules(tmp_path_factory.mktemp("holidays"), routes=INTERVALS + ROUTES)
    return load_rules(directory, with_classifier=False).tree


CASES = [
    # negative days count from the end of each month, whatever its length
    ("2026-01-29T12:00", "last_days", True),
    ("2026-01-28T23:59", "last_days", False),
    ("2026-02-26T00:00", "last_days", True),  # February 2026 has 28 days
    ("2026-02-25T23:59", "last_days", False),
    ("2028-02-27T12:00", "last_days", True),  # a leap year: 27, 28, 29
    ("2028-02-26T12:00", "last_days", False),
    ("2026-04-30T12:00", "last_days", True),
    ("2026-04-27T12:00", "last_days", False),
    # a day of the month is the local one: 1 December 00:30 in New York is still 30 November
    ("2026-12-01T04:30", "first_week", False),
    ("2026-12-01T05:00", "first_week", True),
    ("2026-12-08T04:59", "first_week", True),
    ("2026-12-08T05:00", "first_week", False),
    # a positive start, a negative end; months by name and by number
    ("2026-11-25T00:00", "month_end_rush", True),
    ("2026-12-31T23:59", "month_end_rush", True),
    ("2026-10-30T12:00", "month_end_rush", False),
    ("2026-11-24T23:59", "month_end_rush", False),
    # years, in London's wall clock (GMT in December)
    ("2026-12-25T00:00", "christmas", True),
    ("2027-12-26T23:59", "christmas", True),
    ("2025-12-25T12:00", "christmas", False),
    ("2028-12-25T12:00", "christmas", False),
    ("2026-12-24T23:59", "christmas", False),
    ("2026-12-27T00:00", "christmas", False),
    # month ranges, quoted or not (an unquoted 1:3 is not YAML 1.1's base-60 number 63)
    ("2026-03-01T00:00", "spring", True),
    ("2026-05-31T23:59", "spring", True),
    ("2026-06-01T00:00", "spring", False),
    ("2026-02-10T00:00", "early_in_the_year", True),
    ("2026-04-01T00:00", "early_in_the_year", False),
    # a day a month does not have never happens in it
    ("2026-01-31T12:00", "day_thirty_one", True),
    ("2026-04-30T12:00", "day_thirty_one", False),
    # summer time: opening at 09:00 New York is 14:00 UTC in winter and 13:00 UTC in summer;
    # the clocks went forward on Sunday 8 March 2026
    ("2026-03-06T13:30", "open_new_york", False),  # Friday 08:30 EST
    ("2026-03-06T14:00", "open_new_york", True),
    ("2026-03-09T13:30", "open_new_york", True),  # Monday 09:30 EDT
    ("2026-03-09T21:00", "open_new_york", False),  # 17:00 EDT, the end is not in it
    ("2026-03-09T20:59", "open_new_york", True),
    # London's clocks went back at 02:00 BST on 25 October 2026: 01:00-02:00 happened twice
    ("2026-10-25T00:00", "night_london", True),  # 01:00 BST
    ("2026-10-25T00:59", "night_london", True),
    ("2026-10-25T01:00", "night_london", True),  # 01:00 GMT, the second time
    ("2026-10-25T01:59", "night_london", True),
    ("2026-10-25T02:00", "night_london", False),
    # and on 29 March 2026 they jumped from 01:00 GMT to 02:00 BST: no 01:xx that night
    ("2026-03-29T00:59", "night_london", False),
    ("2026-03-29T01:00", "night_london", False),
]


@pytest.mark.parametrize("moment,interval,inside", CASES,
                         ids=[f"{c[1]}@{c[0]}" for c in CASES])
def test_holiday_intervals(tree, moment, interval, inside):
    assert (interval in tree.intervals_at(at(moment))) is inside


def intervals(period: str) -> str:
    return textwrap.dedent("""\
        time_intervals:
          - name: holiday
            time_intervals:
              - {period}
        """).format(period=period) + ROUTES


ERROR_CASES = [
    ("day zero", "days_of_month: [0]",
     "routes.yaml:4: '0' is not a day of the month (1 to 31, or -1 for the last day to -31) "
     "or a range such as '1:7' or '-3:-1' (time_intervals -> 0 -> time_intervals -> 0 -> "
     "days_of_month)"),
    ("day 32", "days_of_month: ['1:32']",
     "routes.yaml:4: '1:32' is not a day of the month"),
    ("negative range backwards", "days_of_month: ['-1:-3']",
     "routes.yaml:4: '-1:-3' runs backwards: the first day comes before the last in a 31-day "
     "month (write two items, such as '25:-1' and '1:3') "
     "(time_intervals -> 0 -> time_intervals -> 0 -> days_of_month)"),
    ("positive range backwards", "days_of_month: ['20:10']", "'20:10' runs backwards"),
    ("from a negative to a positive day", "days_of_month: ['-3:5']", "'-3:5' runs backwards"),
    ("unknown month", "months: [janvier]",
     "routes.yaml:4: 'janvier' is not a month (january to december, or 1 to 12) or a range "
     "such as 'january:march' (time_intervals -> 0 -> time_intervals -> 0 -> months)"),
    ("month 13", "months: ['12:13']", "'12:13' is not a month"),
    ("month range backwards", "months: ['december:january']",
     "routes.yaml:4: 'december:january' runs backwards: a range goes from January towards "
     "December (write two items, such as 'november:december' and 'january') "
     "(time_intervals -> 0 -> time_intervals -> 0 -> months)"),
    ("year range backwards", "years: ['2027:2026']",
     "routes.yaml:4: '2027:2026' runs backwards: the first year comes before the last "
     "(time_intervals -> 0 -> time_intervals -> 0 -> years)"),
    ("not a year", "years: [next]",
     "routes.yaml:4: 'next' is not a year or a range such as '2026:2027'"),
]


@pytest.mark.parametrize("period,message", [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
def test_holiday_interval_errors(tmp_path, period, message):
    [problem] = errors(tmp_path, routes=intervals("{" + period + "}"))
    assert message in problem


def test_each_bad_item_of_a_block_list_names_its_own_line(tmp_path):
    routes = textwrap.dedent("""\
        time_intervals:
          - name: holiday
            time_intervals:
              - months:
                  - january
                  - brumaire
                days_of_month:
                  - 1
                  - '9:2'
        """) + ROUTES
    assert [p.split(": ", 1)[0] for p in errors(tmp_path, routes=routes)] == \
        ["routes.yaml:6", "routes.yaml:9"]
