"""The touchpoint matrix as CSV: one row per cell and handling, the same figures as the JSON.

    matrix_csv(await reports.matrix(conn, window, rules))
    matrix_csv(await reports.split(reports.matrix, conn, window, rules, "tier"))

Columns: segment (the segment's value; empty when not split or for customers without the
attribute), contact_type, label, channel, handled_by (`all`, then `self_service`, `agent`,
`abandoned`), every count and rate of the metric definitions, median_resolution_s (for `all`
only). Rates are fractions; an empty field is a null (no denominator).
"""

from __future__ import annotations

import csv
import io
from typing import Any, Iterator

from service.reporting.reports import COUNT_FIELDS, HANDLED_BY

RATE_FIELDS = ("deflection_rate", "true_deflection_rate", "containment_rate",
               "abandonment_rate", "service_level", "survey_response_rate", "csat", "nps")
COLUMNS = ("metric_version", "from", "to", "segment_by", "segment", "contact_type", "label",
           "channel", "handled_by", *COUNT_FIELDS, *RATE_FIELDS, "median_resolution_s")


def matrix_csv(report: dict[str, Any]) -> str:
    """The matrix report (or its split by segment) as CSV text with a header row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    head = (report["metric_version"], report["from"], report["to"])
    parts = report.get("segments") or [{"value": (report.get("segment") or {}).get("value"),
                                        "rows": report["rows"]}]
    segment_by = report.get("segment_by") or (report.get("segment") or {}).get("by")
    for part in parts:
        for cell in part["rows"]:
            for handled_by, figures in _handlings(cell):
                writer.writerow([*head, segment_by or "", _field(part["value"]),
                                 cell["contact_type"], cell["label"], cell["channel"],
                                 handled_by, *(_field(figures[f]) for f in COUNT_FIELDS),
                                 *(_field(figures[f]) for f in RATE_FIELDS),
                                 _field(figures.get("median_resolution_s"))])
    return out.getvalue()


def _handlings(cell: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "all", cell
    for who in HANDLED_BY:
        yield who, cell["by_handling"][who]


def _field(value: Any) -> Any:
    return "" if value is None else value
