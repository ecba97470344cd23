"""HypayClient: the only code that talks to Hyp's endpoint.

Every call is a form POST (credentials never sit in a URL) answered by a query string whose
`CCode` decides the outcome; failures are typed (`payments.errors.Gateway*`). Idempotent calls
(SIGN, VERIFY, getToken) are retried once on a transient failure; a charge (`action=soft`) never is.
Credentials (`Masof`, `KEY`, `PassP`), tokens and CVVs never reach a log line or an error message.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urlencode

from aws_lambda_powertools import Logger

from payments import deadline
from payments.adapters.secrets import read_secret
from payments.domain import hypay as protocol
from payments.domain.money import CURRENCY_OF_COIN, Currency, Money
from payments.errors import ConfigurationError, GatewayError, GatewayNotAsked, GatewayRejected, GatewayUnavailable
from payments.records import Record
from payments.settings import DEFAULT_URL, HYPAY_URL, HypaySettings, hypay_settings
from payments.tracing import tracer

# A child of the functions' Powertools Logger (same service, same keys); importing payments.observability
# here would fix the metrics namespace before a test's environment is set.
logger = Logger(child=True)


class HypayCredentials(Record):
    """A terminal's credentials. Only `masof` ever shows in a repr."""

    _hidden = frozenset({"key", "passp", "previous_key"})
    masof: str
    key: str
    passp: str
    # The KEY before a rotation, for a grace period (docs/integration.md): a callback of a transaction paid before the
    # rotation, delivered again after it, carries a Sign made with it.
    previous_key: str | None = None

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> HypayCredentials:
        if data.get("placeholder"):
            raise ConfigurationError(
                "the Hypay secret still holds the stack's placeholder: put the terminal's Masof, KEY and PassP in it"
            )
        try:
            masof, key, passp = str(data["Masof"]), str(data["KEY"]), str(data["PassP"])
        except KeyError as exc:
            raise ConfigurationError(f"Hypay credentials lack {exc.args[0]}") from None
        if not (masof.isdigit() and len(masof) == 10):
            raise ConfigurationError("Hypay Masof must be 10 digits")
        previous = data.get("PreviousKEY")
        return cls(masof, key, passp, str(previous) if previous and str(previous) != key else None)


# What we send that must never come back out of an answer: the terminal's credentials, the card (a token) and
# its CVV. Hyp's free text (`errMsg`) reaches answers, rows and logs: any of these repeated in it is masked.
_SECRET_PARAMS = ("KEY", "PassP", "CC", "cvv")
_CREDENTIAL_NAMES = frozenset({"key", "passp", "cc", "cvv"})


def _secrets_sent(params: dict[str, str]) -> list[str]:
    """The secret values of a request, each also as it went out percent-encoded (and as a form would encode it): a
    repeated request may come back in either form. Longest first; none shorter than 3 characters."""
    forms: set[str] = set()
    for name in _SECRET_PARAMS:
        value = params.get(name) or ""
        if len(value) >= 3:
            forms |= {value, quote(value, safe=""), quote_plus(value)}
    return sorted(forms, key=len, reverse=True)


def _without_our_secrets(answer: protocol.Answer, secrets: list[str]) -> protocol.Answer:
    """`answer` with every secret value we sent (`_secrets_sent`) masked in its free text (`errMsg`). Structured
    fields (Id, CCode, Amount...) are never rewritten: a CVV's digits may well occur inside an Id."""
    message = answer.fields.get("errMsg")
    if not message:
        return answer
    masked = message
    for value in secrets:
        masked = masked.replace(value, "[redacted]")
    if masked == message:
        return answer
    return protocol.Answer({**answer.fields, "errMsg": masked}, answer.raw)


# The fields a SIGN answer adds of its own, as they must be: `action=pay`, and the page's `signature` (64 hex digits,
# which a short PassP may well occur in by chance: and the same page's signature every time, so a refusal would never
# pass). Anything else in them is searched like any other field.
def _sign_own_field(name: str, value: str) -> bool:
    return (name == "action" and value == "pay") or (
        name == "signature" and protocol.HMAC_SHA256_HEX.fullmatch(value) is not None
    )


def _repeats_credentials(answer: protocol.Answer, params: dict[str, str]) -> bool:
    """The answer names a credential or the card (KEY, PassP, CC, cvv, in any case), or a field of it that is not
    what we sent under its name holds one of our secrets (in any form: `_secrets_sent`). A field we sent, echoed as
    we sent it (a customer's name), is ours whatever it holds."""
    fields = protocol.decode_query(answer.raw)  # as the text reaches the browser (answer.fields' errMsg is masked)
    if _CREDENTIAL_NAMES & {name.lower() for name in fields}:
        return True
    secrets = _secrets_sent(params)
    return any(
        secret in value
        for name, value in fields.items()
        if params.get(name) != value and not _sign_own_field(name, value)
        for secret in secrets
    )


class SecretCredentials:
    """The terminal's credentials from the Secrets Manager secret, kept for HYPAY_SECRET_MAX_AGE; `refresh` reads the
    secret again now (Hyp refused the cached ones: they may have been rotated since)."""

    def __init__(self, arn: str, max_age: int) -> None:
        self._arn = arn
        self._max_age = max_age

    def __call__(self, refresh: bool = False) -> HypayCredentials:
        secret = read_secret(
            self._arn, what="Hypay", unavailable=GatewayUnavailable, max_age=self._max_age, refresh=refresh
        )
        return HypayCredentials.from_mapping(secret)

    def refresh(self) -> HypayCredentials:
        return self(refresh=True)


def credentials_provider(settings: HypaySettings) -> Callable[[], HypayCredentials]:
    """The Secrets Manager secret (JSON: Masof, KEY, PassP, optionally PreviousKEY) when configured, else the
    environment."""
    if settings.secret_arn:
        return SecretCredentials(settings.secret_arn, settings.secret_max_age_seconds)
    if settings.masof and settings.key and settings.passp:
        creds = HypayCredentials.from_mapping(
            {
                "Masof": settings.masof,
                "KEY": settings.key,
                "PassP": settings.passp,
                "PreviousKEY": settings.previous_key,
            }
        )
        return lambda: creds
    raise ConfigurationError("set HYPAY_SECRET_ARN, or HYPAY_MASOF, HYPAY_KEY and HYPAY_PASSP")


class Customer(Record):
    first_name: str = ""
    last_name: str = ""
    email: str = ""
    israeli_id: str = "000000000"  # Hyp's `UserId`: an Israeli ID, or zeros when not asked


NO_CUSTOMER = Customer()


class PaymentPage(Record):
    """What the payment page asks for. `order` comes back as `Order` in the redirect."""

    amount: Money
    order: str
    description: str
    customer: Customer = NO_CUSTOMER
    language: str = "HEB"
    max_installments: int = 1
    invoice: bool = False  # SendHesh: Hyp issues the invoice (its number comes back as Hesh)


class Charge(Record):
    """An approved transaction. No card data: Hyp's transaction id, approval code and amount."""

    transaction_id: str
    approval_code: str
    amount: Money | None  # None: the answer had no amount we can read (missing, or not an amount)
    invoice_number: str | None = None
    currency_known: bool = True  # False: its Coin is not a currency we sell in (the amount's currency is a stand-in)


class Token(Record):
    """A card token for `charge_token`. The token itself never shows in a repr."""

    _hidden = frozenset({"value"})
    value: str
    expiry_month: int
    expiry_year: int


Opener = Callable[[urllib.request.Request, float], bytes]


class _Call:
    """One call's connections, so that the caller can cut them off once it gives up waiting (`abandon`)."""

    def __init__(self) -> None:
        # The sockets themselves: urllib asks for `Connection: close`, so http.client lets go of the connection's
        # socket once the answer's headers are in, while the answer is read through it.
        self.sockets: list[socket.socket] = []
        self.abandoned = threading.Event()

    def abandon(self) -> None:
        """No request leaves any more, and a read in progress ends at once (its socket shut down)."""
        self.abandoned.set()
        for sock in list(self.sockets):
            with contextlib.suppress(OSError):  # closed already
                # The plain socket's shutdown, also for a TLS one: SSLSocket.shutdown drops its TLS state first, and a
                # send racing it would then go out in the clear.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


_calling = threading.local()  # the worker thread's `_Call`


def _refuse_if_abandoned(connection: http.client.HTTPConnection) -> None:
    """Connected (the name looked up, TLS shaken hands) after the caller gave up: nothing is sent."""
    call = getattr(_calling, "call", None)
    if call is not None:
        call.sockets.append(connection.sock)
        if call.abandoned.is_set():
            connection.close()
            raise TimeoutError("the call was given up before its request was sent")


class _HTTPConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _refuse_if_abandoned(self)


class _HTTPSConnection(http.client.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _refuse_if_abandoned(self)


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPConnection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPSConnection, req, context=self._context)  # type: ignore[attr-defined]


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is Hyp's answer, never followed: a request that moved money (a charge, a refund) answered with a
    3xx was sent, and following it would send it (as a GET, to an address of the answer's choosing) again, or fail
    in a way that looked like nothing was sent. The 3xx becomes an HTTPError: an answer lost, "not yet" or unknown
    as for any error page."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@functools.cache
def _opener() -> urllib.request.OpenerDirector:
    """urlopen's own opener (the same handlers, proxies and TLS defaults), with connections a caller can cut off and
    no redirect followed."""
    return urllib.request.build_opener(_HTTPHandler, _HTTPSHandler, _NoRedirects)


def _urlopen(request: urllib.request.Request, timeout: float) -> bytes:
    """Hyp's whole answer within `timeout` seconds, or TimeoutError.

    urllib's own timeout bounds each wait for bytes: an answer trickled a byte at a time, or a name lookup that
    hangs (getaddrinfo takes no timeout), would outlast it and the invocation with it. So the call runs in a
    thread of its own that is given `timeout` in all; past it, the call is given up: a request not sent yet is
    never sent, a read in progress is cut (its socket shut down), and the answer, if any, is never read. For a
    charge or a refund, that is an unknown outcome, as a timeout."""
    call = _Call()
    outcome: list[bytes | BaseException] = []

    def run() -> None:
        _calling.call = call
        try:
            with _opener().open(request, timeout=timeout) as response:
                # A too-long answer is read only as far as needed to know it (`parse_answer` refuses it); any
                # other whole, as declared. Read with a size, http.client returns a cut answer as if complete: one
                # declared too long that ends sooner is cut, whatever it says.
                length = getattr(response, "length", None)
                longest = protocol.MAX_ANSWER_BYTES
                if length is not None and length <= longest:
                    outcome.append(response.read())
                else:
                    body = response.read(longest + 1)
                    if length is not None and len(body) <= longest:
                        raise http.client.IncompleteRead(body, length - len(body))
                    outcome.append(body)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, raised there
            outcome.append(exc)

    worker = threading.Thread(target=run, name="hypay-call", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        call.abandon()
        raise TimeoutError(f"Hypay's whole answer did not arrive within {timeout:g} s")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


class HypayClient:
    def __init__(
        self,
        credentials: Callable[[], HypayCredentials],
        *,
        url: str = HYPAY_URL,
        timeout_seconds: float = 6.0,
        budget_seconds: float = 12.0,
        opener: Opener = _urlopen,
    ) -> None:
        self._credentials = credentials
        self.url = url
        self._timeout = timeout_seconds
        self._budget = budget_seconds
        self._open = opener
        self._credentials_ok_until = 0.0
        # Hyp refused our credentials (901/902): the next request reads them again before anything is sent (never
        # between an answer and its storing), at most once per CREDENTIALS_REFRESH_COOLDOWN_SECONDS.
        self._credentials_stale = False
        self._refresh_allowed_at = 0.0
        self._pinned: HypayCredentials | None = None  # a callback check's own (`one_check`)

    @classmethod
    def from_settings(cls, settings: HypaySettings | None = None) -> HypayClient:
        settings = settings or hypay_settings()
        return cls(
            credentials_provider(settings),
            url=settings.url,
            timeout_seconds=settings.timeout_seconds,
            budget_seconds=settings.budget_seconds,
        )

    # -- the credentials ------------------------------------------------------------------------

    def renew_credentials(self) -> None:
        """When Hyp refused the last credentials sent (a rotation: the portal, then the secret), the secret read again
        now; else nothing. A read that fails leaves the cached ones in use (still within their max age). Called before
        a request is built (`_creds`), and by the callback check before its first step, never within it: every step of
        one check uses the same credentials (a VERIFY refused with the old ones and a credentials check passed with new
        ones would call a genuine callback forged)."""
        refresh = getattr(self._credentials, "refresh", None)
        if not self._credentials_stale or refresh is None:
            return
        self._credentials_stale = False
        try:
            refresh()
        except (GatewayError, ConfigurationError) as exc:
            logger.warning("hypay credentials not read again", extra={"reason": exc.code})
            return
        self._credentials_ok_until = 0.0  # a yes was about the credentials before

    def _creds(self) -> HypayCredentials:
        """The credentials a request sends: read again first when Hyp refused the last ones (`renew_credentials`)."""
        self.renew_credentials()
        return self._credentials()

    def _checking(self) -> HypayCredentials:
        """The credentials of the callback check under way (`one_check`), else the cached ones."""
        return self._pinned if self._pinned is not None else self._credentials()

    @contextlib.contextmanager
    def one_check(self) -> Iterator[None]:
        """Every step of one callback check (the Sign, the previous KEY, VERIFY, the credentials check) uses the same
        credentials: renewed first (`renew_credentials`), then read once. A step reading them again could get a
        newer value (the cache's age running out mid-check during a rotation), and a check failed with the old ones
        then passed with new ones would call a genuine callback forged. Raises as a read does."""
        self.renew_credentials()
        self._pinned = self._credentials()
        try:
            yield
        finally:
            self._pinned = None

    def _refused_our_credentials(self) -> None:
        """Hyp answered 901/902: the next request reads the credentials again (within the cooldown). Only flags: it
        never raises, and nothing is read here (an answer that may have moved money is stored first)."""
        now = time.monotonic()
        if now >= self._refresh_allowed_at:
            self._refresh_allowed_at = now + CREDENTIALS_REFRESH_COOLDOWN_SECONDS
            self._credentials_stale = True

    # -- the calls ------------------------------------------------------------------------------

    def _sign_head(self, *, renew: bool = True) -> dict[str, str]:
        creds = self._creds() if renew else self._checking()
        return {
            "action": "APISign",
            "What": "SIGN",
            "Masof": creds.masof,
            "KEY": creds.key,
            "PassP": creds.passp,
            "Sign": "True",
            "UTF8": "True",
            "UTF8out": "True",
        }

    def payment_page_url(self, page: PaymentPage) -> str:
        """APISign/SIGN: Hyp signs the page parameters; the page URL is the answer, verbatim."""
        params = {
            **self._sign_head(),
            "MoreData": "True",
            "Amount": page.amount.hypay_amount(),
            "Coin": page.amount.coin,
            "Order": page.order,
            "Info": page.description,
            "ClientName": page.customer.first_name,
            "ClientLName": page.customer.last_name,
            "email": page.customer.email,
            "UserId": page.customer.israeli_id,
            "PageLang": page.language,
            "Tash": str(page.max_installments),
        }
        if page.invoice:
            params |= {
                "SendHesh": "True",
                "Pritim": "True",
                "heshDesc": protocol.invoice_line(page.description, page.amount.hypay_amount()),
            }
        answer = self._call("SIGN", params, retry=True)
        if (
            answer.ccode in _CREDENTIALS_REFUSED["SIGN"]
            and self._credentials_stale
            and hasattr(self._credentials, "refresh")
        ):
            # Refused our credentials: signed again once with the secret read again (rotated since it was cached). A
            # page moves no money: asking twice is safe.
            params |= self._sign_head()
            answer = self._call("SIGN", params, retry=True)
        if "signature" not in answer.fields:
            protocol.raise_for_ccode(answer, "SIGN")  # an error answer: CCode, no signature
            raise GatewayUnavailable("Hypay SIGN: answer without a signature")
        if _repeats_credentials(answer, params):
            # The page's URL goes to the customer's browser, the payment's row and the idempotency record: never
            # with our KEY or PassP in it. Nothing was charged; "not yet".
            raise GatewayUnavailable("Hypay SIGN: the answer repeats our terminal's credentials")
        return f"{self.url}?{answer.raw}"

    def verify_redirect_hmac(self, raw_query: str) -> bool:
        """The local check of `Sign` (no network, constant-time)."""
        return self.signed_text(raw_query) is not None

    def signed_text(self, raw_query: str) -> str | None:
        """The callback's text as Hyp signed it (as received, or before a browser re-encoded it), or None when its
        `Sign` matches neither."""
        return protocol.signed_text(raw_query, self._checking().key)

    def signed_with_previous_key(self, raw_query: str) -> bool:
        """Its `Sign` was made with the KEY before the last rotation (`PreviousKEY`, while the secret holds one)."""
        previous = self._checking().previous_key
        return previous is not None and protocol.signed_text(raw_query, previous) is not None

    def verify_redirect(self, raw_query: str) -> bool:
        """APISign/VERIFY, the authoritative check, built from our credentials and the documented
        redirect fields only (in the order received, values as received): a callback's own `action`,
        `What`, `Masof`, `KEY` or `PassP` never reach Hyp.

        True when Hyp says genuine (CCode 0), False when it says not. `GatewayAuthenticationError`
        when the terminal may not verify (901), `GatewayUnavailable` when Hyp cannot be asked: then
        nothing may be concluded.
        """
        creds = self._checking()
        head = urlencode(
            {"action": "APISign", "What": "VERIFY", "Masof": creds.masof, "KEY": creds.key, "PassP": creds.passp}
        )
        fields = "&".join(f"{name}={value}" for name, value in protocol.verify_fields(raw_query))
        answer = self._call("VERIFY", None, retry=True, body=f"{head}&{fields}".encode())
        if "signature" in answer.fields:
            raise GatewayUnavailable("Hypay VERIFY answered something else than a verification")
        if answer.ccode == protocol.APPROVED:
            return True
        if answer.ccode == 901:
            protocol.raise_for_ccode(answer, "VERIFY")
        if answer.ccode == 999 or answer.ccode is None:
            raise GatewayUnavailable("Hypay VERIFY could not answer")
        if answer.ccode in protocol.VALIDATION_CODES:  # our request refused: nothing is known of the callback
            raise GatewayUnavailable(f"Hypay VERIFY refused our request (CCode {answer.ccode})")
        return False

    def credentials_accepted(self) -> bool:
        """Does Hyp accept our terminal's Masof, KEY and PassP? A SIGN of a one-shekel page, nothing charged.

        Hyp answers VERIFY with 902 both for a forged callback and for wrong credentials (a KEY being
        rotated): this tells the two apart. A yes is reused for `CREDENTIALS_CHECK_REUSE_SECONDS` only, so that
        forged traffic costs at most one extra call to Hyp every few seconds, while a KEY rotated at Hyp is
        noticed within those seconds (a genuine callback signed with the new KEY is then "not yet", kept, not
        called forged). `GatewayUnavailable` when Hyp cannot be asked.
        """
        now = time.monotonic()
        if self._credentials_ok_until > now:
            return True
        params = {
            **self._sign_head(renew=False),  # the credentials the failed check used
            "Amount": "1.00",
            "Coin": "1",
            "Order": "credentials-check",
            "Info": "credentials check",
        }
        answer = self._call("SIGN", params, retry=True)
        if "signature" in answer.fields:
            self._credentials_ok_until = now + CREDENTIALS_CHECK_REUSE_SECONDS
            return True
        if answer.ccode in (901, 902):
            return False
        raise GatewayUnavailable("Hypay SIGN could not answer the credentials check")

    def get_token(self, transaction_id: str) -> Token:
        """getToken for an approved transaction: a 19-digit token and its expiry (Tokef = YYMM)."""
        creds = self._creds()
        trans_id = _as_hyp_writes(transaction_id)
        answer = self._call(
            "getToken",
            {"action": "getToken", "Masof": creds.masof, "PassP": creds.passp, "TransId": trans_id},
            retry=True,
        )
        # 402 here is Hyp having no token for the transaction (not one of its approved ones): final, not "not yet"
        protocol.raise_for_ccode(answer, "getToken", invalid_is_ours=False)
        token, tokef = answer.fields.get("Token", ""), answer.fields.get("Tokef", "")
        if not (protocol.hyp_token(token) and len(tokef) == 4 and tokef.isascii() and tokef.isdigit()):
            # Hyp's approval of the request (CCode 0), with a token or expiry that cannot be kept: its answer about this
            # transaction (asked again, it answers the same), refused, never "not yet" on every delivery
            raise GatewayRejected("Hypay getToken: the token answer cannot be kept (token or Tokef malformed)")
        return Token(token, expiry_month=int(tokef[2:]), expiry_year=2000 + int(tokef[:2]))

    def charge_token(
        self,
        token: Token,
        *,
        amount: Money,
        order: str,
        description: str,
        customer: Customer = NO_CUSTOMER,
        cvv: str | None = None,
        invoice: bool = False,
    ) -> Charge:
        """action=soft with a token. Never retried blindly: a lost answer may still be a charge. `invoice`: Hyp issues
        the charge's invoice (SendHesh, one line as on the payment page), its number coming back as Hesh.

        `GatewayNotAsked` when our credentials cannot be read, or the token is not a Hyp token: then nothing was sent.
        """
        if protocol.hyp_token(token.value) is None:  # only a Hyp token is ever sent as the card (whatever was stored)
            raise GatewayNotAsked("Hypay not asked: the saved card's token is not a Hyp token")
        try:
            creds = self._creds()
        except (GatewayError, ConfigurationError) as exc:
            raise GatewayNotAsked(f"Hypay not asked: credentials unavailable ({exc.code})") from None
        params = {
            "action": "soft",
            "Masof": creds.masof,
            "PassP": creds.passp,
            "Amount": amount.hypay_amount(),
            "Coin": amount.coin,
            "CC": token.value,
            "Token": "True",
            "Tmonth": f"{token.expiry_month:02d}",
            "Tyear": str(token.expiry_year),
            "UserId": customer.israeli_id,
            "ClientName": customer.first_name,
            "ClientLName": customer.last_name,
            "email": customer.email,
            "Info": description,
            "Order": order,
            "UTF8": "True",
            "UTF8out": "True",
            "MoreData": "True",
        }
        if invoice:
            params |= {
                "SendHesh": "True",
                "Pritim": "True",
                "heshDesc": protocol.invoice_line(description, amount.hypay_amount()),
            }
        if cvv:
            params["cvv"] = cvv  # passed through only: never kept, logged or echoed
        answer = self._call("soft", params, retry=False)
        protocol.raise_for_ccode(answer, "charge")
        return _charge_from(answer)

    # -- transport ------------------------------------------------------------------------------

    def _call(
        self, action: str, params: dict[str, str] | None, *, retry: bool, body: bytes | None = None
    ) -> protocol.Answer:
        data = body if body is not None else urlencode(params or {}, quote_via=quote).encode()
        # What the answer's free text is cleaned of: read from the request itself, never from the credentials again
        # after Hyp answered (a read that fails then would lose an answer that moved money).
        secrets = _secrets_sent(params if params is not None else dict(parse_qsl(data.decode("ascii", "replace"))))
        request = urllib.request.Request(
            self.url,
            data=data,
            method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8", "User-Agent": "payments/1"},
        )
        # Its own X-Ray subsegment, annotated with the action and Hyp's answer code (never the request:
        # it carries KEY, PassP and the CVV). The X-Ray SDK does not trace urllib by default.
        with tracer.provider.in_subsegment(f"## hypay {action}") as subsegment:
            subsegment.put_annotation(key="hypay_action", value=action)
            answer = self._attempts(action, request, retry=retry)
            if answer.ccode in _CREDENTIALS_REFUSED.get(action, ()):
                self._refused_our_credentials()
            if answer.ccode is not None:
                subsegment.put_annotation(key="hypay_ccode", value=str(answer.ccode))
            return _without_our_secrets(answer, secrets)

    def _attempts(self, action: str, request: urllib.request.Request, *, retry: bool) -> protocol.Answer:
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            timeout = self._attempt_timeout(action, moves_money=not retry, attempt=attempt)
            try:
                answer = protocol.parse_answer(self._send(request, timeout))
                logger.info(
                    "hypay call",
                    extra={
                        "hypay_action": action,
                        "ccode": answer.ccode,
                        "attempt": attempt,
                        "elapsed_ms": round((time.monotonic() - started) * 1000),
                    },
                )
                if answer.ccode == 999 and retry and self._may_retry(started, attempt):
                    continue  # Hyp's own "communication error": transient by definition
                return answer
            except GatewayUnavailable as exc:
                logger.warning(
                    "hypay unavailable", extra={"hypay_action": action, "attempt": attempt, "reason": exc.message}
                )
                if not (retry and self._may_retry(started, attempt)):
                    raise

    def _may_retry(self, started: float, attempt: int) -> bool:
        left = deadline.seconds_left()
        return (
            attempt == 1
            and (time.monotonic() - started) + self._timeout <= self._budget
            and (left is None or left >= MIN_ATTEMPT_SECONDS)
        )

    def _attempt_timeout(self, action: str, *, moves_money: bool, attempt: int) -> float:
        """This attempt's timeout: the configured one, within what the invocation has left (`payments.deadline`).

        Hyp is not asked (`GatewayNotAsked`: nothing sent, "not yet") when too little is left: a call that may move
        money (a charge, a refund) needs its whole timeout, so that its answer is not cut short into an unknown
        outcome; any other needs MIN_ATTEMPT_SECONDS. Killed by Lambda's timeout instead, the invocation would
        answer a 500 and lose the answer of a call it made."""
        left = deadline.seconds_left()
        if left is None:
            return self._timeout
        if left < (self._timeout if moves_money else MIN_ATTEMPT_SECONDS):
            logger.warning(
                "hypay not asked: the invocation has too little time left",
                extra={"hypay_action": action, "attempt": attempt, "seconds_left": round(left, 1)},
            )
            raise GatewayNotAsked("Hypay not asked: the invocation has too little time left")
        return min(self._timeout, left)

    def _send(self, request: urllib.request.Request, timeout: float) -> bytes:
        try:
            return self._open(request, timeout)
        except urllib.error.HTTPError as exc:
            raise GatewayUnavailable(f"Hypay answered HTTP {exc.code}") from None
        except TimeoutError:
            raise GatewayUnavailable("Hypay did not answer in time") from None
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise GatewayUnavailable("Hypay did not answer in time") from None
            raise GatewayUnavailable(f"could not reach Hypay ({type(reason).__name__})") from None
        except http.client.HTTPException as exc:
            # A cut or malformed HTTP answer (IncompleteRead, BadStatusLine, LineTooLong, ...): these are not
            # OSErrors. The request was sent: its answer is lost, as with a timeout.
            raise GatewayUnavailable(f"Hypay's answer was cut off or malformed ({type(exc).__name__})") from None

    # -- reversals: a refund (zikoyAPI) or a same-day cancellation (CancelTrans) -----------------
    # Both move money back and, like a charge, are never retried blindly: a lost answer may still be
    # a reversal. Appended after the charge methods; the transport above is shared.

    def refund(self, transaction_id: str, *, amount: Money) -> Reversal:
        """action=zikoyAPI: refund `amount` (all or part) of Hyp transaction `transaction_id`.

        Hyp answers `Id` (the refund's own transaction), `CCode`, `ACode`. Typed errors as for a charge
        (`GatewayDeclined`, `GatewayRejected` e.g. CCode 33, more than the original); `GatewayNotAsked`
        when nothing was sent (credentials unreadable, Hyp's address refused the connection);
        `GatewayUnavailable` when the answer was lost: the refund may exist.
        """
        creds = self._reversal_credentials()
        params = {
            "action": "zikoyAPI",
            "Masof": creds.masof,
            "PassP": creds.passp,
            "TransId": _as_hyp_writes(transaction_id),
            "Amount": amount.hypay_amount(),
        }
        answer = self._reversal_call("zikoyAPI", params)
        protocol.raise_for_ccode(answer, "refund")
        refund_id = protocol.hyp_id(answer.fields.get("Id"))
        if protocol.same_hyp_id(refund_id, transaction_id):
            refund_id = None  # the refunded transaction's own Id echoed back (in any spelling): not the refund's
        if refund_id is None:
            # Approved, but without the refund's Id: the money moved and we cannot name it. A human confirms.
            raise GatewayUnavailable("Hypay refund approved without a transaction Id")
        return Reversal("refund", refund_id, answer.fields.get("ACode", ""), transaction_id)

    def cancel(self, transaction_id: str) -> Reversal:
        """action=CancelTrans: cancel Hyp transaction `transaction_id` in full, before it is transmitted
        (same business day, until 22:00 Israel time per Hyp's docs).

        Documented answer: `TransId=..&CCode=0&Hesh=..&ReversalStatus=777`; CCode 920 when it cannot be
        cancelled (already transmitted, or no such transaction): nothing moved, a refund may follow.
        """
        creds = self._reversal_credentials()
        trans_id = _as_hyp_writes(transaction_id)
        params = {"action": "CancelTrans", "Masof": creds.masof, "PassP": creds.passp, "TransId": trans_id}
        answer = self._reversal_call("CancelTrans", params)
        protocol.raise_for_ccode(answer, "cancel")
        if answer.fields.get("ReversalStatus") != "777":
            raise GatewayUnavailable("Hypay cancel approved without ReversalStatus 777")
        # Hyp documents no new Id for a cancellation; one is kept when an answer carries it.
        own_id = protocol.hyp_id(answer.fields.get("Id"))
        valid = own_id is not None and not protocol.same_hyp_id(own_id, transaction_id)
        return Reversal("cancel", own_id if valid else None, answer.fields.get("ACode", ""), transaction_id)

    def _reversal_credentials(self) -> HypayCredentials:
        try:
            return self._creds()
        except (GatewayError, ConfigurationError) as exc:
            raise GatewayNotAsked(f"Hypay not asked: credentials unavailable ({exc.code})") from None

    def _reversal_call(self, action: str, params: dict[str, str]) -> protocol.Answer:
        """Once, never retried. A connection Hyp's address refused (or a name that did not resolve) sent
        nothing: `GatewayNotAsked`. Anything else that fails (timeout, reset, an error page) may have
        reached Hyp: `GatewayUnavailable`, which the caller must treat as an unknown outcome."""
        try:
            return self._call(action, params, retry=False)
        except GatewayNotAsked:
            raise
        except GatewayUnavailable as exc:
            if exc.message.startswith("could not reach Hypay") and any(
                name in exc.message for name in _NOT_SENT_REASONS
            ):
                raise GatewayNotAsked(f"Hypay not asked: {exc.message}") from None
            raise


# The shortest attempt worth making at a call that moves no money (VERIFY, SIGN, getToken) when the invocation is near
# its end: with less left, Hyp is not asked ("not yet": the next delivery or retry asks again).
MIN_ATTEMPT_SECONDS = 1.0

# How long a yes of `credentials_accepted` is reused. It decides whether a callback that failed its check is a
# forgery (403) or ours (our KEY is off: "not yet", kept): the shorter, the smaller the window in which a KEY just
# rotated at Hyp turns genuine callbacks into "forgeries"; the longer, the fewer calls forged traffic causes.
CREDENTIALS_CHECK_REUSE_SECONDS = 5.0
# Hyp's codes that say our terminal's credentials were refused, by action (VERIFY's 902 is also "not genuine", and
# CancelTrans's 901 a permission the terminal lacks: neither says so), and how often they make the secret be read again.
_CREDENTIALS_REFUSED: dict[str, tuple[int, ...]] = {
    "SIGN": (901, 902),
    "soft": (901, 902),
    "getToken": (901, 902),
    "zikoyAPI": (901, 902),
    "CancelTrans": (902,),
}
CREDENTIALS_REFRESH_COOLDOWN_SECONDS = 30.0

# Connection failures that prove the request never left: refused by the address, or no address at all.
_NOT_SENT_REASONS = ("(ConnectionRefusedError)", "(gaierror)")


class Reversal(Record):
    """An approved refund or cancellation. `transaction_id` is Hyp's Id of the reversal itself (a refund
    has one; a cancellation's answer documents none), `original_id` the transaction it reverses."""

    method: str  # "refund" (zikoyAPI) | "cancel" (CancelTrans)
    transaction_id: str | None
    approval_code: str
    original_id: str


def _as_hyp_writes(transaction_id: str) -> str:
    """The Hyp transaction id to send for `transaction_id`, as Hyp writes it (no leading zero: our rows may keep the
    number as a callback spelled it first). Only a Hyp transaction id is ever sent: whatever a caller passes, nothing
    else reaches Hyp (`GatewayNotAsked`: nothing moved)."""
    number = protocol.hyp_number(transaction_id)
    if number is None:
        raise GatewayNotAsked("Hypay not asked: the transaction named is not a Hyp transaction id")
    return number


def _charge_from(answer: protocol.Answer) -> Charge:
    fields = answer.fields
    transaction_id = protocol.hyp_id(fields.get("Id"))
    if transaction_id is None:
        # Approved, but with no transaction Hyp could be asked about: the money may have moved, so the charge's
        # outcome is unknown (the caller sends the payment to review), never a charge recorded under a blank Id.
        raise GatewayUnavailable("Hypay charge: approved without a valid transaction Id")
    # The answer is read as the callbacks are: an amount we cannot read, or a Coin we do not sell in, is kept as such
    # (the charge then goes to review with its Id journaled), never taken for the price asked.
    raw_amount = fields.get("Amount", "")
    found = CURRENCY_OF_COIN.get(fields.get("Coin", "1") or "1")
    amount = Money.of(raw_amount, found or Currency.ILS) if protocol.AMOUNT.fullmatch(raw_amount) else None
    hesh = fields.get("Hesh", "")
    return Charge(
        transaction_id,
        fields.get("ACode", ""),
        amount,
        hesh if protocol.INVOICE_NUMBER.fullmatch(hesh) else None,  # as a callback's: only a number Hyp issued
        currency_known=found is not None,
    )


__all__ = [
    "DEFAULT_URL",
    "Charge",
    "Customer",
    "HypayClient",
    "HypayCredentials",
    "HypaySettings",
    "PaymentPage",
    "Reversal",
    "Token",
    "credentials_provider",
    "hypay_settings",
]
