// Journeys as a flow (Sankey-like SVG): per contact type, which channel customers used first,
// how each contact was handled, where they came back and on which channel. Data: the `flows`
// of /api/reports/journeys (every journey of the window, not only the top ones).

import { channelName, el, HANDLING_LABELS, svg } from "/static/ops_draw.js";

export const HANDLING_COLOURS = {
  self_service: "#1b7f4b", agent: "#2451c6", abandoned: "#c2410c", dropped: "#6b7280",
  queued: "#8a4fd1", open: "#0e7490",
};
const ORDINALS = ["1st", "2nd", "3rd", "4th", "5th"];
const [WIDTH, TOP, BOTTOM, NODE_W, GAP, LABEL_W] = [1000, 34, 10, 14, 14, 220];

export function createFlow(root) {
  let report = null;
  let labels = {};
  let chosen = null;
  const select = el("select", { id: "flow-type" });
  const summary = el("p", { class: "flow-summary", id: "flow-summary" });
  const chart = el("div", { class: "chart flow", id: "flow-chart" });
  const legend = el("ul", { class: "legend flow-legend" }, ...Object.entries(HANDLING_COLOURS).map(
    ([handling, colour]) => el("li", {}, el("span", { class: "dot", style: `background: ${colour}` }),
      HANDLING_LABELS[handling])));
  root.replaceChildren(el("div", { class: "toolbar" }, el("label", { class: "control" },
    el("span", { text: "Contact type" }), select), summary), chart, legend);
  select.addEventListener("change", () => { chosen = select.value; draw(); });

  function draw() {
    const types = Object.entries(report.flows).sort((a, b) => b[1].journeys - a[1].journeys
      || a[0].localeCompare(b[0]));
    if (!types.some(([type]) => type === chosen)) chosen = types.length ? types[0][0] : null;
    select.replaceChildren(...types.map(([type, flow]) => {
      const option = el("option", { value: type,
        text: `${labels[type] || type} (${flow.journeys})` });
      option.selected = type === chosen;
      return option;
    }));
    select.disabled = !types.length;
    if (!chosen) {
      summary.textContent = "";
      chart.replaceChildren(el("p", { class: "empty-note", text: "No journeys in this window." }));
      return;
    }
    const flow = report.flows[chosen];
    const again = flow.nodes.filter((n) => n.stage === 2).reduce((s, n) => s + n.journeys, 0);
    summary.textContent = `${flow.journeys} journeys; ${again} came back within the repeat window`;
    chart.replaceChildren(drawFlow(flow, labels[chosen] || chosen, report.max_stages));
  }

  return {
    show(journeys, typeLabels) { report = journeys; labels = typeLabels; draw(); },
    get chosen() { return chosen; },
  };
}

function stageLabel(stage, maxStages) {
  const name = `${ORDINALS[stage - 1] || `${stage}th`} contact`;
  return stage === maxStages ? `${name} (journeys cut here)` : name;
}

export function drawFlow(flow, label, maxStages) {
  const stages = Math.max(...flow.nodes.map((n) => n.stage));
  const columns = Array.from({ length: stages }, (_, i) => flow.nodes.filter((n) => n.stage === i + 1));
  const tallest = Math.max(...columns.map((c) => c.length));
  const plotH = Math.max(180, tallest * 54);
  const height = TOP + plotH + BOTTOM;
  const scale = (plotH - GAP * (tallest - 1)) / Math.max(...columns.map(
    (c) => c.reduce((s, n) => s + n.journeys, 0)));
  // Labels sit right of their node: the last column keeps room for its own.
  const span = stages > 1 ? (WIDTH - NODE_W - LABEL_W) / (stages - 1) : 0;
  const x = (stage) => (stages > 1 ? (stage - 1) * span : (WIDTH - NODE_W) / 2);
  const place = new Map();
  columns.forEach((column) => {
    let y = TOP;
    for (const node of column) {
      const h = Math.max(3, node.journeys * scale);
      place.set(`${node.stage}|${node.step}`, { node, y, h, out: y, in: y });
      y += h + GAP;
    }
  });
  const chart = svg("svg", { viewBox: `0 0 ${WIDTH} ${height}`, role: "img",
    "aria-label": `Journeys of ${label}: ${flow.journeys} journeys over ${stages} contacts`,
    "data-type": label });
  for (let stage = 1; stage <= stages; stage++) {
    chart.append(svg("text", { class: "stage", x: x(stage), y: 16,
      text: stageLabel(stage, maxStages) }));
  }
  const links = [...flow.links].sort((a, b) => place.get(`${a.stage + 1}|${a.to}`).y
    - place.get(`${b.stage + 1}|${b.to}`).y);
  for (const link of links) {
    const from = place.get(`${link.stage}|${link.from}`);
    const to = place.get(`${link.stage + 1}|${link.to}`);
    const h = Math.max(1.5, link.journeys * scale);
    const [x0, x1] = [x(link.stage) + NODE_W, x(link.stage + 1)];
    const xm = (x0 + x1) / 2;
    const [y0, y1] = [from.out, to.in];
    from.out += h;
    to.in += h;
    const d = `M${x0},${y0} C${xm},${y0} ${xm},${y1} ${x1},${y1} L${x1},${y1 + h} ` +
      `C${xm},${y1 + h} ${xm},${y0 + h} ${x0},${y0 + h} Z`;
    chart.append(svg("path", { class: "link", d, fill: HANDLING_COLOURS[from.node.handling] || "#999",
      "data-stage": link.stage, "data-from": link.from, "data-to": link.to,
      "data-journeys": link.journeys },
    svg("title", { text: `${describe(link.from)} → ${describe(link.to)}: ${link.journeys} journeys` })));
  }
  for (const { node, y, h } of place.values()) {
    const tx = x(node.stage) + NODE_W + 8;
    const ended = node.ended && node.stage < stages ? ` · ${node.ended} ended here` : "";
    chart.append(svg("g", { class: "node", "data-stage": node.stage, "data-step": node.step,
      "data-journeys": node.journeys, "data-ended": node.ended },
    svg("rect", { x: x(node.stage), y, width: NODE_W, height: h, rx: 2,
      fill: HANDLING_COLOURS[node.handling] || "#999" }),
    svg("text", { class: "node-label", x: tx, y: y + Math.min(h / 2, 14) + 4 },
    svg("tspan", { class: "node-name", text: describe(node.step) }),
    svg("tspan", { class: "node-count", text: `  ${node.journeys}${ended}` })),
    svg("title", { text: `${stageLabel(node.stage, maxStages)}: ${describe(node.step)}, ` +
      `${node.journeys} journeys, ${node.ended} ended here` })));
  }
  return chart;
}

function describe(step) {
  const [channel, handling] = step.split(":");
  return `${channelName(channel)} · ${HANDLING_LABELS[handling] || handling}`;
}
