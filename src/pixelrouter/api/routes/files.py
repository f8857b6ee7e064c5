"""`GET /api/v1/files/{key}`: a stored image at its signed, expiring URL (docs/image-store.md).

No API key: the signature in the URL is the credential, so a browser can show the image. A
signature that does not match is a 403; a URL past its expiry, or an image deleted or swept,
is a 404. The image is served byte for byte as it was stored.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from pixelrouter.errors import Forbidden, NotFound

from ..state import app_state
from .openapi import errors

router = APIRouter(tags=["files"])


@router.get(
    "/files/{key:path}",
    summary="A stored image at its signed URL",
    response_class=Response,
    responses={
        200: {"content": {m: {} for m in ("image/png", "image/jpeg", "image/webp")}},
        **errors(403, 404),
    },
)
async def get_file(
    request: Request,
    key: str,
    expires: int = Query(..., description="Unix time the URL stops working"),
    signature: str = Query(..., description="HMAC-SHA256 of the key and expiry, hex"),
) -> Response:
    images = app_state(request).images
    if not images.signed(key, expires, signature):
        raise Forbidden("The signature of this file URL does not match.")
    remaining = expires - int(time.time())
    if remaining <= 0:
        raise NotFound("This file URL has expired.")
    fetched = await images.get(key)
    if fetched is None:
        raise NotFound("No such file: it was deleted, or kept past its retention.")
    return Response(
        fetched.data,
        media_type=fetched.media_type,
        headers={"Cache-Control": f"private, max-age={remaining}, immutable"},
    )
