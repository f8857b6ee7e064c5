// The batches page: GET /api/v1/batches with the key the playground keeps (sessionStorage
// "pixelrouter-key"), a row per batch with a progress bar, refreshed every few seconds while
// any batch has not ended; a click opens GET /api/v1/batches/{id} and its results (the images
// as thumbnails from their signed URLs, the errors). Everything from the API is set as text
// or as an attribute, never as markup: custom_ids and error messages are anyone's text.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_ENTRY = "pixelrouter-key"; // the playground's (playground.js)
const ENDED = new Set(["completed", "failed", "expired", "cancelled"]);
const REFRESH_MS = 2000;
const LIST_LIMIT = 100;

let timer = null;
let openId = null; // the batch whose results are shown
let openShown = ""; // its status and counts when they were drawn

function key() {
  return (sessionStorage.getItem(KEY_ENTRY) || "").trim();
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

async function api(path) {
  const response = await fetch(`/api/v1/${path}`, { headers: { Authorization: `Bearer ${key()}` } });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = `${response.status}: ${(await response.json()).error.message}`;
    } catch {
      // not the JSON error envelope: the status line says enough
    }
    throw new Error(message);
  }
  return response.json();
}

function utcText(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  return new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19);
}

/** A <progress> of the finished requests (done well or not) of all, and its text. */
function progressOf(counts) {
  const done = counts.completed + counts.failed;
  const bar = el("progress");
  bar.max = Math.max(counts.total, 1);
  bar.value = done;
  bar.dataset.testid = "bt-progress";
  bar.dataset.done = String(done);
  bar.dataset.total = String(counts.total);
  bar.title = `${done} of ${counts.total} finished`;
  return bar;
}

function countsText(counts) {
  return `${counts.completed} completed · ${counts.failed} failed · ${counts.total} total`;
}

function statusBadge(status) {
  const kind = status === "completed" ? "ok" : ENDED.has(status) ? "down" : "degraded";
  const badge = el("span", status, `badge ${kind}`);
  badge.dataset.testid = "bt-row-status";
  return badge;
}

function row(batch) {
  const tr = el("tr");
  tr.className = "batch-row";
  tr.dataset.testid = "bt-row";
  tr.dataset.batchId = batch.id;
  tr.dataset.status = batch.status;
  tr.tabIndex = 0;
  tr.setAttribute("role", "button");
  tr.title = "Show its results";
  const progress = el("td");
  progress.append(progressOf(batch.request_counts));
  const cells = [
    el("td", batch.id, "mono batch-id"),
    el("td", batch.endpoint, "mono"),
    el("td"),
    el("td", utcText(batch.created_at), "nowrap"),
    progress,
    el("td", countsText(batch.request_counts), "nowrap"),
  ];
  cells[2].append(statusBadge(batch.status));
  if (batch.id === openId) tr.classList.add("open");
  tr.append(...cells);
  tr.addEventListener("click", () => openBatch(batch.id));
  tr.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      openBatch(batch.id);
    }
  });
  return tr;
}

function showError(where, message) {
  $(where).textContent = message;
  $(where).hidden = message === "";
}

function schedule(running) {
  clearTimeout(timer);
  timer = running ? setTimeout(load, REFRESH_MS) : null;
}

async function load() {
  clearTimeout(timer);
  if (!key()) {
    $("bt-status").textContent = "Enter your API key to see its batches.";
    $("bt-table").hidden = true;
    return;
  }
  let list;
  try {
    list = await api(`batches?limit=${LIST_LIMIT}`);
  } catch (error) {
    showError("bt-error", String(error.message || error));
    $("bt-status").textContent = "The batches could not be listed.";
    schedule(false);
    return;
  }
  showError("bt-error", "");
  const batches = list.data;
  $("bt-rows").replaceChildren(...batches.map(row));
  $("bt-table").hidden = batches.length === 0;
  const running = batches.filter((b) => !ENDED.has(b.status)).length;
  let text = batches.length === 0 ? "This key has no batches." : `${batches.length} batch(es)`;
  if (list.has_more) text += ` (the newest ${LIST_LIMIT})`;
  if (running) text += `, ${running} running: refreshed every ${REFRESH_MS / 1000} s`;
  $("bt-status").textContent = text;
  const open = batches.find((b) => b.id === openId);
  if (open && `${open.status} ${countsText(open.request_counts)}` !== openShown) {
    await openBatch(openId);
  }
  schedule(running > 0);
}

/** The images of a result body: a chat completion's message.images, or an Images answer's
 * data[i].url (b64_json as a data: URL). Only http(s) and data:image URLs are shown. */
function imageUrls(body) {
  const urls = [];
  for (const choice of (body && body.choices) || []) {
    for (const image of (choice.message && choice.message.images) || []) {
      if (image.image_url && typeof image.image_url.url === "string") urls.push(image.image_url.url);
    }
  }
  for (const image of (body && body.data) || []) {
    if (typeof image.url === "string") urls.push(image.url);
    else if (typeof image.b64_json === "string") {
      urls.push(`data:${image.media_type || "image/png"};base64,${image.b64_json}`);
    }
  }
  return urls.filter((url) => /^(https?:|data:image\/)/i.test(url));
}

function resultCard(result) {
  const card = el("div", null, "batch-result");
  card.dataset.testid = "bt-result";
  const ok = result.response !== null && result.response !== undefined;
  card.dataset.status = ok ? "succeeded" : "failed";
  const head = el("div", null, "head");
  const id = el("span", result.custom_id, "mono custom-id");
  id.dataset.testid = "bt-custom-id";
  head.append(id, el("span", ok ? `succeeded (${result.response.status_code})` : "failed", `badge ${ok ? "ok" : "down"}`));
  card.append(head);
  if (ok) {
    const images = el("div", null, "thumbs");
    imageUrls(result.response.body).forEach((url, i) => {
      const link = el("a");
      link.href = url;
      link.target = "_blank";
      link.rel = "noopener";
      const img = el("img");
      img.alt = `${result.custom_id}, image ${i + 1}`;
      img.dataset.testid = "bt-thumb";
      img.loading = "lazy";
      img.src = url;
      link.append(img);
      images.append(link);
    });
    card.append(images);
  } else {
    const error = result.error || {};
    const text = `${error.type || "error"}: ${error.message || "the request failed"}`;
    const message = el("div", text, "error");
    message.dataset.testid = "bt-result-error";
    card.append(message);
  }
  return card;
}

async function openBatch(id) {
  openId = id;
  for (const tr of $("bt-rows").children) tr.classList.toggle("open", tr.dataset.batchId === id);
  $("bt-detail").hidden = false;
  $("bt-detail-id").textContent = id;
  let batch;
  try {
    batch = await api(`batches/${encodeURIComponent(id)}`);
  } catch (error) {
    showError("bt-detail-error", String(error.message || error));
    return;
  }
  if (openId !== id) return; // another batch was opened meanwhile
  openShown = `${batch.status} ${countsText(batch.request_counts)}`;
  showError("bt-detail-error", batch.error ? batch.error.message : "");
  const facts = [
    batch.status,
    countsText(batch.request_counts),
    `model ${batch.model}`,
    `created ${utcText(batch.created_at)} UTC`,
  ];
  if (batch.finalized_at) facts.push(`ended ${utcText(batch.finalized_at)} UTC`);
  if (batch.usage) facts.push(`cost $${batch.usage.cost}`);
  $("bt-detail-facts").textContent = facts.join(" · ");
  $("bt-detail").dataset.status = batch.status;
  const results = batch.results || [];
  const cards = results.map(resultCard);
  if (!cards.length) cards.push(el("div", "No request has finished yet.", "muted"));
  $("bt-results").replaceChildren(...cards);
}

function setupKey() {
  $("bt-key").value = key();
  $("bt-key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_ENTRY, $("bt-key").value.trim());
    openId = null;
    openShown = "";
    $("bt-detail").hidden = true;
    load();
  });
}

setupKey();
load();
