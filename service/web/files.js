// Customers' files (MMS and WhatsApp media, web chat uploads) and the files agents sent, as
// the agent console and the contact page show them. The proxy (GET /api/contacts/{id}/attachments/{n}) needs the page's bearer token, which
// an <img src> cannot send: the page fetches with the header and shows the bytes as a blob:
// URL, each file once until the page lets its contact go. Only pictures the server serves
// inline are shown; every other type is a download typed as bare bytes, so no HTML or SVG a
// customer sent ever runs in the page's origin.

import { el } from "/static/ops_draw.js";

export const INLINE_IMAGES = new Set(["image/jpeg", "image/png", "image/gif", "image/webp"]);
const FILE_KINDS = {
  "application/pdf": "PDF document", "text/plain": "Text file", "text/csv": "Spreadsheet (CSV)",
  "audio/mpeg": "Audio", "audio/ogg": "Audio", "audio/amr": "Audio", "video/mp4": "Video",
  "video/3gpp": "Video", "text/vcard": "Contact card", "text/x-vcard": "Contact card",
};

export function fileLabel(file) {
  return INLINE_IMAGES.has(file.content_type) ? `Photo ${file.n}` : FILE_KINDS[file.content_type] || `File ${file.n}`;
}

// "a photo", "3 files": a transcript line that is only files, in a list of contacts.
export function filesSummary(attachments) {
  const count = Array.isArray(attachments) ? attachments.length : 0;
  if (!count) return "";
  const photos = attachments.every((a) => INLINE_IMAGES.has(a.content_type));
  return `${count === 1 ? "a" : count} ${photos ? "photo" : "file"}${count === 1 ? "" : "s"}`;
}

// The files of one page, read with the token kept under `tokenKey` in the tab's session.
export function createFiles(tokenKey) {
  const loaded = new Map(); // "contact/n" -> {state: loading|ready|failed, url, promise}

  // A photo as a thumbnail linking to the full picture; anything else as a download card.
  // `from`: who sent it, as the label says it ("the customer", "you").
  function view(contactId, file, from = "the customer") {
    return INLINE_IMAGES.has(file.content_type) ? photoView(contactId, file, from) : fileView(contactId, file, from);
  }

  function photoView(contactId, file, from) {
    const label = `${fileLabel(file)} from ${from}`;
    const img = el("img", { alt: label, decoding: "async" });
    const link = el("a", { class: "attachment photo", target: "_blank", rel: "noopener", title: "Open full size",
                           "data-file": `${contactId}/${file.n}`, "aria-label": `${label}: open full size` },
      img, el("span", { class: "attachment-caption", text: `${fileLabel(file)} · ${file.content_type.replace("image/", "").toUpperCase()}` }));
    const show = () => load(contactId, file).then((entry) => {
      link.href = entry.url;
      img.src = entry.url;
      link.classList.add("ready");
    }, (error) => showFailed(link, error, show));
    show();
    return link;
  }

  function fileView(contactId, file, from) {
    const link = el("a", { class: "attachment file", href: "#", "data-file": `${contactId}/${file.n}`,
                           "aria-label": `${fileLabel(file)} (${file.content_type}) from ${from}: download` },
      el("span", { class: "file-icon", "aria-hidden": "true", text: extension(file.content_type) }),
      el("span", { class: "file-text" },
        el("span", { class: "file-name", text: fileLabel(file) }),
        el("span", { class: "file-type", text: `${file.content_type} · Download` })));
    link.addEventListener("click", async (event) => {
      event.preventDefault();
      try {
        const entry = await load(contactId, file);
        el("a", { href: entry.url, download: `attachment-${file.n}.${extension(file.content_type).toLowerCase()}` }).click();
        link.classList.remove("failed");
      } catch (error) {
        showFailed(link, error);
      }
    });
    return link;
  }

  function load(contactId, file) {
    const key = `${contactId}/${file.n}`;
    let entry = loaded.get(key);
    if (!entry || entry.state === "failed") {
      entry = { state: "loading" };
      entry.promise = fetchFile(contactId, file).then((url) => {
        Object.assign(entry, { state: "ready", url });
        return entry;
      }, (error) => {
        entry.state = "failed";
        throw error;
      });
      loaded.set(key, entry);
    }
    return entry.promise;
  }

  async function fetchFile(contactId, file) {
    const token = sessionStorage.getItem(tokenKey) || "";
    const response = await fetch(`/api/contacts/${encodeURIComponent(contactId)}/attachments/${file.n}`,
                                 { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.error || `the server answered ${response.status}`);
    }
    const blob = await response.blob();
    const type = INLINE_IMAGES.has(file.content_type) ? file.content_type : "application/octet-stream";
    return URL.createObjectURL(new Blob([blob], { type }));
  }

  // Let go of the files of the contacts `gone(contactId)` names.
  function forget(gone) {
    for (const [key, entry] of loaded) {
      if (!gone(key.slice(0, key.lastIndexOf("/")))) continue;
      if (entry.url) URL.revokeObjectURL(entry.url);
      loaded.delete(key);
    }
  }

  return { view, forget };
}

function extension(type) {
  const sub = (type.split("/")[1] || "file").replace(/^(x-|vnd\.)/, "").split(/[.+;-]/)[0];
  return sub.slice(0, 4).toUpperCase() || "FILE";
}

// The reason stays in the tooltip; a click tries again (a download card always does).
function showFailed(link, error, retry = null) {
  link.classList.add("failed");
  link.title = `Couldn't load this file: ${error.message}. Click to try again.`;
  if (!retry) return;
  link.addEventListener("click", (event) => {
    event.preventDefault();
    link.classList.remove("failed");
    retry();
  }, { once: true });
}
