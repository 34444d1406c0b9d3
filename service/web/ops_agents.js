// The agents panel: /api/reports/agents as a table, one row per agent and the team's under
// them; a click on a column heading sorts by it (again: the other way).

import { el, formatRate, formatScore } from "/static/ops_draw.js";

const COLUMNS = [
  { key: "name", title: "Agent", kind: "text" },
  { key: "offers", title: "Offers", kind: "count" },
  { key: "accepted", title: "Accepted", kind: "count" },
  { key: "declined", title: "Declined", kind: "count" },
  { key: "expired", title: "Missed", kind: "count", hint: "let the offer expire" },
  { key: "acceptance_rate", title: "Acceptance", kind: "rate",
    hint: "accepted / (accepted + declined + missed)" },
  { key: "handled", title: "Handled", kind: "count", hint: "wrapped up in the window" },
  { key: "handle_time_mean_s", title: "Mean handle", kind: "seconds",
    hint: "from their accept to their wrap-up" },
  { key: "handle_time_median_s", title: "Median handle", kind: "seconds" },
  { key: "resolved_rate", title: "Resolved", kind: "rate", hint: "resolved at wrap-up / handled" },
  { key: "transfers_out", title: "Transfers out", kind: "count" },
  { key: "retyped", title: "Re-typed", kind: "count", hint: "contact type corrected at wrap-up" },
  { key: "csat", title: "CSAT", kind: "csat", hint: "mean answer 1 to 5 (answers)" },
  { key: "available_s", title: "Available", kind: "seconds",
    hint: "time available within the window (console open, holding none)" },
  { key: "busy_s", title: "Busy", kind: "seconds", hint: "time holding contacts" },
  { key: "away_s", title: "Away", kind: "seconds", hint: "time away, whatever the reason" },
  { key: "away_reasons_s", title: "Away by reason", kind: "reasons",
    hint: "of the time away, per reason given" },
];

function seconds(value) {
  if (value === null || value === undefined) return "–";
  if (value < 90) return `${Math.round(value)} s`;
  if (value < 5400) return `${(value / 60).toFixed(1)} min`;
  return `${(value / 3600).toFixed(1)} h`;
}

function cellText(row, column) {
  const value = row[column.key];
  if (column.kind === "text") return value;
  if (column.kind === "rate") return formatRate(value);
  if (column.kind === "seconds") return seconds(value);
  if (column.kind === "reasons") {
    const parts = Object.entries(value || {}).sort(([, x], [, y]) => y - x);
    return parts.length ? parts.map(([id, s]) => `${id.replaceAll("_", " ")} ${seconds(s)}`)
      .join(" · ") : "–";
  }
  if (column.kind === "csat") {
    return value === null ? "–" : `${formatScore(value, "csat")} (${row.csat_responses})`;
  }
  return String(value);
}

function compare(key, direction) {
  return (a, b) => {
    const [x, y] = [a[key], b[key]].map((v) => (v && typeof v === "object"
      ? Object.values(v).reduce((sum, n) => sum + n, 0) : v)); // per reason: their total
    if (x === y) return a.name.localeCompare(b.name);
    if (x === null) return 1; // nothing to show goes last either way
    if (y === null) return -1;
    const order = typeof x === "string" ? x.localeCompare(y) : x - y;
    return direction * order;
  };
}

export function createAgentsPanel(container) {
  const state = { sort: "handled", direction: -1, report: null };
  const tableNode = el("table", { class: "figures agent-figures", id: "agents-table" });
  container.replaceChildren(el("div", { class: "scroll" }, tableNode));

  function heading(column) {
    const sorted = state.sort === column.key;
    const button = el("button", { type: "button", class: "sort", "data-sort": column.key,
      title: column.hint ? `${column.hint}; sort by ${column.title}` : `Sort by ${column.title}`,
      text: column.title + (sorted ? (state.direction < 0 ? " ▼" : " ▲") : "") });
    button.addEventListener("click", () => {
      state.direction = sorted ? -state.direction : (column.kind === "text" ? 1 : -1);
      state.sort = column.key;
      draw();
    });
    return el("th", { scope: "col", class: column.kind === "text" ? "text" : "",
      "aria-sort": sorted ? (state.direction < 0 ? "descending" : "ascending") : "none" }, button);
  }

  function line(row, attrs) {
    return el("tr", attrs, ...COLUMNS.map((c) => {
      const value = row[c.key];
      const empty = value === null || value === 0 || (c.kind === "reasons" && !Object.keys(value || {}).length);
      return el("td", { class: `${c.kind === "text" || c.kind === "reasons" ? "text" : ""} ${empty ? "none" : ""}`,
        "data-field": c.key, text: cellText(row, c) });
    }));
  }

  function draw() {
    const report = state.report;
    const rows = report.agents.map((a) => ({ ...a, name: a.name || a.id }))
      .sort(compare(state.sort, state.direction));
    const body = el("tbody", {}, ...rows.map((row) => line(row, { "data-key": row.id })));
    if (!rows.length) {
      body.append(el("tr", {}, el("td", { colspan: COLUMNS.length, class: "text none",
        text: "No agents yet: add one with switchboard agents add." })));
    }
    const foot = el("tfoot", {}, line({ ...report.team, name: "Team" }, { class: "team" }));
    tableNode.replaceChildren(el("thead", {}, el("tr", {}, ...COLUMNS.map(heading))), body, foot);
  }

  return {
    render(report) {
      state.report = report;
      draw();
    },
  };
}
