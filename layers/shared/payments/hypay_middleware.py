"""The Powertools event-handler middleware that lets only genuine Hypay callbacks through.

Shared by `/hypay/return` (the customer's browser) and `/hypay/notify` (Hyp's servers). It works on
the raw query string (payload 2.0 `rawQueryString`) or the raw form body, order and encoding kept:
the local `Sign` HMAC first (cheap, constant-time), then Hyp's authoritative `What=VERIFY`, as the
mode says (`hmac`, `verify`, `both`). On `/hypay/notify` only, the caller's address
(`requestContext.http.sourceIp`, never `X-Forwarded-For`) is checked against the allowlist when one is set:
a genuine notification from outside it is still processed (the list is ours and may be stale; the money is
Hyp's), and counted.
The verified raw payload is handed to the route in `app.context["hypay_raw"]`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote_plus
from uuid import UUID

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.middlewares import BaseMiddlewareHandler, NextMiddleware
from aws_lambda_powertools.metrics import MetricUnit

from payments.adapters.hypay import HypayClient
from payments.domain import hypay as protocol
from payments.errors import ConfigurationError, GatewayAuthenticationError, GatewayError
from payments.http import problem
from payments.observability import logger, metrics
from payments.records import Record
from payments.settings import CallbackSettings, callback_settings

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
        # A UUID's text is hex digits and hyphens, nothing to encode; any other text is form-encoded (urlencode's).
        value = str(payment_id) if isinstance(payment_id, UUID) else quote_plus(str(payment_id))
        target += ("&" if "?" in url else "?") + "payment_id=" + value
    return Response(status_code=302, headers={"Location": target}, body="")


class PoisonPayload(Exception):
    """A body that cannot be a Hypay callback whatever happens later (not ASCII, not a form)."""


# Hyp's callbacks are about a kilobyte (some thirty short fields); anything far larger is not one, and would only be
# echoed to Hyp's VERIFY, kept or hashed at length.
MAX_CALLBACK_CHARACTERS = 16 * 1024


def raw_payload(app: Any) -> str:
    """What Hyp sent, exactly: the raw query string, or the raw form body of a POST.

    A form body is percent-encoded ASCII (Hyp's windows-1255 or UTF-8 values arrive percent-encoded):
    bytes outside ASCII, a raw NUL (which no database text can hold), or a body that does not decode, are
    poison (`PoisonPayload`).
    """
    event = app.current_event
    # The method as Powertools routes it (any letter case): a `post` routed to the notify is read as a POST.
    if event.http_method.upper() == "POST" and event.body:
        body = event.body
        if event.is_base64_encoded:
            try:
                data = base64.b64decode(body, validate=True)
            except (binascii.Error, ValueError):
                raise PoisonPayload("the body is not valid base64") from None
        else:
            try:
                data = body.encode("utf-8", errors="surrogateescape") if isinstance(body, str) else bytes(body)
            except UnicodeEncodeError:  # a lone surrogate: no bytes were ever sent as that
                raise PoisonPayload(
                    "the form body has characters outside ASCII (values must be percent-encoded)"
                ) from None
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise PoisonPayload("the form body has bytes outside ASCII (values must be percent-encoded)") from None
        if "\x00" in text:
            raise PoisonPayload("the form body has a NUL byte (values must be percent-encoded)")
        return _no_larger_than_a_callback(text, "the form body")
    raw = event.get("rawQueryString") or ""  # absent from a hand-written event: nothing was sent
    if not raw.isascii():
        raise PoisonPayload("the query string has characters outside ASCII")
    if "\x00" in raw:
        raise PoisonPayload("the query string has a NUL character")
    return _no_larger_than_a_callback(raw, "the query string")


def _no_larger_than_a_callback(text: str, what: str) -> str:
    if len(text) > MAX_CALLBACK_CHARACTERS:
        raise PoisonPayload(f"{what} is larger than a callback ({MAX_CALLBACK_CHARACTERS} characters at most)")
    return text


class VerificationConfig(Record):
    settings: CallbackSettings
    allowlist: tuple[Network, ...]
    gateway: HypayClient


# The verdict on a callback whose Sign is right but that Hyp's VERIFY does not confirm.
SIGNED_NOT_VERIFIED = "verify (its Sign right)"
# What such a callback is logged with: settled on what its Sign covers.
VERIFY_DISAGREES = (
    "hypay callback settled on its Sign: Hyp's VERIFY says not genuine, its Sign (our terminal's KEY) right; check the "
    "terminal's 'verify by signature' setting in Hyp's portal (or an unsigned field was edited)"
)


# The Sign was made with the KEY before the last rotation (the secret's PreviousKEY): genuine (the KEY was ours), and
# settled on what the Sign covers, as in `hmac` mode (VERIFY, asked with the new credentials, is not relied on).
SIGNED_WITH_PREVIOUS_KEY = "hmac (the previous KEY)"


class _Unverifiable(Exception):
    """Verification could not be done for a reason that is ours (configuration, Hyp unreachable)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HypayVerification(BaseMiddlewareHandler):
    """`middlewares=[HypayVerification(config_factory, notify=True)]` on a Hypay route.

    Outcomes: genuine (the route runs, `app.context["hypay_raw"]` and `["hypay_currency_trusted"]` set);
    forged (403 / the failure page, counted); in `both` mode, its Sign right but VERIFY saying no (the terminal's
    "verify by signature" off, or an unsigned field edited): the route runs as in `hmac` mode (currency not
    trusted), counted (VerifyDisagreedWithSign); refused before any check (a parameter that steers requests
    to Hyp, a repeated one, poison bytes: 400 / the failure page); not verifiable yet for a reason of ours
    (our credentials refused, terminal permission, configuration, Hyp unreachable: 503 with Retry-After /
    the pending page, the callback kept for reconciliation and the alarm's metric counted), never a
    rejection.
    """

    def __init__(
        self,
        config: Callable[[], VerificationConfig],
        *,
        notify: bool,
        keep_unverified: Callable[[str, bool, str], None] | None = None,
        found_forged: Callable[[str], None] | None = None,
    ) -> None:
        """`keep_unverified(raw, notify, reason)` keeps a callback we could not verify for a reason of ours;
        it must not depend on `config` (whose building may be what failed). `found_forged(raw)` is told of every
        callback found forged (one kept before, sent again, is marked so); it must not raise."""
        super().__init__()
        self._config = config
        self.notify = notify
        self._keep = keep_unverified
        self._found_forged = found_forged

    def handler(self, app: Any, next_middleware: NextMiddleware) -> Response:
        try:
            raw = raw_payload(app)
        except PoisonPayload as exc:
            return self._refuse(str(exc))
        if not raw.strip():
            return next_middleware(app)  # Hyp's portal connection test: nothing to verify, nothing to do
        refusal = protocol.callback_refusal(raw) or protocol.malformed(raw)
        if refusal is not None:
            return self._refuse(refusal)
        try:
            config = self._config()
        except ConfigurationError as exc:
            return self._unavailable(None, raw, f"configuration: {exc.message}")
        source_ip = app.current_event.request_context.http.source_ip
        if config.settings.verify_mode in ("hmac", "both") and protocol.unsignable(raw) is not None:
            # No KEY could have signed it: not genuine whatever Hyp would say of our credentials, so refused (403)
            # even when Hyp cannot be asked, never kept as a callback we could not verify (anyone could write such
            # rows without our KEY). A copy kept before (another mode, or before this check) is marked forged.
            return self._reject(config, "hmac", source_ip, raw)
        try:
            verdict = self._verify(config, raw)
        except _Unverifiable as exc:
            return self._unavailable(config, raw, exc.reason)
        if verdict is not None and verdict not in (SIGNED_NOT_VERIFIED, SIGNED_WITH_PREVIOUS_KEY):
            return self._reject(config, verdict, source_ip, raw)
        if self.notify and not allowed(source_ip, config.allowlist):
            # Genuine, from an address the list lacks: Hyp's addresses changed (Hyp publishes none, the list is
            # ours). Refusing it would drop money Hyp took for a mistake of ours: it is processed, and counted so
            # that the list gets fixed.
            metrics.add_metric(name="NotifyOutsideAllowlist", unit=MetricUnit.Count, value=1)
            logger.warning(
                "genuine hypay notify from an address outside HYPAY_NOTIFY_ALLOWED_CIDRS: processed",
                extra={"source_ip": source_ip},
            )
        if verdict == SIGNED_NOT_VERIFIED:
            # Its Sign (our terminal's KEY) proves what Hyp signed: the Id, code, amount and Order. VERIFY saying no is
            # the terminal's "verify by signature" setting off at Hyp (every callback then), or an unsigned field
            # edited by the link's holder. Either way Hyp decided this transaction: it is settled on what the Sign
            # covers, as in `hmac` mode (the payment's own currency; Coin, Hesh, L4digit, errMsg not read), never
            # refused with nothing written. Counted (alarmed): a setting to fix, or edits to look at.
            metrics.add_metric(name="VerifyDisagreedWithSign", unit=MetricUnit.Count, value=1)
            logger.warning(VERIFY_DISAGREES, extra={"notify": self.notify, "source_ip": source_ip})
        if verdict == SIGNED_WITH_PREVIOUS_KEY:
            # A rotation's grace period: counted, so that PreviousKEY is removed from the secret once these stop.
            metrics.add_metric(name="SignedWithPreviousKey", unit=MetricUnit.Count, value=1)
            logger.warning("hypay callback signed with the previous KEY: processed", extra={"notify": self.notify})
        trusted = config.settings.verify_mode != "hmac" and verdict is None
        app.append_context(hypay_raw=raw, hypay_currency_trusted=trusted)
        return next_middleware(app)

    def _verify(self, config: VerificationConfig, raw: str) -> str | None:
        """None when genuine; the failed check's name when forged; `SIGNED_NOT_VERIFIED` when VERIFY says no to a
        callback whose Sign is right (no forgery: settled on what the Sign covers); `_Unverifiable` when we cannot
        tell."""
        mode = config.settings.verify_mode
        gateway = config.gateway
        try:
            with gateway.one_check():  # every step with the same credentials
                return self._steps(gateway, mode, raw)
        except ConfigurationError as exc:
            raise _Unverifiable(f"configuration: {exc.message}") from None
        except GatewayError as exc:
            raise _Unverifiable(f"Hyp could not be asked ({exc.code})") from None

    def _steps(self, gateway: HypayClient, mode: str, raw: str) -> str | None:
        """`_verify`'s checks, in order."""
        signed = mode in ("hmac", "both")
        text = raw
        if signed:
            matched = gateway.signed_text(raw)  # as received, or as Hyp sent it before a browser re-encoded it
            if matched is None:
                if gateway.signed_with_previous_key(raw):
                    return SIGNED_WITH_PREVIOUS_KEY
                return self._forged_or_ours(gateway, "hmac")
            text = matched
        if mode in ("verify", "both"):
            try:
                genuine = gateway.verify_redirect(text)
                if not genuine and (before_browser := protocol.as_hyp_sent(text)) != text:
                    # A browser re-encoded an apostrophe Hyp sent as it is, in a field the Sign does not cover (or
                    # no Sign told which form Hyp sent): asked again about the text as Hyp sent it.
                    genuine = gateway.verify_redirect(before_browser)
            except GatewayAuthenticationError:
                raise _Unverifiable("Hyp refused our terminal's VERIFY (permission)") from None
            if not genuine:
                check = self._forged_or_ours(gateway, "verify")
                # Its Sign right (made with our terminal's KEY), VERIFY says no: an unsigned field edited by the
                # redirect's holder, or a terminal setting. No forgery. (In `verify` mode the Sign is not trusted.)
                return SIGNED_NOT_VERIFIED if signed else check
        return None

    @staticmethod
    def _forged_or_ours(gateway: HypayClient, check: str) -> str:
        """A failed check is a forgery only if Hyp accepts our credentials; else our KEY/PassP is off."""
        if not gateway.credentials_accepted():
            raise _Unverifiable(f"{check} failed and Hyp refuses our terminal's credentials (KEY or PassP)")
        return check

    def _refuse(self, reason: str) -> Response:
        metrics.add_metric(name="CallbackRefused", unit=MetricUnit.Count, value=1)
        logger.warning("hypay callback refused", extra={"reason": reason, "notify": self.notify})
        if self.notify:
            return problem(400, "Bad Request", f"not a Hypay callback: {reason}")
        return redirect(callback_pages().failure_url)

    def _reject(self, config: VerificationConfig, check: str, source_ip: str, raw: str | None) -> Response:
        """Refused as not genuine; `raw` (when the check makes it a forgery) is told to `found_forged`."""
        metrics.add_metric(name="VerificationFailed", unit=MetricUnit.Count, value=1)
        # Never the signature, never the parameters: which check failed and where is enough.
        logger.warning(
            "hypay callback failed verification", extra={"check": check, "notify": self.notify, "source_ip": source_ip}
        )
        if self._found_forged is not None and raw is not None:
            self._found_forged(raw)
        if self.notify:
            return problem(403, "Forbidden", "the callback could not be verified")
        return redirect(config.settings.failure_url)

    def _unavailable(self, config: VerificationConfig | None, raw: str, reason: str) -> Response:
        metrics.add_metric(name="CallbackNotVerifiable", unit=MetricUnit.Count, value=1)
        logger.error("hypay callback cannot be verified yet", extra={"reason": reason, "notify": self.notify})
        if self._keep is not None:
            self._keep(raw, self.notify, reason)
        if self.notify:
            return problem(
                503,
                "Service Unavailable",
                "could not verify the callback yet; send it again later",
                headers={"Retry-After": "60"},
            )
        order = protocol.decode_query(raw).get("Order", "")
        try:
            payment_id = UUID(order) if len(order) == 36 else None
        except ValueError:
            payment_id = None
        pages = config.settings if config is not None else callback_pages()
        return redirect(pages.pending_url, payment_id)


def callback_pages() -> CallbackSettings:
    """The web app's pages; their defaults when the settings themselves are broken."""
    try:
        return callback_settings()
    except ConfigurationError:
        return CallbackSettings()
