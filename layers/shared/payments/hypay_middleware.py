"""The Powertools event-handler middleware that lets only genuine Hypay callbacks through.

Shared by `/hypay/return` (the customer's browser) and `/hypay/notify` (Hyp's servers). It works on
the raw query string (payload 2.0 `rawQueryString`) or the raw form body, order and encoding kept:
the local `Sign` HMAC first (cheap, constant-time), then Hyp's authoritative `What=VERIFY`, as the
mode says (`hmac`, `verify`, `both`). On `/hypay/notify` only, the caller's address
(`requestContext.http.sourceIp`, never `X-Forwarded-For`) must be in the allowlist when one is set.
The verified raw payload is handed to the route in `app.context["hypay_raw"]`.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.middlewares import BaseMiddlewareHandler, NextMiddleware
from aws_lambda_powertools.metrics import MetricUnit

from payments.adapters.hypay import HypayClient
from payments.domain import hypay as protocol
from payments.errors import ConfigurationError, GatewayError
from payments.http import problem
from payments.observability import metrics
from payments.settings import CallbackSettings

logger = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_allowlist(cidrs: str) -> tuple[Network, ...]:
    """`"198.51.100.0/24, 2001:db8::/32"` -> networks; empty -> no allowlist."""
    try:
        return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs.split(",") if c.strip())
    except ValueError:
        raise ConfigurationError("HYPAY_NOTIFY_ALLOWED_CIDRS is not a comma-separated list of CIDRs") from None


def allowed(source_ip: str, networks: Sequence[Network]) -> bool:
    if not networks:
        return True
    try:
        address = ipaddress.ip_address(source_ip)
    except ValueError:
        return False
    return any(address in network for network in networks)


def redirect(url: str, payment_id: UUID | str | None = None) -> Response:
    """302 to a page of the web app, carrying our payment id and nothing of Hyp's."""
    target = url
    if payment_id is not None:
        target += ("&" if "?" in url else "?") + urlencode({"payment_id": str(payment_id)})
    return Response(status_code=302, headers={"Location": target}, body="")


def raw_payload(app: Any) -> str:
    """What Hyp sent, exactly: the raw query string, or the raw form body of a POST."""
    event = app.current_event
    if event.http_method == "POST" and event.body:
        return event.decoded_body or ""
    return event.raw_query_string or ""


@dataclass(frozen=True)
class VerificationConfig:
    settings: CallbackSettings
    allowlist: tuple[Network, ...]
    gateway: HypayClient


class HypayVerification(BaseMiddlewareHandler):
    """`middlewares=[HypayVerification(config_factory, notify=True)]` on a Hypay route."""

    def __init__(self, config: Callable[[], VerificationConfig], *, notify: bool) -> None:
        super().__init__()
        self._config = config
        self.notify = notify

    def handler(self, app: Any, next_middleware: NextMiddleware) -> Response:
        raw = raw_payload(app)
        if not raw.strip():
            return next_middleware(app)  # Hyp's portal connection test: nothing to verify, nothing to do
        config = self._config()
        if self.notify and not allowed(app.current_event.request_context.http.source_ip, config.allowlist):
            metrics.add_metric(name="IpRejected", unit=MetricUnit.Count, value=1)
            logger.warning(
                "hypay notify from a address outside the allowlist",
                extra={"source_ip": app.current_event.request_context.http.source_ip},
            )
            return problem(403, "Forbidden", "this address may not send Hypay notifications")

        mode = config.settings.verify_mode
        if mode in ("hmac", "both") and not config.gateway.verify_redirect_hmac(raw):
            return self._reject(config, "hmac")
        if mode in ("verify", "both"):
            try:
                genuine = config.gateway.verify_redirect(raw)
            except GatewayError:
                return self._unavailable(config, raw, hmac_checked=mode == "both")
            if not genuine:
                return self._reject(config, "verify")
        app.append_context(hypay_raw=raw)
        return next_middleware(app)

    def _reject(self, config: VerificationConfig, check: str) -> Response:
        metrics.add_metric(name="VerificationFailed", unit=MetricUnit.Count, value=1)
        # Never the signature, never the parameters: which check failed and where is enough.
        logger.warning("hypay callback failed verification", extra={"check": check, "notify": self.notify})
        if self.notify:
            return problem(403, "Forbidden", "the callback could not be verified")
        return redirect(config.settings.failure_url)

    def _unavailable(self, config: VerificationConfig, raw: str, *, hmac_checked: bool) -> Response:
        metrics.add_metric(name="VerifyUnavailable", unit=MetricUnit.Count, value=1)
        logger.warning("hypay VERIFY unavailable; callback left for a later delivery", extra={"notify": self.notify})
        if self.notify:
            return problem(
                503,
                "Service Unavailable",
                "could not verify the callback yet; send it again later",
                headers={"Retry-After": "60"},
            )
        order = protocol.decode_query(raw).get("Order") if hmac_checked else None
        try:
            payment_id = UUID(order) if order else None
        except ValueError:
            payment_id = None
        return redirect(config.settings.pending_url, payment_id)
