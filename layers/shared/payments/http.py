"""HTTP answers shared by the API functions: problem+json (RFC 9457) and security headers."""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.event_handler import Response

SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


def problem(status: int, title: str, detail: str, *, type_: str = "about:blank", **extra: Any) -> Response:
    """An application/problem+json response. `detail` must never carry card data or secrets."""
    body = {"type": type_, "title": title, "status": status, "detail": detail, **extra}
    return Response(
        status_code=status,
        content_type="application/problem+json",
        body=json.dumps(body),
        headers=dict(SECURITY_HEADERS),
    )
