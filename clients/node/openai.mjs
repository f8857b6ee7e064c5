// The `openai` Node SDK, unchanged, against pixelrouter: the OpenAI Images API (generate and
// multipart edit, plain and streamed), chat completions with image output, the model list.
// The SDK does not validate responses, so each call checks the fields it reads.
import OpenAI, { toFile } from "openai";
import {
  API_KEY,
  BASE_URL,
  MODEL,
  check,
  checkImages,
  makePng,
  matrix,
  recordingFetch,
  sizeFor,
} from "./common.mjs";

const client = new OpenAI({ baseURL: BASE_URL, apiKey: API_KEY, fetch: recordingFetch, maxRetries: 0 });
const m = matrix("openai", "openai");
const prompt = "a lighthouse at dusk";
const reference = () => toFile(makePng(320, 240), "reference.png", { type: "image/png" });

await m.call("images.generate b64_json n=2", async () => {
  const result = await client.images.generate({ model: MODEL, prompt, size: "256x256", n: 2, response_format: "b64_json" });
  check(result.usage?.output_tokens === 2 * 4096 || result.usage?.completion_tokens === 2 * 4096, `usage ${JSON.stringify(result.usage)}`);
  return checkImages(result.data.map((d) => d.b64_json), [256, 256]);
});

await m.call("images.generate without response_format", async () => {
  const result = await client.images.generate({ model: MODEL, prompt, size: "256x256" });
  return checkImages(result.data.map((d) => d.b64_json), [256, 256]);
});

for (const format of ["jpeg", "webp"]) {
  await m.call(`images.generate output_format ${format}`, async () => {
    const result = await client.images.generate({
      model: MODEL,
      prompt,
      size: "256x256",
      output_format: format,
      output_compression: 80,
    });
    return checkImages(result.data.map((d) => d.b64_json), [256, 256], format);
  });
}

await m.call("images.generate stream", async () => {
  const stream = await client.images.generate({ model: MODEL, prompt, size: "256x256", n: 2, stream: true });
  const events = [];
  for await (const event of stream) events.push(event);
  const completed = events.filter((e) => e.type === "image_generation.completed");
  check(completed.length === 2, `events ${events.map((e) => e.type)}`);
  return checkImages(completed.map((e) => e.b64_json), [256, 256]);
});

await m.call("images.edit multipart (one image)", async () => {
  const result = await client.images.edit({ model: MODEL, prompt: "make it blue", image: await reference(), size: "256x256" });
  return checkImages(result.data.map((d) => d.b64_json), [256, 256]);
});

await m.call("images.edit multipart (two images, reference ratio)", async () => {
  const result = await client.images.edit({ model: MODEL, prompt: "combine", image: [await reference(), await reference()] });
  return checkImages(result.data.map((d) => d.b64_json), sizeFor("4:3", "1K"));
});

await m.call("images.edit stream", async () => {
  const stream = await client.images.edit({
    model: MODEL,
    prompt: "make it blue",
    image: await reference(),
    size: "256x256",
    stream: true,
  });
  const events = [];
  for await (const event of stream) events.push(event);
  const completed = events.filter((e) => e.type === "image_edit.completed");
  check(completed.length === 1, `events ${events.map((e) => e.type)}`);
  return checkImages(completed.map((e) => e.b64_json), [256, 256]);
});

// Chat with image output: `modalities: ["image"]` and `image_config` are OpenRouter fields the
// SDK passes through; the images arrive in `message.images` / `delta.images`.
await m.call("chat.completions.create modalities image", async () => {
  const completion = await client.chat.completions.create({
    model: MODEL,
    messages: [{ role: "user", content: prompt }],
    modalities: ["image"],
    image_config: { aspect_ratio: "16:9", image_size: "0.5K" },
  });
  const message = completion.choices[0].message;
  check(completion.choices[0].finish_reason === "stop", `finish_reason ${completion.choices[0].finish_reason}`);
  return checkImages(message.images.map((im) => im.image_url.url), sizeFor("16:9", "0.5K"));
});

await m.call("chat.completions.create stream", async () => {
  const stream = await client.chat.completions.create({
    model: MODEL,
    messages: [{ role: "user", content: prompt }],
    modalities: ["image", "text"],
    image_config: { aspect_ratio: "1:1", image_size: "0.5K" },
    stream: true,
    stream_options: { include_usage: true },
  });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  const images = chunks.flatMap((c) => c.choices.flatMap((ch) => ch.delta.images ?? []));
  check(chunks.at(-1).usage?.completion_tokens === 4096, "usage on the last chunk");
  return `${chunks.length} chunks; ${checkImages(images.map((im) => im.image_url.url), sizeFor("1:1", "0.5K"))}`;
});

await m.call("chat.completions.create with a reference image", async () => {
  const url = `data:image/png;base64,${makePng(320, 240).toString("base64")}`;
  const completion = await client.chat.completions.create({
    model: MODEL,
    messages: [{ role: "user", content: [{ type: "text", text: "make it blue" }, { type: "image_url", image_url: { url } }] }],
    modalities: ["image"],
    image_config: { image_size: "0.5K" },
  });
  return checkImages(completion.choices[0].message.images.map((im) => im.image_url.url), sizeFor("4:3", "0.5K"));
});

await m.call("models.list", async () => {
  const ids = [];
  for await (const model of client.models.list()) ids.push(model.id);
  check(ids.includes(MODEL), `ids ${ids}`);
  return ids.join(", ");
});

await m.call("error 400 is an APIError with the message", async () => {
  try {
    await client.images.generate({ model: MODEL, prompt, size: "1000x1000" });
  } catch (error) {
    check(error instanceof OpenAI.BadRequestError, `got ${error.constructor.name}`);
    check(error.message.includes("992x992"), `message ${error.message}`);
    return `${error.constructor.name}: ${error.message}`;
  }
  throw new Error("no error");
});

m.done();
