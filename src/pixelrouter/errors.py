"""Errors a user can cause or meet, each with its HTTP status and SPEC §5 `error_type`.

Every layer raises these; only `api/` turns them into the wire envelope
`{"error": {"code", "message", "metadata": {"error_type", ...}}}`. Every `error_type` a client
can see is one of OpenRouter's canonical values (`ERROR_TYPES`, the SDKs' `APIErrorType`), so
clients that switch on it find what they know; a finer reason goes in `metadata.reason`.
"""

from __future__ import annotations

from typing import Any

# OpenRouter's canonical error types (the `APIErrorType` enum of its SDKs).
ERROR_TYPES = frozenset(
    {
        "context_length_exceeded",
        "max_tokens_exceeded",
        "token_limit_exceeded",
        "string_too_long",
        "authentication",
        "permission_denied",
        "payment_required",
        "rate_limit_exceeded",
        "provider_overloaded",
        "provider_unavailable",
        "invalid_request",
        "invalid_prompt",
        "not_found",
        "precondition_failed",
        "payload_too_large",
        "unprocessable",
        "content_policy_violation",
        "refusal",
        "invalid_image",
        "image_too_large",
        "image_too_small",
        "unsupported_image_format",
        "image_not_found",
        "image_download_failed",
        "server",
        "timeout",
        "unmapped",
    }
)


class PixelrouterError(Exception):
    """Base class: a status, a machine-readable type and a message a person can act on."""

    status: int = 500
    error_type: str = "server"

    def __init__(
        self,
        message: str,
        *,
        error_type: str | None = None,
        metadata: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if error_type is not None:
            self.error_type = error_type
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.headers: dict[str, str] = dict(headers or {})

    def envelope(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.status,
                "message": self.message,
                "metadata": {"error_type": self.error_type, **self.metadata},
            }
        }


class InvalidRequest(PixelrouterError):
    status = 400
    error_type = "invalid_request"


class InvalidImage(InvalidRequest):
    error_type = "invalid_image"


class ImageTooLarge(InvalidImage):
    error_type = "image_too_large"


class ImageTooSmall(InvalidImage):
    error_type = "image_too_small"


class UnsupportedImageFormat(InvalidImage):
    error_type = "unsupported_image_format"


class Unauthorized(PixelrouterError):
    status = 401
    error_type = "authentication"


class PaymentRequired(PixelrouterError):
    status = 402
    error_type = "payment_required"


class Forbidden(PixelrouterError):
    status = 403
    error_type = "permission_denied"


class NotFound(PixelrouterError):
    status = 404
    error_type = "not_found"


class RequestTimeout(PixelrouterError):
    status = 408
    error_type = "timeout"


class PayloadTooLarge(PixelrouterError):
    status = 413
    error_type = "payload_too_large"


class RateLimited(PixelrouterError):
    status = 429
    error_type = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: int, **kwargs: Any) -> None:
        headers = {"Retry-After": str(max(1, int(retry_after_s)))}
        metadata = {"retry_after": max(1, int(retry_after_s)), **kwargs.pop("metadata", {})}
        super().__init__(message, headers=headers, metadata=metadata, **kwargs)


class UpstreamFailed(PixelrouterError):
    """Every provider failed (SPEC §5 502)."""

    status = 502
    error_type = "provider_unavailable"


class ServiceUnavailable(PixelrouterError):
    """No provider can take the request now (SPEC §5 503): draining, loading, all busy."""

    status = 503
    error_type = "provider_overloaded"


class InternalError(PixelrouterError):
    status = 500
    error_type = "server"
