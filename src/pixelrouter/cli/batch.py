"""`pixelrouter batch`: submit a JSONL file as a batch, follow it, download its images
(the Batch API of a running server, docs/batches.md)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import ServerOption, batch_app, call_api, console

API_TIMEOUT_S = 120
DOWNLOAD_TIMEOUT_S = 120
TERMINAL = ("completed", "failed", "expired", "cancelled")
DEFAULT_ENDPOINT = "/v1/chat/completions"
LINE_FIELDS = {"custom_id", "method", "url", "body"}  # OpenAI's (and OpenRouter's) batch file
BAR_WIDTH = 24
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}

InferenceKeyOption = Annotated[
    str | None, typer.Option(help="The key the batch belongs to (env PIXELROUTER_API_KEY)")
]
BatchId = Annotated[str, typer.Argument(help="The batch's id (batch_...)")]


class _BadLine(Exception):
    """A line of the batch file that is not a request."""


def _canonical(endpoint: str) -> str:
    """An endpoint as the server compares them: `/api/v1/...` and `/v1/...` are one."""
    path = endpoint.strip()
    return path[len("/api") :] if path.startswith("/api/") else path


def read_batch_file(
    path: Path, endpoint: str | None, model: str | None
) -> tuple[str, str, list[dict[str, Any]]]:
    """(endpoint, model, requests) of a JSONL file: each line a request in the batch-file form
    `{"custom_id", "method", "url", "body"}`, or a bare request body (its custom_id then
    `line-<n>`). The endpoint is --endpoint, else the lines' `url`, else chat completions;
    the model is --model, else the first body's. `_BadLine` names the line that is wrong."""
    requests: list[dict[str, Any]] = []
    urls: dict[str, int] = {}  # each line's endpoint, with the first line naming it
    seen: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _BadLine(f"{path} cannot be read: {exc}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name}, line {number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _BadLine(f"{where}: not JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(item, dict):
            raise _BadLine(f"{where}: a line must be a JSON object, not {type(item).__name__}")
        if "body" in item or "custom_id" in item:
            unknown = sorted(set(item) - LINE_FIELDS)
            if unknown:
                raise _BadLine(f"{where}: unknown field(s) {', '.join(unknown)}")
            body = item.get("body")
            if not isinstance(body, dict):
                raise _BadLine(f"{where}: body must be a JSON object (the request)")
            custom_id = item.get("custom_id", f"line-{number}")
            if not isinstance(custom_id, str) or not custom_id or len(custom_id) > 200:
                raise _BadLine(f"{where}: custom_id must be a string of 1 to 200 characters")
            method = item.get("method", "POST")
            if not isinstance(method, str) or method.upper() != "POST":
                raise _BadLine(f"{where}: method must be POST")
            url = item.get("url")
            if url is not None:
                if not isinstance(url, str):
                    raise _BadLine(f"{where}: url must be a string such as {DEFAULT_ENDPOINT}")
                urls.setdefault(_canonical(url), number)
        else:
            body, custom_id = item, f"line-{number}"
        if custom_id in seen:
            raise _BadLine(f"{where}: custom_id {custom_id!r} is also on line {seen[custom_id]}")
        seen[custom_id] = number
        requests.append({"custom_id": custom_id, "body": body})
    if not requests:
        raise _BadLine(f"{path} holds no request (one JSON object a line)")
    if endpoint is None:
        if len(urls) > 1:
            named = ", ".join(f"{url} (line {number})" for url, number in urls.items())
            raise _BadLine(f"the lines name several endpoints: {named}; a batch has one")
        endpoint = next(iter(urls), DEFAULT_ENDPOINT)
    else:
        for url, number in urls.items():
            if url != _canonical(endpoint):
                raise _BadLine(
                    f"{path.name}, line {number}: url {url} is not --endpoint {endpoint}"
                )
    if model is None:
        model = next(
            (r["body"]["model"] for r in requests if isinstance(r["body"].get("model"), str)),
            None,
        )
        if model is None:
            raise _BadLine("no body names a model: give --model")
    return endpoint, model, requests


@batch_app.command("submit")
def batch_submit(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="JSONL: a request a line, {custom_id, method, url, body} or a bare body",
        ),
    ],
    server: ServerOption,
    endpoint: Annotated[
        str | None,
        typer.Option(
            help="/v1/chat/completions, /v1/images or /v1/images/generations "
            "(default: the lines' url, else /v1/chat/completions)"
        ),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Default: the first body's model")] = None,
    completion_window: Annotated[str, typer.Option(help="24h, or shorter: 2h, 30m, 90s")] = "24h",
    callback_url: Annotated[
        str | None, typer.Option(help="Receives the signed webhook when the batch ends")
    ] = None,
    api_key: InferenceKeyOption = None,
) -> None:
    """Submit a JSONL file as one batch (POST /api/v1/batches); prints its id."""
    try:
        endpoint, model, requests = read_batch_file(file, endpoint, model)
    except _BadLine as exc:
        console.print(f"[red]error:[/] {exc}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    body: dict[str, Any] = {
        "endpoint": endpoint,
        "model": model,
        "requests": requests,
        "completion_window": completion_window,
    }
    if callback_url is not None:
        body["callback_url"] = callback_url
    batch = call_api("POST", server, api_key, "batches", json=body, timeout_s=API_TIMEOUT_S).json()
    console.print(
        f"submitted {len(requests)} request(s) to {endpoint} with {model}: "
        f"{batch['id']} is {batch['status']}",
        markup=False,
        highlight=False,
    )
    print(batch["id"])


def progress_bar(counts: dict[str, int], width: int = BAR_WIDTH) -> str:
    """`[#######.....] 7/12`: the finished requests (done well or not) of all."""
    total = int(counts.get("total") or 0)
    done = int(counts.get("completed") or 0) + int(counts.get("failed") or 0)
    filled = round(width * done / total) if total else 0
    if done < total:
        filled = min(filled, width - 1)  # full only when every request has ended
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


def _summary(batch: dict[str, Any]) -> str:
    counts = batch["request_counts"]
    line = (
        f"{batch['id']}  {batch['status']}  {progress_bar(counts)}  "
        f"({counts['completed']} completed, {counts['failed']} failed)"
    )
    if batch.get("error"):
        line += f"  error: {batch['error'].get('message')}"
    return line


@batch_app.command("status")
def batch_status(
    batch_id: BatchId,
    server: ServerOption,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Follow it until it ends; exit 1 unless it ends completed"),
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between two looks with --wait")
    ] = 2.0,
    api_key: InferenceKeyOption = None,
) -> None:
    """A batch's status and progress (GET /api/v1/batches/ID)."""
    batch = _get(server, api_key, batch_id)
    if wait:
        shown = ""
        while batch["status"] not in TERMINAL:
            line = _summary(batch)
            if line != shown:
                console.print(line, markup=False, highlight=False)
                shown = line
            time.sleep(interval)
            batch = _get(server, api_key, batch_id)
    usage = batch.get("usage") or {}
    print(_summary(batch))
    details = f"  endpoint {batch['endpoint']}  model {batch['model']}"
    print(details + (f"  cost ${usage['cost']:g}" if "cost" in usage else ""))
    if wait and batch["status"] != "completed":
        raise typer.Exit(1)


def _get(server: str, key: str | None, batch_id: str) -> dict[str, Any]:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", batch_id):
        raise typer.BadParameter(f"{batch_id!r} is not a batch id (batch_...)")
    response = call_api("GET", server, key, f"batches/{batch_id}", timeout_s=API_TIMEOUT_S)
    return response.json()  # type: ignore[no-any-return]


def image_urls(body: dict[str, Any]) -> list[str]:
    """The images of a result body, in order: a chat completion's `message.images`, or an
    Images answer's `data[i].url` (or `b64_json`, as a data: URL)."""
    urls: list[str] = []
    for choice in body.get("choices") or []:
        for image in (choice.get("message") or {}).get("images") or []:
            url = (image.get("image_url") or {}).get("url")
            if isinstance(url, str):
                urls.append(url)
    for image in body.get("data") or []:
        if isinstance(image.get("url"), str):
            urls.append(image["url"])
        elif isinstance(image.get("b64_json"), str):
            media_type = image.get("media_type") or "image/png"
            urls.append(f"data:{media_type};base64,{image['b64_json']}")
    return urls


def file_stem(custom_id: str) -> str:
    """A custom_id as a file name: letters, digits, `.`, `_` and `-` kept, the rest `_`; no
    leading dot, at most 100 characters."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", custom_id).lstrip(".")[:100]
    return stem or "item"


def _extension(media_type: str) -> str:
    media_type = media_type.split(";", 1)[0].strip().lower()
    if media_type in EXTENSIONS:
        return EXTENSIONS[media_type]
    subtype = media_type.rpartition("/")[2]
    return subtype if re.fullmatch(r"[a-z0-9]{1,8}", subtype) else "bin"


def _fetch(client: Any, url: str) -> tuple[bytes, str]:
    """(bytes, media type) of an image URL: a signed URL of the server, or a data: URL."""
    import base64

    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        return base64.b64decode(payload), header[5:].split(";", 1)[0]
    response = client.get(url)
    response.raise_for_status()
    return response.content, response.headers.get("content-type", "")


@batch_app.command("download")
def batch_download(
    batch_id: BatchId,
    directory: Annotated[Path, typer.Argument(file_okay=False, help="Where to write the files")],
    server: ServerOption,
    api_key: InferenceKeyOption = None,
) -> None:
    """Write the images of a batch's succeeded requests to DIR as <custom_id>-<i>.<ext>, and
    every finished request's result (errors included) to DIR/results.jsonl."""
    import httpx

    batch = _get(server, api_key, batch_id)
    results: list[dict[str, Any]] = batch.get("results") or []
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "results.jsonl").open("w", encoding="utf-8") as out:
        for result in results:
            out.write(json.dumps(result, ensure_ascii=False) + "\n")
    stems: dict[str, str] = {}  # file stem -> the custom_id it is for
    written = missing = 0
    timeout = httpx.Timeout(DOWNLOAD_TIMEOUT_S, connect=10)
    with httpx.Client(timeout=timeout, follow_redirects=True) as client:
        for result in results:
            response = result.get("response")
            if not response:
                continue
            custom_id = str(result["custom_id"])
            stem = file_stem(custom_id)
            if stems.setdefault(stem, custom_id) != custom_id:  # two ids, one file name
                stem = f"{stem}-{result['id'].rpartition('-')[2]}"
                stems[stem] = custom_id
            for i, url in enumerate(image_urls(response.get("body") or {}), start=1):
                try:
                    data, media_type = _fetch(client, url)
                except (httpx.HTTPError, ValueError) as exc:
                    console.print(
                        f"error: image {i} of {custom_id!r} could not be downloaded ({exc})",
                        markup=False,
                        highlight=False,
                        style="red",
                    )
                    missing += 1
                    continue
                (directory / f"{stem}-{i}.{_extension(media_type)}").write_bytes(data)
                written += 1
    succeeded = sum(1 for r in results if r.get("response"))
    console.print(
        f"wrote {written} image(s) of {succeeded} succeeded request(s), and "
        f"{len(results)} result(s) ({len(results) - succeeded} failed) to "
        f"{directory / 'results.jsonl'}",
        markup=False,
        highlight=False,
    )
    if batch["status"] not in TERMINAL:
        total = batch["request_counts"]["total"]
        console.print(
            f"{batch_id} is {batch['status']}: {len(results)} of {total} request(s) have "
            "finished; download again once it has ended for the rest"
        )
    if missing:
        raise typer.Exit(1)
