// @openrouter/sdk, unchanged, against pixelrouter: every call it can make on pixelrouter's
// endpoints. The SDK validates every response with its zod schemas, so a call passing here
// means the response satisfies the SDK.
import { HTTPClient, OpenRouter } from "@openrouter/sdk";
import { ApiErrorType, ChatStreamChunk$inboundSchema, ImageGenerationRequestAspectRatio } from "@openrouter/sdk/models";
import * as errors from "@openrouter/sdk/models/errors";
import {
  ADMIN_KEY,
  API_KEY,
  AUTHOR,
  BASE_URL,
  MODEL,
  SLUG,
  check,
  checkImages,
  lastResponseText,
  makePng,
  matrix,
  recordingFetch,
  sizeFor,
  ssePayloads,
} from "./common.mjs";

const sdk = (apiKey) =>
  new OpenRouter({
    apiKey,
    serverURL: BASE_URL,
    httpClient: new HTTPClient({ fetcher: recordingFetch }),
    retryConfig: { strategy: "none" },
    timeoutMs: 120_000,
  });
const user = sdk(API_KEY);
const admin = ADMIN_KEY ? sdk(ADMIN_KEY) : null;
const m = matrix("@openrouter/sdk", "@openrouter/sdk");
const prompt = "a lighthouse at dusk";
const messages = [{ role: "user", content: prompt }];
let generationId;

await m.call("chat.send image output (16:9, 0.5K, seed)", async () => {
  const result = await user.chat.send({
    chatRequest: {
      model: MODEL,
      messages,
      modalities: ["image"],
      imageConfig: { aspect_ratio: "16:9", image_size: "0.5K" },
      seed: 3,
    },
  });
  generationId = result.id;
  check(result.id.startsWith("gen-"), `id ${result.id}`);
  check(result.choices[0].finishReason === "stop", `finish_reason ${result.choices[0].finishReason}`);
  check(result.usage.completionTokens === 4096, `completion_tokens ${result.usage.completionTokens}`);
  const urls = result.choices[0].message.images.map((im) => im.imageUrl.url);
  return checkImages(urls, sizeFor("16:9", "0.5K"));
});

await m.call("chat.send modalities [image, text] (4:3, 0.5K)", async () => {
  const result = await user.chat.send({
    chatRequest: {
      model: MODEL,
      messages,
      modalities: ["image", "text"],
      imageConfig: { aspect_ratio: "4:3", image_size: "0.5K" },
    },
  });
  return checkImages(result.choices[0].message.images.map((im) => im.imageUrl.url), sizeFor("4:3", "0.5K"));
});

await m.call("chat.send with a reference image (edit)", async () => {
  const reference = `data:image/png;base64,${makePng(320, 240).toString("base64")}`;
  const result = await user.chat.send({
    chatRequest: {
      model: MODEL,
      messages: [
        {
          role: "user",
          content: [
            { type: "text", text: "make it blue" },
            { type: "image_url", imageUrl: { url: reference } },
          ],
        },
      ],
      modalities: ["image"],
      imageConfig: { image_size: "0.5K" },
    },
  });
  return checkImages(result.choices[0].message.images.map((im) => im.imageUrl.url), sizeFor("4:3", "0.5K"));
});

await m.call("chat.send stream", async () => {
  const stream = await user.chat.send({
    chatRequest: {
      model: MODEL,
      messages,
      modalities: ["image"],
      imageConfig: { aspect_ratio: "1:1", image_size: "0.5K" },
      stream: true,
    },
  });
  const chunks = [];
  try {
    for await (const chunk of stream) chunks.push(chunk);
  } catch (error) {
    // The SDK stops at the first chunk it cannot parse: check every chunk on the wire against
    // the SDK's own ChatStreamChunk schema to list all that would fail.
    const issues = new Set();
    for (const payload of ssePayloads(await lastResponseText()).filter((p) => p !== "[DONE]")) {
      const parsed = ChatStreamChunk$inboundSchema.safeParse(payload);
      for (const issue of parsed.error?.issues ?? []) issues.add(`${issue.path.join(".")}: ${issue.message}`);
    }
    throw new Error(`stream failed after ${chunks.length} chunks; every chunk's issues: ${[...issues].join("; ")}`, {
      cause: error,
    });
  }
  check(chunks[0].choices[0].delta.role === "assistant", "first chunk has delta.role");
  const finishes = chunks.flatMap((c) => c.choices.map((ch) => ch.finishReason).filter(Boolean));
  check(finishes.join() === "stop", `finish reasons ${finishes}`);
  const last = chunks.at(-1);
  check(last.choices.length === 0 && last.usage?.completionTokens === 4096, "last chunk: usage");
  // The SDK's ChatStreamDelta has no `images` field (zod strips it): read them off the wire.
  const images = ssePayloads(await lastResponseText())
    .filter((p) => p !== "[DONE]")
    .flatMap((p) => p.choices.flatMap((ch) => ch.delta?.images ?? []));
  return `${chunks.length} chunks; images on the wire: ${checkImages(
    images.map((im) => im.image_url.url),
    sizeFor("1:1", "0.5K"),
  )}`;
});

await m.call("images.generate size 256x256 n=2 seed", async () => {
  const result = await user.images.generate({
    imageGenerationRequest: { model: MODEL, prompt, size: "256x256", n: 2, seed: 7 },
  });
  check(result.usage.completionTokens === 2 * 4096, `completion_tokens ${result.usage.completionTokens}`);
  check(result.data.every((d) => d.mediaType === "image/png"), "media_type image/png");
  return checkImages(result.data.map((d) => d.b64Json), [256, 256]);
});

await m.call("images.generate aspectRatio 16:9 resolution 512", async () => {
  const result = await user.images.generate({
    imageGenerationRequest: { model: MODEL, prompt, aspectRatio: "16:9", resolution: "512" },
  });
  return checkImages(result.data.map((d) => d.b64Json), sizeFor("16:9", "512"));
});

// Every aspect ratio and resolution the SDK's types offer (SPEC §2: each whose size is valid).
for (const ratio of Object.values(ImageGenerationRequestAspectRatio)) {
  await m.call(`images.generate aspectRatio ${ratio} size 0.5K`, async () => {
    const result = await user.images.generate({
      imageGenerationRequest: { model: MODEL, prompt, aspectRatio: ratio, size: "0.5K" },
    });
    return checkImages(result.data.map((d) => d.b64Json), sizeFor(ratio === "auto" ? "1:1" : ratio, "0.5K"));
  });
}

// "4K" is above klein's largest tier: clamped to 2K (SPEC §2); 2K itself is the same size.
for (const [resolution, tier] of [["512", "0.5K"], ["1K", "1K"], ["4K", "2K"]]) {
  await m.call(`images.generate resolution ${resolution}`, async () => {
    const result = await user.images.generate({ imageGenerationRequest: { model: MODEL, prompt, resolution } });
    return checkImages(result.data.map((d) => d.b64Json), sizeFor("1:1", tier));
  });
}

for (const format of ["jpeg", "webp"]) {
  await m.call(`images.generate outputFormat ${format}`, async () => {
    const result = await user.images.generate({
      imageGenerationRequest: { model: MODEL, prompt, size: "256x256", outputFormat: format, outputCompression: 80 },
    });
    check(result.data[0].mediaType === `image/${format}`, `media_type ${result.data[0].mediaType}`);
    return checkImages(result.data.map((d) => d.b64Json), [256, 256], format);
  });
}

await m.call("images.generate inputReferences (edit)", async () => {
  const reference = `data:image/png;base64,${makePng(320, 240).toString("base64")}`;
  const result = await user.images.generate({
    imageGenerationRequest: {
      model: MODEL,
      prompt: "make it blue",
      resolution: "512",
      inputReferences: [{ type: "image_url", imageUrl: { url: reference } }],
    },
  });
  return checkImages(result.data.map((d) => d.b64Json), sizeFor("4:3", "512"));
});

await m.call("images.generate stream n=2", async () => {
  const stream = await user.images.generate({
    imageGenerationRequest: { model: MODEL, prompt, size: "256x256", n: 2, stream: true },
  });
  const events = [];
  for await (const event of stream) events.push(event);
  const completed = events.filter((e) => e.type === "image_generation.completed");
  check(completed.length === 2, `completed events: ${events.map((e) => e.type)}`);
  check(completed.at(-1).usage?.completionTokens === 2 * 4096, "usage on the last event");
  return checkImages(completed.map((e) => e.b64Json), [256, 256]);
});

await m.call("images.listModels", async () => {
  const result = await user.images.listModels();
  check(result.data.some((model) => model.id === MODEL), `ids ${result.data.map((x) => x.id)}`);
  return `${result.data.length} image models`;
});

await m.call("images.listModelEndpoints", async () => {
  const result = await user.images.listModelEndpoints({ author: AUTHOR, slug: SLUG });
  check(result.endpoints.length > 0, "no endpoints");
  return JSON.stringify(result.endpoints[0].pricing);
});

await m.call("models.list (all pages)", async () => {
  const pages = await user.models.list();
  const ids = [];
  for await (const page of pages) ids.push(...page.result.data.map((model) => model.id));
  check(ids.includes(MODEL), `ids ${ids}`);
  return `${ids.length} models`;
});

const filters = [
  [{ outputModalities: "image" }, true],
  [{ outputModalities: "text" }, false],
  [{ inputModalities: "image" }, true],
  [{ q: "klein" }, true],
  [{ q: "no-such-model-anywhere" }, false],
  [{ sort: "newest" }, true],
  [{ supportedParameters: "seed" }, true],
  [{ supportedParameters: "tools" }, false],
  // Prices in $/M tokens: klein's prompt and completion prices are 0.244 $/M.
  [{ maxPrice: 1 }, true],
  [{ maxPrice: 0.1 }, false],
  [{ minPrice: 0.1 }, true],
  [{ minPrice: 1 }, false],
  [{ minOutputPrice: 0.1, maxOutputPrice: 1 }, true],
  [{ maxOutputPrice: 0.1 }, false],
  [{ context: 1000 }, true],
  [{ context: 100_000 }, false], // context_length is 67344
  [{ modelAuthors: AUTHOR }, true],
  [{ modelAuthors: "openai" }, false],
  [{ category: "programming" }, null], // no category is declared for the model: either is fine
];
for (const [filter, expected] of filters) {
  await m.call(`models.list ${JSON.stringify(filter)}`, async () => {
    const page = await user.models.list(filter);
    const ids = page.result.data.map((model) => model.id);
    if (expected !== null) check(ids.includes(MODEL) === expected, `ids ${JSON.stringify(ids)}`);
    return `ids ${JSON.stringify(ids)}`;
  });
}

await m.call("models.count", async () => {
  const result = await user.models.count();
  check(result.data.count >= 1, `count ${result.data.count}`);
  return `count ${result.data.count}`;
});

await m.call("models.count outputModalities=image", async () => {
  const result = await user.models.count({ outputModalities: "image" });
  return `count ${result.data.count}`;
});

await m.call("models.get", async () => {
  const result = await user.models.get({ author: AUTHOR, slug: SLUG });
  check(result.data.id === MODEL, `id ${result.data.id}`);
  return result.data.canonicalSlug;
});

await m.call("endpoints.list", async () => {
  const result = await user.endpoints.list({ author: AUTHOR, slug: SLUG });
  check(result.data.endpoints.length > 0, "no endpoints");
  return result.data.endpoints.map((e) => `${e.providerName} status ${e.status}`).join(", ");
});

await m.call("providers.list", async () => {
  const result = await user.providers.list();
  return result.data.map((p) => p.slug ?? p.name).join(", ");
});

await m.call("generations.getGeneration", async () => {
  check(generationId, "no generation id from the first chat call");
  const result = await user.generations.getGeneration({ id: generationId });
  check(result.data.id === generationId, `id ${result.data.id}`);
  return `total_cost ${result.data.totalCost}, images ${result.data.numMediaCompletion}`;
});

await m.call("apiKeys.getCurrentKeyMetadata (inference key)", async () => {
  const result = await user.apiKeys.getCurrentKeyMetadata();
  check(result.data.isManagementKey === false, "is_management_key");
  return `usage ${result.data.usage}, limit ${result.data.limit}`;
});

if (admin) {
  let hash;
  await m.call("apiKeys.getCurrentKeyMetadata (management key)", async () => {
    const result = await admin.apiKeys.getCurrentKeyMetadata();
    check(result.data.isManagementKey === true, "is_management_key");
    return result.data.label;
  });
  await m.call("apiKeys.create", async () => {
    const result = await admin.apiKeys.create({
      requestBody: { name: "node-sdk", limit: 1, limitReset: "monthly" },
    });
    hash = result.data.hash;
    check(result.key.startsWith("sk-pr-v1-"), "plaintext key");
    return `hash ${hash.slice(0, 12)}..., limit ${result.data.limit}`;
  });
  await m.call("apiKeys.list", async () => {
    const result = await admin.apiKeys.list();
    check(result.data.some((k) => k.hash === hash), "the new key is listed");
    return `${result.data.length} keys`;
  });
  await m.call("apiKeys.list includeDisabled offset", async () => {
    const result = await admin.apiKeys.list({ includeDisabled: true, offset: 0 });
    return `${result.data.length} keys`;
  });
  await m.call("apiKeys.get", async () => {
    const result = await admin.apiKeys.get({ hash });
    return result.data.name;
  });
  await m.call("apiKeys.update", async () => {
    const result = await admin.apiKeys.update({ hash, requestBody: { name: "node-sdk-off", disabled: true } });
    check(result.data.disabled === true, "disabled");
    return result.data.name;
  });
  await m.call("apiKeys.delete", async () => {
    const result = await admin.apiKeys.delete({ hash });
    return JSON.stringify(result);
  });
  await m.call("credits.getCredits", async () => {
    const result = await admin.credits.getCredits();
    return `total_credits ${result.data.totalCredits}, total_usage ${result.data.totalUsage}`;
  });
  // The last 30 completed UTC days (today left out, as OpenRouter does): may be empty here.
  await m.call("analytics.getUserActivity", async () => {
    const result = await admin.analytics.getUserActivity();
    return `${result.data.length} rows`;
  });
  await m.call("analytics.getUserActivity date=today", async () => {
    const result = await admin.analytics.getUserActivity({ date: new Date().toISOString().slice(0, 10) });
    check(result.data.length > 0, "no activity rows for today");
    return `${result.data.length} rows`;
  });
}

// Errors: the typed error class, and `metadata.error_type` one of the SDK's ApiErrorType values.
const knownTypes = new Set(Object.values(ApiErrorType));
async function expectError(call, ErrorClass, status) {
  try {
    await call();
  } catch (error) {
    check(error instanceof ErrorClass, `expected ${ErrorClass.name}, got ${error.constructor.name}`);
    check(error.statusCode === status, `status ${error.statusCode}`);
    const errorType = error.error?.metadata?.error_type ?? error.error?.metadata?.errorType;
    check(knownTypes.has(errorType), `metadata.error_type ${JSON.stringify(errorType)} is not an ApiErrorType`);
    return `${error.constructor.name}: ${errorType}: ${error.message}`;
  }
  throw new Error(`no error (expected ${ErrorClass.name})`);
}

await m.call("error 400 invalid size", () =>
  expectError(
    () => user.images.generate({ imageGenerationRequest: { model: MODEL, prompt, size: "1000x1000" } }),
    errors.BadRequestResponseError,
    400,
  ),
);
await m.call("error 401 unknown key", () =>
  expectError(() => sdk(`sk-pr-v1-${"0".repeat(64)}`).apiKeys.getCurrentKeyMetadata(), errors.UnauthorizedResponseError, 401),
);
if (admin) {
  await m.call("error 403 management key generates", () =>
    expectError(
      () => admin.images.generate({ imageGenerationRequest: { model: MODEL, prompt, size: "256x256" } }),
      errors.ForbiddenResponseError,
      403,
    ),
  );
}
await m.call("error 404 unknown generation", () =>
  expectError(() => user.generations.getGeneration({ id: "gen-0-nope" }), errors.NotFoundResponseError, 404),
);
await m.call("error 404 unknown model (chat)", () =>
  expectError(
    () => user.chat.send({ chatRequest: { model: "nope/nope", messages, modalities: ["image"] } }),
    errors.NotFoundResponseError,
    404,
  ),
);
await m.call("error 400 invalid reference image", () =>
  expectError(
    () =>
      user.images.generate({
        imageGenerationRequest: {
          model: MODEL,
          prompt,
          inputReferences: [{ type: "image_url", imageUrl: { url: "data:image/png;base64,bm90IGFuIGltYWdl" } }],
        },
      }),
    errors.BadRequestResponseError,
    400,
  ),
);

m.done();
