"""Errors a user can cause or meet, each with its HTTP status and SPEC §5 `error_type`.

Every error class of the project lives here, and `provider_caused` is the one place that
decides whether a failure is the provider's (routing tries the next one) or the client's.
Every layer raises these; only `api/` turns them into the wire envelope
`{"error": {"code", "message", "metadata": {"error_type", ...}}}`. Every `error_type` a client
can see is one of OpenRouter's canonical values (`ERROR_TYPES`, the SDKs' `APIErrorType`), so
clients that switch on it find what they know; a finer reason goes in `metadata.reason`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pixelrouter.types import ProviderAttempt

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


class Conflict(PixelrouterError):
    """The request is valid but clashes with what exists (a name taken, a thing that cannot be
    removed this way); `metadata.reason` says which."""

    status = 409
    error_type = "invalid_request"


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


class ClientGone(PixelrouterError):
    """The client closed the connection before its answer was ready (nginx's 499)."""

    status = 499
    error_type = "unmapped"  # nobody reads it: the client is gone


class EngineLoadError(ServiceUnavailable):
    """The pipeline could not be loaded; the message says how to provide weights."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        metadata = {"reason": "engine_load_error", **kwargs.pop("metadata", {})}
        super().__init__(message, metadata=metadata, **kwargs)


class ProviderError(PixelrouterError):
    """A provider-caused failure (5xx, timeout, 429, bad upstream answer): routing falls
    through to the next provider. `status` is what the attempt is recorded as."""

    status = 502
    error_type = "provider_unavailable"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        if status is not None:
            self.status = status
        self.retry_after_s = retry_after_s


class ProviderUnavailable(ProviderError):
    """The provider cannot take work now (weights missing, loading, shut down)."""

    status = 503
    error_type = "provider_overloaded"


class RoutingFailed(PixelrouterError):
    """Every candidate failed; carries the attempts so the generation record lists them."""

    def __init__(self, error: PixelrouterError, attempts: Sequence[ProviderAttempt]) -> None:
        super().__init__(error.message, metadata=error.metadata, headers=error.headers)
        self.status = error.status
        self.error_type = error.error_type
        self.attempts = list(attempts)
        self.cause = error


class ConfigError(ValueError):
    """The configuration is wrong; the message says where and how to fix it."""


class NameNotResolved(LookupError):
    """A DNS name gave no address (workers found by DNS keep their last good set)."""


class LastManagementKey(ValueError):
    """The change would leave no enabled, unexpired management key: nobody could manage keys
    any more (short of a restart with PIXELROUTER_ADMIN_KEY)."""


# -- whose failure is it? -------------------------------------------------------------------

RATE_LIMITED = 429
TIMED_OUT = 408


def provider_caused(failure: BaseException | int) -> bool:
    """Is this failure the provider's rather than the client's? The one rule, for an error or
    an HTTP status: a provider-caused failure makes routing try the next provider.

    Provider-caused: any 5xx (502 a garbage answer, 503 not ready, 504 its timeout), 408 (it
    timed out), 429 (it is rate limiting us), a `ProviderError`, a timeout, a bug in the
    provider's code. The client's: every other 4xx, which another provider would refuse too.
    """
    if isinstance(failure, int):
        return failure >= 500 or failure in (TIMED_OUT, RATE_LIMITED)
    if isinstance(failure, ProviderError):
        return True
    if isinstance(failure, PixelrouterError):
        return provider_caused(failure.status)
    return True  # a timeout, a broken connection, a bug: not the client's doing


def provider_down(status: int) -> bool:
    """A provider-caused failure that says the provider is down, so it counts against its
    uptime and its circuit. A rate limit (429) is provider-caused but says it is up."""
    return provider_caused(status) and status != RATE_LIMITED


class Superseded(Exception):
    """Not an answer to a client: raised inside a close's transaction by work that is no longer
    this close's to do (a batch item whose claim another run took over), so nothing of the
    close is written (`Bookkeeping.close_delivered`)."""
