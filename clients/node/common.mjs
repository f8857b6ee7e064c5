// What the client programs share: the server's coordinates, a fetch that records what went
// over the wire, image decoding and size checks, and the runner that prints one JSON line per
// call: {"client", "version", "call", "ok", "detail", "requests"}.
import { readFileSync } from "node:fs";
import { PNG } from "pngjs";

export const MODEL = "black-forest-labs/flux.2-klein-4b";
export const [AUTHOR, SLUG] = MODEL.split("/");

function env(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`${name} is not set (see clients/node/README.md)`);
    process.exit(2);
  }
  return value;
}

export const BASE_URL = env("PIXELROUTER_BASE_URL").replace(/\/+$/, ""); // http://HOST:PORT/api/v1
export const API_KEY = env("PIXELROUTER_API_KEY"); // an inference key
export const ADMIN_KEY = process.env.PIXELROUTER_ADMIN_KEY ?? ""; // a management key (optional)

export function version(pkg) {
  const url = new URL(`./node_modules/${pkg}/package.json`, import.meta.url);
  return JSON.parse(readFileSync(url, "utf8")).version;
}

// ---- the wire ---------------------------------------------------------------------------

let current = null; // the record of the call being run

function elide(value) {
  if (typeof value === "string") return value.length > 120 ? `<${value.length} chars>` : value;
  if (Array.isArray(value)) return value.map(elide);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, elide(v)]));
  }
  return value;
}

async function describeBody(request) {
  const type = request.headers.get("content-type") ?? "";
  if (!request.body) return undefined;
  if (type.startsWith("multipart/form-data")) {
    const fields = {};
    for (const [name, value] of (await request.formData()).entries()) {
      const shown = typeof value === "string" ? value : `<file ${value.name} ${value.type} ${value.size} B>`;
      fields[name] = name in fields ? [fields[name], shown].flat() : shown;
    }
    return fields;
  }
  const text = await request.text();
  try {
    return elide(JSON.parse(text));
  } catch {
    return elide(text);
  }
}

/** A `fetch` that records each request (method, path, body) and keeps a copy of each
 * response body, so a program can see what an SDK dropped. */
export async function recordingFetch(input, init) {
  const request = new Request(input, init?.body ? { ...init, duplex: "half" } : init);
  const entry = {
    method: request.method,
    path: request.url.startsWith(BASE_URL) ? request.url.slice(BASE_URL.length) : request.url,
    body: await describeBody(request.clone()),
  };
  if (request.url.startsWith("http")) current?.requests.push(entry);
  const response = await fetch(request);
  entry.status = response.status;
  entry.text = response.clone().text().catch((e) => `<unreadable: ${e}>`); // read by lastResponseText()
  return response;
}

/** The body of the last response of the running call, as it came over the wire. */
export async function lastResponseText() {
  const last = current.requests.at(-1);
  return last ? await last.text : "";
}

/** The JSON `data:` payloads of an SSE body (`[DONE]` kept as the string). */
export function ssePayloads(text) {
  return text
    .split(/\r?\n/)
    .filter((line) => line.startsWith("data:"))
    .map((line) => line.slice(5).trim())
    .map((data) => (data === "[DONE]" ? data : JSON.parse(data)));
}

// ---- images -----------------------------------------------------------------------------

const TIERS = { "0.5K": 2 ** 18, 512: 2 ** 18, "1K": 2 ** 20, "2K": 2 ** 22 };

/** SPEC §2: the size of ratio `a:b` at a tier: w = 16*floor(sqrt(A*a/b)/16), h likewise. */
export function sizeFor(ratio, tier = "1K") {
  const [a, b] = ratio.split(":").map(Number);
  const area = TIERS[tier];
  return [16 * Math.floor(Math.sqrt((area * a) / b) / 16), 16 * Math.floor(Math.sqrt((area * b) / a) / 16)];
}

function toBytes(image) {
  if (typeof image !== "string") return Buffer.from(image);
  const payload = image.startsWith("data:") ? image.slice(image.indexOf(",") + 1) : image;
  return Buffer.from(payload, "base64");
}

function jpegSize(bytes) {
  for (let i = 2; i + 9 < bytes.length; ) {
    if (bytes[i] !== 0xff) throw new Error(`JPEG: no marker at ${i}`);
    const marker = bytes[i + 1];
    const length = bytes.readUInt16BE(i + 2);
    if (marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker)) {
      return [bytes.readUInt16BE(i + 7), bytes.readUInt16BE(i + 5)];
    }
    i += 2 + length;
  }
  throw new Error("JPEG: no SOF marker");
}

function webpSize(bytes) {
  const chunk = bytes.toString("ascii", 12, 16);
  if (chunk === "VP8X") return [1 + bytes.readUIntLE(24, 3), 1 + bytes.readUIntLE(27, 3)];
  if (chunk === "VP8L") {
    const bits = bytes.readUInt32LE(21);
    return [1 + (bits & 0x3fff), 1 + ((bits >> 14) & 0x3fff)];
  }
  if (chunk === "VP8 ") return [bytes.readUInt16LE(26) & 0x3fff, bytes.readUInt16LE(28) & 0x3fff];
  throw new Error(`WebP: unknown chunk ${chunk}`);
}

/** Decodes an image (bytes, base64 or a data: URL): PNG fully, JPEG and WebP by header. */
export function imageInfo(image) {
  const bytes = toBytes(image);
  if (bytes.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) {
    const png = PNG.sync.read(bytes);
    return { format: "png", width: png.width, height: png.height };
  }
  if (bytes[0] === 0xff && bytes[1] === 0xd8) {
    const [width, height] = jpegSize(bytes);
    return { format: "jpeg", width, height };
  }
  if (bytes.toString("ascii", 0, 4) === "RIFF" && bytes.toString("ascii", 8, 12) === "WEBP") {
    const [width, height] = webpSize(bytes);
    return { format: "webp", width, height };
  }
  throw new Error(`not a PNG, JPEG or WebP image (starts ${bytes.subarray(0, 8).toString("hex")})`);
}

/** Checks every image's format and size; returns "WxH fmt, ..." for the detail. */
export function checkImages(images, [width, height], format = "png") {
  check(images?.length > 0, "no images in the response");
  return images
    .map((image, i) => {
      const info = imageInfo(image);
      check(
        info.format === format && info.width === width && info.height === height,
        `image ${i}: got ${info.width}x${info.height} ${info.format}, asked ${width}x${height} ${format}`,
      );
      return `${info.width}x${info.height} ${info.format}`;
    })
    .join(", ");
}

export function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

/** A PNG of the given size (a gradient), to send as a reference image. */
export function makePng(width, height) {
  const png = new PNG({ width, height });
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * 4;
      png.data[i] = (x * 255) / width;
      png.data[i + 1] = (y * 255) / height;
      png.data[i + 2] = 128;
      png.data[i + 3] = 255;
    }
  }
  return PNG.sync.write(png);
}

// ---- errors -----------------------------------------------------------------------------

function zodIssues(issues, prefix = []) {
  return issues.flatMap((issue) => {
    const path = [...prefix, ...(issue.path ?? [])];
    const here = `${path.join(".") || "(root)"}: ${issue.message}${issue.code ? ` [${issue.code}]` : ""}`;
    const nested = (issue.errors ?? issue.unionErrors?.map((e) => e.issues) ?? []).flatMap(
      (branch, i) => zodIssues(branch, [...path, `<union ${i}>`]),
    );
    return [here, ...nested];
  });
}

const shorten = (text, max) =>
  text.replace(/[A-Za-z0-9+/=]{100,}/g, (b64) => `<${b64.length} base64 chars>`).slice(0, max);

/** Everything a client's error says: class, status, message, zod issues (with their paths),
 * the body it read; following `cause` and `lastError` chains. */
export function describeError(error) {
  const parts = [];
  const issues = []; // first: the validation issues say what the client required
  const seen = new Set();
  for (let e = error; e && typeof e === "object" && !seen.has(e); ) {
    seen.add(e);
    const status = e.statusCode ?? e.status;
    const head = `${e.name ?? e.constructor?.name}${status ? ` (HTTP ${status})` : ""}`;
    if (Array.isArray(e.issues)) issues.push(`${head}: ${zodIssues(e.issues).join("; ")}`);
    else parts.push(`${head}: ${shorten(String(e.message), 400)}`);
    const body = e.responseBody ?? e.body ?? e.rawMessage;
    if (typeof body === "string" && body && !parts.some((p) => p.includes(shorten(body, 100)))) {
      parts.push(`body: ${shorten(body, 800)}`);
    }
    e = e.cause ?? e.lastError;
  }
  return [...issues, ...parts].join(" | ");
}

// ---- the runner -------------------------------------------------------------------------

/** `const m = matrix("openai", "openai")`; `await m.call("name", async () => detail)`;
 * `m.done()` sets a non-zero exit code if any call failed. */
export function matrix(client, pkg) {
  const clientVersion = version(pkg);
  let failed = 0;
  return {
    async call(name, fn) {
      current = { requests: [] };
      let ok = true;
      let detail;
      try {
        detail = (await fn()) ?? "";
      } catch (error) {
        ok = false;
        failed += 1;
        detail = describeError(error);
      }
      const requests = current.requests.map(({ text, ...rest }) => rest);
      const line = { client, version: clientVersion, call: name, ok, detail, requests };
      console.log(JSON.stringify(line));
    },
    done() {
      process.exitCode = failed ? 1 : 0;
    },
  };
}
