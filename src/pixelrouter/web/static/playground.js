// The playground: POST /api/v1/images with stream: true, read the SSE body from a
// ReadableStream, show the denoising progress (": <prefix> k/N" comments; the page carries the
// prefix, from pixelrouter/sse.py), the images, the cost (usage.cost) and the provider
// (GET /api/v1/generation). The selected model's LoRA adapters (embedded in the page as JSON)
// may be picked, each at a scale, and are sent as `loras`.
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE = JSON.parse($("pg-data").textContent);
const APP_TITLE = "pixelrouter playground";

function usdText(cost) {
  // usage.cost is USD; print it like the rest of the site, from micro-dollars.
  const micro = Math.round(cost * 1000000);
  const whole = Math.floor(micro / 1000000);
  let decimals = String(micro % 1000000).padStart(6, "0").replace(/0+$/, "");
  while (decimals.length < 2) decimals += "0";
  return `$${whole}.${decimals}`;
}

function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function requestBody() {
  const body = {
    model: $("pg-model").value,
    prompt: $("pg-prompt").value,
    n: parseInt($("pg-n").value || "1", 10),
    stream: true,
  };
  if ($("pg-size-mode").value === "size") {
    body.size = `${$("pg-width").value}x${$("pg-height").value}`;
  } else {
    body.aspect_ratio = $("pg-ratio").value;
    body.resolution = $("pg-tier").value;
  }
  const seed = $("pg-seed").value.trim();
  if (seed !== "") body.seed = parseInt(seed, 10);
  const loras = chosenLoras();
  if (loras.length) body.loras = loras;
  const files = Array.from($("pg-refs").files || []);
  if (files.length) {
    body.input_references = [];
    for (const file of files) {
      body.input_references.push({ type: "image_url", image_url: { url: await readAsDataUrl(file) } });
    }
  }
  return body;
}

/** [step, total] of a progress comment ("<prefix> k/N", the prefix on the form), else null. */
function readProgress(comment) {
  const prefix = `${$("playground-form").dataset.progressPrefix} `;
  if (!comment.startsWith(prefix)) return null;
  const match = /^(\d+)\/(\d+)/.exec(comment.slice(prefix.length));
  return match ? [parseInt(match[1], 10), parseInt(match[2], 10)] : null;
}

/** Yields each SSE event of a fetch response as {comments: [...], data: "..."|null}. */
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  const parse = (block) => {
    const comments = [];
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) comments.push(line.slice(1).trim());
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    return { comments, data: data.length ? data.join("\n") : null };
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (block.trim()) yield parse(block);
    }
  }
  if (buffer.trim()) yield parse(buffer);
}

const ui = {
  reset() {
    $("pg-error").hidden = true;
    $("pg-facts").hidden = true;
    $("pg-images").replaceChildren();
    const bar = $("pg-progress");
    bar.hidden = false;
    bar.value = 0;
    bar.max = 1;
    bar.dataset.events = "0";
    bar.dataset.done = "false";
    for (const id of ["pg-cost", "pg-provider", "pg-tokens", "pg-generation"]) $(id).textContent = "";
  },
  status(text) { $("pg-status").textContent = text; },
  error(text) {
    $("pg-error").textContent = text;
    $("pg-error").hidden = false;
    $("pg-progress").hidden = true;
  },
  progress(step, total) {
    const bar = $("pg-progress");
    bar.max = total;
    bar.value = step;
    bar.dataset.events = String(parseInt(bar.dataset.events, 10) + 1);
    this.status(`Denoising: step ${step} of ${total}`);
  },
  image(event) {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    const caption = document.createElement("figcaption");
    img.alt = `generated image ${event.index + 1}`;
    img.dataset.testid = "pg-image";
    img.onload = () => {
      caption.textContent = `image ${event.index + 1} · ${img.naturalWidth}x${img.naturalHeight}`;
    };
    img.src = `data:${event.media_type || "image/png"};base64,${event.b64_json}`;
    figure.append(img, caption);
    $("pg-images").append(figure);
  },
};

async function providerOf(generationId, key) {
  // The record is written when the generation ends; ask again briefly if it is not there yet.
  for (let attempt = 0; attempt < 20; attempt++) {
    const response = await fetch(`/api/v1/generation?id=${encodeURIComponent(generationId)}`, {
      headers: { Authorization: `Bearer ${key}` },
    });
    if (response.ok) {
      const record = (await response.json()).data;
      if (record.provider_name) return record.provider_name;
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  return "unknown";
}

async function errorText(response) {
  try {
    const body = await response.json();
    return `${response.status}: ${body.error.message}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

async function generate(event) {
  event.preventDefault();
  const key = $("pg-key").value.trim();
  const button = $("pg-submit");
  ui.reset();
  button.disabled = true;
  ui.status("Sending the request…");
  try {
    const response = await fetch("/api/v1/images", {
      method: "POST",
      headers: {
        Authorization: `Bearer ${key}`,
        "Content-Type": "application/json",
        Accept: "text/event-stream",
        "HTTP-Referer": `${location.origin}/playground`,
        "X-Title": APP_TITLE,
      },
      body: JSON.stringify(await requestBody()),
    });
    if (!response.ok) {
      ui.error(await errorText(response));
      ui.status("The request was refused.");
      return;
    }
    const generationId = response.headers.get("x-generation-id");
    $("pg-generation").textContent = generationId;
    ui.status("Queued…");
    let usage = null;
    let failed = false;
    for await (const sse of sseEvents(response)) {
      for (const comment of sse.comments) {
        const progress = readProgress(comment);
        if (progress) ui.progress(progress[0], progress[1]);
      }
      if (sse.data === null || sse.data === "[DONE]") continue;
      const payload = JSON.parse(sse.data);
      if (payload.type === "image_generation.completed") {
        ui.image(payload);
        if (payload.usage) usage = payload.usage;
      } else if (payload.type === "error") {
        failed = true;
        ui.error(`${payload.error.code}: ${payload.error.message}`);
      }
    }
    if (failed) {
      ui.status("The generation failed; it cost nothing.");
      return;
    }
    const bar = $("pg-progress");
    bar.value = bar.max;
    bar.dataset.done = "true";
    $("pg-facts").hidden = false;
    $("pg-cost").textContent = usage ? usdText(usage.cost) : "—";
    $("pg-tokens").textContent = usage ? String(usage.completion_tokens) : "—";
    ui.status("Done. Fetching the generation record…");
    $("pg-provider").textContent = await providerOf(generationId, key);
    ui.status("Done.");
  } catch (error) {
    ui.error(String(error));
    ui.status("The request failed.");
  } finally {
    button.disabled = false;
  }
}

function setupSizeMode() {
  const apply = () => {
    const bySize = $("pg-size-mode").value === "size";
    $("pg-size-box").hidden = !bySize;
    $("pg-ratio-box").hidden = bySize;
    $("pg-tier-box").hidden = bySize;
  };
  $("pg-size-mode").addEventListener("change", apply);
  apply();
}

function setupModel() {
  const wanted = new URLSearchParams(location.search).get("model");
  if (wanted) {
    for (const option of $("pg-model").options) if (option.value === wanted) option.selected = true;
  }
  // Another model has other adapters: the picker starts again, with nothing chosen.
  $("pg-model").addEventListener("change", renderLoras);
  renderLoras();
}

/** The picker of the selected model's adapters: a checkbox and a scale (its default) for each;
 * hidden when the model has none. Names and descriptions are operators' text: textContent only. */
function renderLoras() {
  const adapters = PAGE.loras[$("pg-model").value] || [];
  const rows = adapters.map((lora) => {
    const row = document.createElement("div");
    row.className = "lora";
    row.dataset.lora = lora.name;
    const pick = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = lora.name;
    box.addEventListener("change", limitLoras);
    const name = document.createElement("span");
    name.className = "mono";
    name.textContent = lora.name;
    pick.append(box, name);
    const scale = document.createElement("input");
    scale.type = "number";
    scale.step = "0.05";
    scale.min = String(-PAGE.max_scale);
    scale.max = String(PAGE.max_scale);
    scale.value = String(lora.default_scale);
    scale.setAttribute("aria-label", `Scale of ${lora.name}`);
    row.append(pick, scale);
    if (lora.description) {
      const description = document.createElement("div");
      description.className = "muted";
      description.textContent = lora.description;
      row.append(description);
    }
    return row;
  });
  $("pg-lora-list").replaceChildren(...rows);
  $("pg-loras").hidden = rows.length === 0;
  limitLoras();
}

/** At most max_loras adapters: once that many are chosen, the others cannot be. */
function limitLoras() {
  const boxes = Array.from($("pg-lora-list").querySelectorAll('input[type="checkbox"]'));
  const full = boxes.filter((box) => box.checked).length >= PAGE.max_loras;
  for (const box of boxes) box.disabled = full && !box.checked;
}

/** The chosen adapters as `loras`: [{name, scale}], in the list's order; an empty scale
 * leaves it to the server (the adapter's default). The server checks the scale's range. */
function chosenLoras() {
  const chosen = [];
  for (const row of $("pg-lora-list").children) {
    if (!row.querySelector('input[type="checkbox"]').checked) continue;
    const scale = row.querySelector('input[type="number"]').value.trim();
    chosen.push(scale === "" ? { name: row.dataset.lora } : { name: row.dataset.lora, scale: Number(scale) });
  }
  return chosen;
}

// The key is kept for this tab only (sessionStorage), never sent anywhere but this server.
function setupKey() {
  const saved = sessionStorage.getItem("pixelrouter-key");
  if (saved) $("pg-key").value = saved;
  $("pg-key").addEventListener("change", () => sessionStorage.setItem("pixelrouter-key", $("pg-key").value.trim()));
}

setupSizeMode();
setupModel();
setupKey();
$("playground-form").addEventListener("submit", generate);
