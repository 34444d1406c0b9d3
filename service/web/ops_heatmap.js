// The touchpoint heat map: contact type x channel from /api/reports/matrix, coloured by one
// metric, for everyone or for the contacts one kind of handling took; sortable, filterable,
// with a legend, tooltips and a CSV download of the API's figures.

import { channelName, el, formatRate, formatScore, HANDLING_LABELS } from "/static/ops_draw.js";

// Darker is more; stops of a single-hue blue ramp that stays readable for colour-blind eyes.
const RAMP = [[240, 244, 251], [201, 216, 242], [143, 176, 227], [79, 127, 204],
  [36, 81, 198], [23, 58, 143]];

export const METRICS = {
  contacts: { label: "Volume", kind: "count", domain: (max) => [0, Math.max(1, max)] },
  true_deflection_rate: { label: "True deflection", kind: "rate", domain: () => [0, 1] },
  csat: { label: "CSAT", kind: "csat", domain: () => [1, 5] },
  nps: { label: "NPS", kind: "nps", domain: () => [-100, 100] },
  survey_response_rate: { label: "Survey response rate", kind: "rate", domain: () => [0, 1] },
};
const SORTS = { label: "Contact type (A–Z)", ...Object.fromEntries(
  Object.entries(METRICS).map(([key, m]) => [key, m.label])) };
const HANDLINGS = ["all", "self_service", "agent", "abandoned"];
const COUNTS = ["contacts", "self_service_resolved", "false_deflections", "surveys_sent",
  "survey_responses", "csat_responses", "csat_points", "nps_responses", "nps_promoters",
  "nps_detractors"];

const ratio = (part, whole) => (whole ? part / whole : null);

// The rates of the metric definitions from summed counts (docs/interfaces.md).
export function ratesOf(counts) {
  const nps = ratio(counts.nps_promoters - counts.nps_detractors, counts.nps_responses);
  return { ...counts,
    true_deflection_rate: ratio(counts.self_service_resolved - counts.false_deflections,
      counts.contacts),
    survey_response_rate: ratio(counts.survey_responses, counts.surveys_sent),
    csat: ratio(counts.csat_points, counts.csat_responses),
    nps: nps === null ? null : 100 * nps };
}

function sumOf(figures) {
  const counts = Object.fromEntries(COUNTS.map((name) => [name, 0]));
  for (const f of figures) for (const name of COUNTS) counts[name] += f[name];
  return ratesOf(counts);
}

export function formatMetric(value, metric) {
  const kind = METRICS[metric].kind;
  if (kind === "rate") return formatRate(value);
  if (kind === "csat" || kind === "nps") return formatScore(value, kind);
  return value === null || value === undefined ? "–" : String(value);
}

function colourAt(t) {
  const x = Math.min(1, Math.max(0, t)) * (RAMP.length - 1);
  const i = Math.min(RAMP.length - 2, Math.floor(x));
  const mix = RAMP[i].map((c, k) => Math.round(c + (RAMP[i + 1][k] - c) * (x - i)));
  return mix;
}

// Dark text on light cells, white on dark ones: the switch where both contrast alike (WCAG
// relative luminance 0.21, at least 4:1 either way).
function inkFor([r, g, b]) {
  const lin = (c) => { const s = c / 255; return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4; };
  return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b) > 0.21 ? "#1c2230" : "#ffffff";
}

function control(label, select) {
  return el("label", { class: "control" }, el("span", { text: label }), select);
}

function options(select, entries, chosen) {
  select.replaceChildren(...entries.map(([value, text]) => {
    const option = el("option", { value, text });
    option.selected = value === chosen;
    return option;
  }));
  return select;
}

export function createHeatmap(root, { download }) {
  const state = { metric: "contacts", sort: "contacts", handled: "all", hidden: new Set() };
  let matrix = null;
  const metric = options(el("select", { id: "heatmap-metric" }),
    Object.entries(METRICS).map(([k, m]) => [k, m.label]), state.metric);
  const sort = options(el("select", { id: "heatmap-sort" }), Object.entries(SORTS), state.sort);
  const handled = options(el("select", { id: "heatmap-handled" }),
    HANDLINGS.map((h) => [h, h === "all" ? "Everyone" : HANDLING_LABELS[h]]), state.handled);
  const channels = el("fieldset", { class: "channels", id: "heatmap-channels" });
  const button = el("button", { type: "button", class: "secondary", id: "heatmap-csv",
    text: "Download CSV" });
  const legend = el("div", { class: "heat-legend", id: "heatmap-legend" });
  const grid = el("div", { class: "scroll" });
  root.replaceChildren(el("div", { class: "toolbar" }, control("Colour by", metric),
    control("Handled by", handled), control("Sort rows by", sort), channels,
    el("span", { class: "spacer" }), button), legend, grid);

  metric.addEventListener("change", () => { state.metric = metric.value; draw(); });
  sort.addEventListener("change", () => { state.sort = sort.value; draw(); });
  handled.addEventListener("change", () => { state.handled = handled.value; draw(); });
  button.addEventListener("click", async () => {
    button.disabled = true;
    try { await download(); } finally { button.disabled = false; }
  });

  function figuresOf(cell) {
    return state.handled === "all" ? cell : cell.by_handling[state.handled];
  }

  function drawChannels(all) {
    channels.replaceChildren(el("legend", { text: "Channels" }), ...all.map((name) => {
      const box = el("input", { type: "checkbox", value: name, "data-channel": name });
      box.checked = !state.hidden.has(name);
      box.addEventListener("change", () => {
        if (box.checked) state.hidden.delete(name); else state.hidden.add(name);
        draw();
      });
      return el("label", { class: "check" }, box, channelName(name));
    }));
  }

  function draw() {
    if (!matrix) return;
    const all = [...new Set(matrix.rows.map((r) => r.channel))].sort();
    drawChannels(all);
    const shown = all.filter((c) => !state.hidden.has(c));
    const types = new Map();
    for (const cell of matrix.rows) {
      if (!types.has(cell.contact_type)) types.set(cell.contact_type, { key: cell.contact_type,
        label: cell.label, cells: {} });
      types.get(cell.contact_type).cells[cell.channel] = cell;
    }
    const rows = [...types.values()].map((t) => ({ ...t,
      total: sumOf(shown.filter((c) => t.cells[c]).map((c) => figuresOf(t.cells[c]))) }))
      .filter((t) => shown.some((c) => t.cells[c]));
    rows.sort(byState);
    const values = rows.flatMap((t) => shown.filter((c) => t.cells[c])
      .map((c) => figuresOf(t.cells[c])[state.metric]));
    const [low, high] = METRICS[state.metric].domain(Math.max(0, ...values.filter((v) => v !== null)));
    const scale = (v) => (v - low) / (high - low);
    drawLegend(low, high);
    const table = el("table", { class: "heatmap", id: "heatmap-table", "data-colour-by": state.metric,
      "data-handled": state.handled, "data-sort": state.sort },
    el("caption", { class: "visually-hidden",
      text: `${METRICS[state.metric].label} per contact type and channel, ` +
        `contacts handled by ${HANDLING_LABELS[state.handled]}` }),
    el("thead", {}, el("tr", {}, el("th", { scope: "col", class: "text", text: "Contact type" }),
      ...shown.map((c) => el("th", { scope: "col", "data-channel": c, text: channelName(c) })),
      el("th", { scope: "col", class: "total", text: "All shown" }))),
    el("tbody", {}, ...rows.map((t) => el("tr", { "data-type": t.key },
      el("th", { scope: "row", class: "text", text: t.label }),
      ...shown.map((c) => (t.cells[c] ? cellOf(t, c, figuresOf(t.cells[c]), scale)
        : el("td", { class: "absent", "data-channel": c, title: `no ${channelName(c)} contacts`,
          text: "" }))),
      cellOf(t, "", t.total, null)))));
    if (!rows.length) {
      table.tBodies[0].append(el("tr", {}, el("td", { colspan: shown.length + 2, class: "text none",
        text: "Nothing in this window." })));
    }
    grid.replaceChildren(table);
  }

  function cellOf(type, channel, figures, scale) {
    const value = figures[state.metric];
    const text = formatMetric(value, state.metric);
    const attrs = { "data-channel": channel || "total", "data-value": JSON.stringify(value),
      "data-contacts": figures.contacts, title: tooltip(type.label, channel, figures),
      class: channel ? "heat" : "total" };
    if (scale && value !== null) {
      const colour = colourAt(scale(value));
      attrs.style = `background: rgb(${colour.join(",")}); color: ${inkFor(colour)}`;
    } else if (value === null) attrs.class += " none";
    const volume = state.metric === "contacts" ? "" :  // the value says it already
      `${figures.contacts} contact${figures.contacts === 1 ? "" : "s"}`;
    return el("td", attrs, el("span", { class: "value", text }),
      el("span", { class: "n", text: volume }));
  }

  function tooltip(label, channel, f) {
    const who = state.handled === "all" ? "" : ` · handled by ${HANDLING_LABELS[state.handled]}`;
    return [`${label} · ${channel ? channelName(channel) : "all shown channels"}${who}`,
      `Contacts: ${f.contacts}`,
      `True deflection: ${formatRate(f.true_deflection_rate)}`,
      `CSAT: ${formatScore(f.csat, "csat")} (${f.csat_responses} answers)`,
      `NPS: ${formatScore(f.nps, "nps")} (${f.nps_responses} answers)`,
      `Survey response rate: ${formatRate(f.survey_response_rate)} of ${f.surveys_sent} sent`,
    ].join("\n");
  }

  function byState(a, b) {
    if (state.sort === "label") return a.label.localeCompare(b.label);
    const [x, y] = [a.total[state.sort], b.total[state.sort]];
    if (x === y) return a.label.localeCompare(b.label);
    if (x === null) return 1;
    if (y === null) return -1;
    return y - x;
  }

  function drawLegend(low, high) {
    const stops = RAMP.map((c, i) => `rgb(${c.join(",")}) ${(100 * i) / (RAMP.length - 1)}%`);
    const mid = (low + high) / 2;
    legend.replaceChildren(
      el("span", { class: "legend-title", text: METRICS[state.metric].label }),
      el("span", { class: "legend-end", text: formatMetric(low, state.metric) }),
      el("span", { class: "ramp", role: "img", style: `background: linear-gradient(to right, ${stops.join(", ")})`,
        "aria-label": `from ${formatMetric(low, state.metric)} (light) to ` +
          `${formatMetric(high, state.metric)} (dark)` }),
      el("span", { class: "legend-end", text: formatMetric(high, state.metric) }),
      el("span", { class: "legend-note", text: `middle ${formatMetric(mid, state.metric)} · ` +
        "– no figure · blank: no contacts · 'All shown' sums the shown channels" }));
  }

  return { show(report) { matrix = report; draw(); }, state };
}
