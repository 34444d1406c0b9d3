// Drawing helpers shared by the pages' modules (the ops dashboard's, files.js): elements,
// SVG, figures as text.

const SVG_NS = "http://www.w3.org/2000/svg";

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

export function formatRate(value) {
  return value === null || value === undefined ? "–" : `${(value * 100).toFixed(1)}%`;
}

// CSAT: a mean of 1-5 answers; NPS: points from -100 to 100.
export function formatScore(value, kind) {
  if (value === null || value === undefined) return "–";
  return kind === "nps" ? `${value > 0 ? "+" : ""}${value.toFixed(1)}` : value.toFixed(2);
}

export const HANDLING_LABELS = {
  all: "everyone", self_service: "self-service", agent: "an agent", abandoned: "abandoned",
  queued: "still queued", dropped: "dropped", open: "still open",
};

const CHANNEL_NAMES = { sms: "SMS", voice: "Voice", chat: "Chat", whatsapp: "WhatsApp" };

export function channelName(channel) {
  return CHANNEL_NAMES[channel] || channel;
}
