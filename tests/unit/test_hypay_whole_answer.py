"""Hyp's whole answer must arrive within the call's timeout, not each of its bytes: an answer trickled a byte at a
time, or a name lookup that hangs, used to outlast the timeout (urllib's bounds each wait only) and the invocation
with it. Lambda then killed the function: a 500, and the outcome of a charge it had sent never stored."""

from __future__ import annotations

import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from payments.adapters import hypay as hypay_module
from payments.adapters.hypay import HypayClient, HypayCredentials, Token
from payments.domain.money import Money
from payments.errors import GatewayUnavailable
from tests.support.tls import authority, server_files

TIMEOUT = 0.5
# Far below what the trickle takes (ANSWER_BYTES × GAP ≈ 12 s) and far above the timeout: not a timing measure.
BOUND = 4.0
ANSWER_BYTES = 60
GAP = 0.2


@pytest.fixture
def trickling_hyp() -> Iterator[str]:
    """An HTTP server that answers 200 at once, then its body one byte every GAP seconds (each wait well within the
    socket's timeout)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                _read_request(conn)
                body = b"CCode=0&Id=12345678&Amount=10&ACode=0012345&" + b"x" * ANSWER_BYTES
                try:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
                    for i in range(len(body)):
                        if stop.wait(GAP):
                            return
                        conn.sendall(body[i : i + 1])
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/p/"
    stop.set()
    listener.close()


def _client(url: str) -> HypayClient:
    return HypayClient(
        lambda: HypayCredentials("0010131918", "k" * 20, "pass"), url=url, timeout_seconds=TIMEOUT, budget_seconds=2
    )


def _charge(client: HypayClient) -> None:
    client.charge_token(
        Token("1234567890123456789", 12, 2030), amount=Money.of("10.00", "ILS"), order="o-1", description="pack"
    )


def test_a_trickled_answer_to_a_charge_is_cut_at_the_timeout(trickling_hyp: str) -> None:
    started = time.monotonic()
    with pytest.raises(GatewayUnavailable, match="did not answer in time"):
        _charge(_client(trickling_hyp))
    assert time.monotonic() - started < BOUND


def test_a_trickled_answer_to_a_read_is_cut_at_the_timeout_each_attempt(trickling_hyp: str) -> None:
    started = time.monotonic()
    with pytest.raises(GatewayUnavailable, match="did not answer in time"):
        _client(trickling_hyp).get_token("12345678")
    assert time.monotonic() - started < BOUND


def test_a_name_lookup_that_hangs_is_cut_at_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    released = threading.Event()

    def hanging_lookup(*args: object, **kwargs: object) -> list[object]:
        released.wait(30)
        raise socket.gaierror("released")

    monkeypatch.setattr(socket, "getaddrinfo", hanging_lookup)
    started = time.monotonic()
    try:
        with pytest.raises(GatewayUnavailable, match="did not answer in time"):
            _charge(_client("http://hyp.invalid/p/"))
        assert time.monotonic() - started < BOUND
    finally:
        released.set()


def test_an_answer_in_time_and_a_refusal_pass_through_unchanged() -> None:
    """What the call's thread got (an answer, an error) is what the caller gets, in the caller's thread."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve(status: bytes, body: bytes) -> None:
        conn, _ = listener.accept()
        with conn:
            _read_request(conn)
            conn.sendall(
                b"HTTP/1.1 %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (status, len(body), body)
            )

    url = f"http://127.0.0.1:{listener.getsockname()[1]}/p/"
    try:
        threading.Thread(
            target=serve, args=(b"200 OK", b"Id=12345678&CCode=0&Amount=10&ACode=0012345"), daemon=True
        ).start()
        charge = _client(url).charge_token(
            Token("1234567890123456789", 12, 2030), amount=Money.of("10.00", "ILS"), order="o-1", description="pack"
        )
        assert charge.transaction_id == "12345678"
        threading.Thread(target=serve, args=(b"500 Internal Server Error", b"oops"), daemon=True).start()
        with pytest.raises(GatewayUnavailable, match="answered HTTP 500"):
            _charge(_client(url))
    finally:
        listener.close()


def test_a_call_given_up_stops_reading_at_once(trickling_hyp: str) -> None:
    # An abandoned call used to go on reading the trickle (holding the request: KEY, PassP, a token, a CVV) for as
    # long as Hyp trickled, past the invocation that made it
    with pytest.raises(GatewayUnavailable, match="did not answer in time"):
        _charge(_client(trickling_hyp))
    time.sleep(3 * GAP)
    assert [t for t in threading.enumerate() if t.name == "hypay-call" and t.is_alive()] == []


def test_a_call_given_up_during_its_name_lookup_never_sends_its_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """A charge given up (an unknown outcome: the payment goes to review) is not sent after all once the lookup
    returns: nothing reaches Hyp."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(2 * TIMEOUT)
    port = listener.getsockname()[1]
    released = threading.Event()
    real_lookup = socket.getaddrinfo

    def slow_lookup(host: str, *args: object, **kwargs: object) -> list:  # type: ignore[type-arg]
        released.wait(10)
        return real_lookup("127.0.0.1", *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", slow_lookup)
    try:
        with pytest.raises(GatewayUnavailable, match="did not answer in time"):
            _charge(_client(f"http://hyp.invalid:{port}/p/"))
        released.set()
        # The lookup returns, the connection is made and closed: not a byte of the request is sent
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(2 * TIMEOUT)
            assert conn.recv(65536) == b""
    finally:
        released.set()
        listener.close()


def _read_request(conn: socket.socket) -> bytes:
    """An HTTP request's head and its Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
        0,
    )
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


@pytest.fixture
def hyp_over_tls(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A TLS server for 127.0.0.1 under a throwaway CA, answering one approved charge per connection: (URL, CA file)."""
    ca_file, cert, key = server_files(tmp_path, authority())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(raw, server_side=True) as conn:
                    _read_request(conn)  # all of it: closing with some unread would reset the connection
                    body = b"Id=12345678&CCode=0&Amount=10&ACode=0012345"
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            except (OSError, ssl.SSLError):
                pass  # the client refused our certificate

    threading.Thread(target=serve, daemon=True).start()
    yield f"https://127.0.0.1:{listener.getsockname()[1]}/p/", ca_file
    stop.set()
    listener.close()


def test_hyp_is_reached_over_verified_tls_only(hyp_over_tls: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    url, ca_file = hyp_over_tls
    # A certificate no trusted authority issued is refused: nothing is sent
    with pytest.raises(GatewayUnavailable, match="SSLCertVerificationError"):
        _charge(_client(url))
    # Trusting that authority (as the system's store trusts Hyp's), the call goes through the same cut-off transport
    trusting = urllib.request.build_opener(
        hypay_module._HTTPHandler, hypay_module._HTTPSHandler(context=ssl.create_default_context(cafile=ca_file))
    )
    monkeypatch.setattr(hypay_module, "_opener", lambda: trusting)
    charge = _client(url).charge_token(
        Token("1234567890123456789", 12, 2030), amount=Money.of("10.00", "ILS"), order="o-1", description="pack"
    )
    assert charge.transaction_id == "12345678"
