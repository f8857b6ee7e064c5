"""The API tab's code samples, written for this server's base URL so they run as shown.

Each reads the key from `PIXELROUTER_API_KEY` and writes `lighthouse.png`; tests/web runs the
curl and Python ones against a real server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pixelrouter.catalog import ModelEntry

PROMPT = "a lighthouse at dusk"


@dataclass(frozen=True)
class Example:
    slug: str  # curl | python-openai | python-openrouter | typescript
    title: str
    language: str
    setup: str  # what to install, how to run it
    code: str


def examples(entry: ModelEntry, api_base: str) -> list[Example]:
    model = entry.id
    curl = f"""\
curl -s {api_base}/images \\
  -H "Authorization: Bearer $PIXELROUTER_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{{"model": "{model}", "prompt": "{PROMPT}", "size": "1024x768"}}' \\
  | python3 -c 'import sys, json, base64
r = json.load(sys.stdin)
open("lighthouse.png", "wb").write(base64.b64decode(r["data"][0]["b64_json"]))
print(r["usage"])'
"""
    python_openai = f"""\
import base64, os
from openai import OpenAI

client = OpenAI(base_url="{api_base}", api_key=os.environ["PIXELROUTER_API_KEY"])
result = client.images.generate(
    model="{model}",
    prompt="{PROMPT}",
    size="1024x1024",
    response_format="b64_json",
)
open("lighthouse.png", "wb").write(base64.b64decode(result.data[0].b64_json))
print(result.usage)
"""
    python_openrouter = f"""\
import base64, os
from openrouter import OpenRouter

with OpenRouter(api_key=os.environ["PIXELROUTER_API_KEY"], server_url="{api_base}") as client:
    result = client.images.generate(
        model="{model}", prompt="{PROMPT}", aspect_ratio="16:9"
    )
    open("lighthouse.png", "wb").write(base64.b64decode(result.data[0].b64_json))
    print(result.usage)
"""
    typescript = f"""\
import OpenAI from "openai";
import {{ writeFileSync }} from "node:fs";

const client = new OpenAI({{
  baseURL: "{api_base}",
  apiKey: process.env.PIXELROUTER_API_KEY,
}});
const result = await client.images.generate({{
  model: "{model}",
  prompt: "{PROMPT}",
  size: "1024x1024",
  response_format: "b64_json",
}});
writeFileSync("lighthouse.png", Buffer.from(result.data![0].b64_json!, "base64"));
console.log(result.usage);
"""
    return [
        Example("curl", "curl", "bash", "needs curl and python3", curl),
        Example(
            "python-openai",
            "Python (OpenAI SDK)",
            "python",
            "pip install openai · python lighthouse.py",
            python_openai,
        ),
        Example(
            "python-openrouter",
            "Python (OpenRouter SDK)",
            "python",
            "pip install openrouter · python lighthouse.py",
            python_openrouter,
        ),
        Example(
            "typescript",
            "TypeScript (OpenAI SDK)",
            "typescript",
            "npm install openai tsx · save as lighthouse.mts · npx tsx lighthouse.mts",
            typescript,
        ),
    ]


def lora_example(entry: ModelEntry, api_base: str, lora: dict[str, Any]) -> str:
    """The curl sample with one of the model's LoRA adapters at its default scale (the Overview
    tab's adapters section); `lora` is a row of `views.loras_view`."""
    chosen = json.dumps([{"name": lora["name"], "scale": lora["default_scale"]}])
    return f"""\
curl -s {api_base}/images \\
  -H "Authorization: Bearer $PIXELROUTER_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{{"model": "{entry.id}", "prompt": "{PROMPT}", "size": "1024x768",
       "loras": {chosen}}}' \\
  | python3 -c 'import sys, json, base64
r = json.load(sys.stdin)
open("lighthouse.png", "wb").write(base64.b64decode(r["data"][0]["b64_json"]))
print(r["usage"])'
"""
