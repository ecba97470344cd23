"""What an answer from Hyp may be: a field named once (or twice alike), a CCode of Hyp's digits, a few kilobytes.

A field named twice with different values used to be read last-one-wins: a charge or refund Hyp made, answered
`CCode=0&...&CCode=4`, was recorded as declined (money taken, the payment failed, and a retry charged again). A CCode
of `+0` or an Arabic-Indic zero was read by `int()` as an approval. An answer of megabytes was read whole, stored and
handed on (a page URL, a decline's message) past Lambda's 6 MB answer. Each is now an unknown outcome."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from payments.adapters.hypay import HypayClient, HypayCredentials, Token
from payments.domain import hypay as protocol
from payments.domain.money import Money
from payments.errors import GatewayDeclined, GatewayUnavailable

LONG = protocol.MAX_ANSWER_BYTES + 1


# -- the protocol ----------------------------------------------------------------------------------------------


def test_a_field_named_twice_with_different_values_is_an_unknown_outcome_naming_the_transaction() -> None:
    with pytest.raises(GatewayUnavailable, match="CCode twice") as caught:
        protocol.parse_answer(b"Id=12345678&CCode=0&Amount=10&CCode=4")
    assert caught.value.transaction_id == "12345678"


def test_an_id_named_twice_differently_names_no_transaction() -> None:
    with pytest.raises(GatewayUnavailable, match="Id twice") as caught:
        protocol.parse_answer(b"Id=12345678&CCode=0&Id=12345679")
    assert caught.value.transaction_id is None


def test_a_field_named_twice_is_named_only_when_its_name_could_carry_no_card_number() -> None:
    with pytest.raises(GatewayUnavailable) as caught:
        protocol.parse_answer(b"Id=12345678&CCode=0&5326105300985614=a&5326105300985614=b")
    assert caught.value.message == "Hypay answered a field twice, with different values"


def test_a_field_named_twice_alike_is_read_as_once() -> None:
    # The same value, whatever its spelling (percent-encoded or not): there is nothing to choose between
    answer = protocol.parse_answer(b"Id=12345678&CCode=0&CCode=%30")
    assert (answer.ccode, answer.fields["Id"]) == (0, "12345678")


@pytest.mark.parametrize("ccode", ["+0", " 0", "%2B0", "%200", "%D9%A0", "0000", "-0", "0x0", "1e2", ""])
def test_a_ccode_hyp_never_writes_is_no_code(ccode: str) -> None:
    answer = protocol.parse_answer(f"Id=12345678&CCode={ccode}&Amount=10".encode())
    assert answer.ccode is None
    with pytest.raises(GatewayUnavailable, match="without a CCode"):
        protocol.raise_for_ccode(answer, "charge")


@pytest.mark.parametrize("ccode", ["0", "4", "33", "999"])
def test_hyps_codes_are_read(ccode: str) -> None:
    assert protocol.parse_answer(f"CCode={ccode}".encode()).ccode == int(ccode)


def test_an_answer_longer_than_any_of_hyps_is_refused() -> None:
    body = b"Id=12345678&CCode=0&Amount=10&Fild3=" + b"a" * protocol.MAX_ANSWER_BYTES
    with pytest.raises(GatewayUnavailable, match="too long"):
        protocol.parse_answer(body)


def test_a_declines_message_is_kept_short() -> None:
    answer = protocol.parse_answer(b"Id=12345678&CCode=4&errMsg=" + b"x" * 5000)
    with pytest.raises(GatewayDeclined) as caught:
        protocol.raise_for_ccode(answer, "charge")
    assert len(caught.value.gateway_message or "") == protocol.MESSAGE_CHARS


# -- the transport: read only as far as needed, and a cut answer is still a cut answer --------------------------


def _serve(answer: Callable[[socket.socket], None]) -> Iterator[str]:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(4096)
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                while len(body) < length:
                    body += conn.recv(4096)
                with contextlib.suppress(OSError):
                    answer(conn)

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/p/"
    listener.close()


BODY = b"Id=12345678&CCode=0&Amount=10.00&ACode=0012345&Fild3=" + b"a" * LONG


def _declared(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))


def _chunked(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for i in range(0, len(BODY), 8192):
        chunk = BODY[i : i + 8192]
        conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    conn.sendall(b"0\r\n\r\n")


def _close_delimited(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n" + BODY)


def _cut(conn: socket.socket) -> None:
    # A short approval whose body ends before its declared length: cut, not complete
    body = b"Id=12345678&CCode=0&Amount=10.00&ACode=0012345"
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body) + 40, body))
    conn.shutdown(socket.SHUT_RDWR)


def _cut_long(conn: socket.socket) -> None:
    # A decline declared longer than any answer of Hyp's, ending after a few bytes: cut, not a decline
    body = b"Id=12345678&CCode=4&errMsg=declined"
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (protocol.MAX_ANSWER_BYTES + 5000, body))
    conn.shutdown(socket.SHUT_RDWR)


def _cut_chunk(conn: socket.socket) -> None:
    body = b"Id=12345678&CCode=4&errMsg=declined"
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s" % (len(body) + 40, body))
    conn.shutdown(socket.SHUT_RDWR)


@pytest.fixture(params=[_declared, _chunked, _close_delimited], ids=["content-length", "chunked", "until-close"])
def long_answer(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from _serve(request.param)


@pytest.fixture(params=[_cut, _cut_long, _cut_chunk], ids=["declared", "declared-too-long", "chunked"])
def cut_answer(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from _serve(request.param)


def _charge(url: str) -> object:
    client = HypayClient(lambda: HypayCredentials("0010131918", "k" * 20, "pass"), url=url, timeout_seconds=2)
    return client.charge_token(
        Token("1234567890123456789", 12, 2030), amount=Money.of("10.00", "ILS"), order="o-1", description="pack"
    )


def test_an_answer_of_any_framing_too_long_to_be_hyps_is_an_unknown_outcome(long_answer: str) -> None:
    with pytest.raises(GatewayUnavailable, match="too long"):
        _charge(long_answer)


def test_an_answer_cut_short_of_its_declared_length_is_still_cut(cut_answer: str) -> None:
    with pytest.raises(GatewayUnavailable, match="cut off"):
        _charge(cut_answer)
