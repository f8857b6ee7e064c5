// The AI SDK (`ai`) with @openrouter/ai-sdk-provider, unchanged, against pixelrouter:
// generateImage through the Image API, generateText and streamText with image output through
// chat completions. The provider validates every response with its zod schemas.
import { createOpenRouter } from "@openrouter/ai-sdk-provider";
import { generateImage, generateText, streamText } from "ai";
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
  version,
} from "./common.mjs";

// `createOpenRouter` defaults to compatibility "compatible"; the package's ready-made
// `openrouter` instance uses "strict" (it also sends `stream_options.include_usage`).
const provider = (compatibility) =>
  createOpenRouter({ baseURL: BASE_URL, apiKey: API_KEY, fetch: recordingFetch, compatibility });
const openrouter = provider("strict");
const m = matrix(`@openrouter/ai-sdk-provider (ai ${version("ai")})`, "@openrouter/ai-sdk-provider");
const prompt = "a lighthouse at dusk";
const image = openrouter.imageModel(MODEL);

function files(images, expectedSize, format = "png") {
  check(images.every((f) => f.mediaType === `image/${format}`), `media types ${images.map((f) => f.mediaType)}`);
  return checkImages(images.map((f) => f.uint8Array), expectedSize, format);
}

await m.call("generateImage size 256x256", async () => {
  const result = await generateImage({ model: image, prompt, size: "256x256", maxRetries: 0 });
  check(result.usage.outputTokens === 4096, `usage ${JSON.stringify(result.usage)}`);
  return files(result.images, [256, 256]);
});

await m.call("generateImage aspectRatio 16:9 (default tier)", async () => {
  const result = await generateImage({ model: image, prompt, aspectRatio: "16:9", maxRetries: 0 });
  return files(result.images, sizeFor("16:9", "1K"));
});

await m.call("generateImage aspectRatio 9:16 + providerOptions resolution 0.5K", async () => {
  const result = await generateImage({
    model: image,
    prompt,
    aspectRatio: "9:16",
    providerOptions: { openrouter: { resolution: "0.5K" } },
    maxRetries: 0,
  });
  return files(result.images, sizeFor("9:16", "0.5K"));
});

await m.call("generateImage size 512x512 + aspectRatio 1:1", async () => {
  const result = await generateImage({ model: image, prompt, size: "512x512", aspectRatio: "1:1", maxRetries: 0 });
  return files(result.images, [512, 512]);
});

await m.call("generateImage n=3 seed=42", async () => {
  const result = await generateImage({ model: image, prompt, size: "256x256", n: 3, seed: 42, maxRetries: 0 });
  check(result.images.length === 3, `${result.images.length} images`);
  return files(result.images, [256, 256]);
});

await m.call("generateImage seed=7 twice: same bytes", async () => {
  const run = () => generateImage({ model: image, prompt, size: "256x256", seed: 7, maxRetries: 0 });
  const [a, b] = [await run(), await run()];
  check(Buffer.from(a.image.uint8Array).equals(Buffer.from(b.image.uint8Array)), "the two images differ");
  return "byte-identical";
});

await m.call("generateImage n=12 (two calls: 10 + 2)", async () => {
  const result = await generateImage({ model: image, prompt, size: "64x64", n: 12, maxRetries: 0 });
  check(result.images.length === 12, `${result.images.length} images`);
  return files(result.images, [64, 64]);
});

await m.call("generateImage providerOptions output_format webp", async () => {
  const result = await generateImage({
    model: image,
    prompt,
    size: "256x256",
    providerOptions: { openrouter: { output_format: "webp" } },
    maxRetries: 0,
  });
  return files(result.images, [256, 256], "webp");
});

await m.call("generateImage with a reference image (edit)", async () => {
  const result = await generateImage({
    model: image,
    prompt: { text: "make it blue", images: [makePng(320, 240)] },
    providerOptions: { openrouter: { resolution: "0.5K" } },
    maxRetries: 0,
  });
  return files(result.images, sizeFor("4:3", "0.5K"));
});

// Image output through chat: `providerOptions.openrouter` is spread into the request body.
const imageOutput = (ratio) => ({
  openrouter: { modalities: ["image", "text"], image_config: { aspect_ratio: ratio, image_size: "0.5K" } },
});

await m.call("generateText image output (providerOptions modalities)", async () => {
  const result = await generateText({
    model: openrouter.chat(MODEL),
    prompt,
    providerOptions: imageOutput("16:9"),
    maxRetries: 0,
  });
  return files(result.files, sizeFor("16:9", "0.5K"));
});

await m.call("generateText image output (model setting extraBody)", async () => {
  const model = openrouter.chat(MODEL, { extraBody: { modalities: ["image"], image_config: { image_size: "0.5K" } } });
  const result = await generateText({ model, prompt, seed: 5, maxRetries: 0 });
  return files(result.files, sizeFor("1:1", "0.5K"));
});

await m.call("generateText image output with a reference image (file part)", async () => {
  const result = await generateText({
    model: openrouter.chat(MODEL),
    messages: [
      {
        role: "user",
        content: [
          { type: "text", text: "make it blue" },
          { type: "file", data: makePng(320, 240), mediaType: "image/png" },
        ],
      },
    ],
    providerOptions: { openrouter: { modalities: ["image"], image_config: { image_size: "0.5K" } } },
    maxRetries: 0,
  });
  return files(result.files, sizeFor("4:3", "0.5K"));
});

for (const compatibility of ["strict", "compatible"]) {
  await m.call(`streamText image output (fullStream, ${compatibility})`, async () => {
    const result = streamText({
      model: provider(compatibility).chat(MODEL),
      prompt,
      providerOptions: imageOutput("3:2"),
      maxRetries: 0,
      onError: () => {}, // error parts are checked below
    });
    const parts = [];
    for await (const part of result.fullStream) parts.push(part);
    const errorParts = parts.filter((p) => p.type === "error");
    const fileParts = parts.filter((p) => p.type === "file").map((p) => p.file);
    if (errorParts.length) {
      const message = `${errorParts.length} error part(s) in fullStream (${fileParts.length} file parts arrived)`;
      throw new Error(message, { cause: errorParts[0].error });
    }
    const finish = parts.find((p) => p.type === "finish");
    check(finish?.finishReason === "stop", `finish ${finish?.finishReason}`);
    return `${parts.map((p) => p.type).join(",")}; ${files(fileParts, sizeFor("3:2", "0.5K"))}`;
  });
}

// Errors: the provider turns pixelrouter's error body into an APICallError with its message.
async function expectError(call, status, text) {
  try {
    await call();
  } catch (error) {
    check(error.statusCode === status, `${error.name}: status ${error.statusCode}: ${error.message}`);
    check(error.message.includes(text), `message ${JSON.stringify(error.message)} lacks ${JSON.stringify(text)}`);
    return `${error.name} ${error.statusCode}: ${error.message}`;
  }
  throw new Error("no error");
}

await m.call("error 400 generateImage invalid size", () =>
  expectError(() => generateImage({ model: image, prompt, size: "1000x1000", maxRetries: 0 }), 400, "992x992"),
);

await m.call("error 404 generateText unknown model", () =>
  expectError(() => generateText({ model: openrouter.chat("nope/nope"), prompt, maxRetries: 0 }), 404, "nope/nope"),
);

m.done();
