"""A batch as the OpenRouter SDK's `BatchObject` (and `BatchListItem`): field for field."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from pixelrouter.catalog import micro_to_usd

from .items import signed_body


def _epoch(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def counts_of(by_status: dict[str, int], total: int) -> dict[str, int]:
    """`request_counts`: done well, done with an error (expired and cancelled included once
    they ended), and all."""
    completed = by_status.get("succeeded", 0)
    failed = sum(by_status.get(s, 0) for s in ("failed", "expired", "cancelled"))
    return {"completed": completed, "failed": failed, "total": total}


def batch_object(
    row: dict[str, Any],
    by_status: dict[str, int],
    *,
    usage: tuple[int, int, int] | None = None,
    results: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The batch; `results` None for a list item (the SDK's list omits them)."""
    body: dict[str, Any] = {
        "id": row["id"],
        "object": "batch",
        "endpoint": row["endpoint"],
        "model": row["model"],
        "status": row["status"],
        "completion_window": row["completion_window"],
        "created_at": _epoch(row["created_at"]),
        "expires_at": _epoch(row["expires_at"]),
        "finalized_at": _epoch(row["finalized_at"]),
        "provider": row["provider"],
        "error": {"message": row["error"]} if row["error"] else None,
        "request_counts": counts_of(by_status, row["total"]),
        "results": results,
        "usage": None,
    }
    if usage is not None:
        prompt, completion, cost = usage
        body["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "cost": micro_to_usd(cost),
            "completion_tokens_details": {"image_tokens": completion},
        }
    return body


def result_of(batch_id: str, item: dict[str, Any], sign: Callable[[str], str]) -> dict[str, Any]:
    """One finished item as a `Result`: the single endpoint's body with its images signed, or
    the error."""
    succeeded = item["status"] == "succeeded"
    return {
        "id": f"{batch_id}-{item['idx']}",
        "custom_id": item["custom_id"],
        "response": (
            {
                "status_code": item["status_code"] or 200,
                "request_id": item["generation_id"],
                "body": signed_body(item["result"], sign),
            }
            if succeeded
            else None
        ),
        "error": None if succeeded else _error(item),
    }


def _error(item: dict[str, Any]) -> dict[str, Any]:
    error = dict(item["result"] or {})
    error.setdefault("message", "The request failed.")
    error.setdefault("param", None)
    error.setdefault("type", "server")
    return error
