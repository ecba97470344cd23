"""A Hyp call given up over TLS never lets its request out in the clear. `SSLSocket.shutdown` first drops the TLS
state (`_sslobj = None`) and only then shuts the socket down: a worker thread sending the request in that window went
through `SSLSocket.sendall`'s plain branch, the request (Masof, KEY, PassP, the card token) in cleartext on the
connection to Hyp. `_Call.abandon` shuts the plain socket down, which keeps the TLS state. The window is forced here
by pausing `SSLSocket.shutdown` between its two statements, were it called."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import sys
import threading
from pathlib import Path

from payments.adapters.hypay import _Call
from tests.support.tls import authority, server_files

SECRET = b"action=soft&Masof=0010131918&KEY=kkkkkkkkkk&PassP=pass&CC=1234567890123456789"


def test_abandoning_a_tls_call_never_lets_the_request_out_in_cleartext(tmp_path: Path) -> None:
    ca_path, cert, key = server_files(tmp_path, authority())
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        tls = server_ctx.wrap_socket(conn, server_side=True)  # handshake
        fd = tls.fileno()
        data = b""
        while chunk := os.read(fd, 65536):  # the raw bytes on the wire after the handshake
            data += chunk
        received.append(data)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    client_ctx = ssl.create_default_context(cafile=str(ca_path))
    sock = client_ctx.wrap_socket(socket.create_connection(listener.getsockname()), server_hostname="127.0.0.1")
    call = _Call()
    call.sockets.append(sock)  # as `_refuse_if_abandoned` does once connected, the call not abandoned yet

    at_window, sent = threading.Event(), threading.Event()

    def worker_sends() -> None:  # http.client sending the request, having passed the abandoned check
        at_window.wait(5)
        with contextlib.suppress(OSError):
            sock.sendall(SECRET)
        sent.set()

    def tracer(frame, event, arg):  # noqa: ANN001, ANN202 - pause abandon() between the two statements of shutdown
        in_shutdown = frame.f_code is ssl.SSLSocket.shutdown.__code__ and frame.f_locals.get("self") is sock
        if event == "line" and in_shutdown and frame.f_code.co_firstlineno + 3 == frame.f_lineno:
            at_window.set()  # between `self._sslobj = None` and `super().shutdown(how)`
            sent.wait(5)
        return tracer

    threading.Thread(target=worker_sends, daemon=True).start()
    sys.settrace(tracer)
    try:
        call.abandon()  # the caller gives up at its timeout
    finally:
        sys.settrace(None)
    sock.close()
    server.join(5)
    assert received and SECRET not in received[0], received
