"""A loopback TCP listener forwarding to the test server's Unix socket.

It gives tests a TCP database endpoint (what RDS, RDS Proxy and Supabase look like), a way to
cut every connection abruptly, as an idle-timeout in a proxy or a NAT would, with no goodbye
message from the server, and (`drop_notices`) a pooler that does not pass the server's notices on. Once `silent`, it
takes new connections and never answers them (RDS Proxy waiting to borrow a connection, a new primary still starting);
`freeze_all()` stops the open connections' traffic without closing them (a partition).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

NOTICE = ord("N")  # NoticeResponse: a type byte and a length like every message after the start-up


class TcpProxy:
    def __init__(self, unix_path: str, *, drop_notices: bool = False) -> None:
        """`drop_notices`: the server's NoticeResponse messages never reach the client (everything else does). Only
        for plain connections (no SSLRequest, whose one-byte answer has no length)."""
        self._unix_path = unix_path
        self._drop_notices = drop_notices
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._closed = False
        self.silent = False
        self._frozen: set[int] = set()  # ids of the client sockets whose traffic is held (`freeze_all`)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.silent:
                with self._lock:
                    self._pairs.append((client, client))  # held open, nothing forwarded
                continue
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self._unix_path)
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pipe, args=(client, upstream, client), daemon=True).start()
            back = (upstream, client, client, self._drop_notices)
            threading.Thread(target=self._pipe, args=back, daemon=True).start()

    def freeze_all(self) -> None:
        """The open connections carry nothing more, and stay open (a partition); `thaw` ends it."""
        with self._lock:
            self._frozen = {id(client) for client, _ in self._pairs}

    def thaw(self) -> None:
        self._frozen = set()

    def _pipe(
        self, src: socket.socket, dst: socket.socket, client: socket.socket, without_notices: bool = False
    ) -> None:
        """What `src` sends, to `dst`; `without_notices`: the server's messages, whole, but for its notices."""
        pending = b""
        try:
            while data := src.recv(65536):
                while id(client) in self._frozen:
                    time.sleep(0.05)  # held: nothing forwarded, nothing closed
                if without_notices:
                    data, pending = _but_notices(pending + data)
                if data:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut_all(self) -> None:
        """Drop every open connection at once, without a word to either side."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, upstream in pairs:
            for s in (client, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self._closed = True
        self.cut_all()
        self._listener.close()


def _but_notices(data: bytes) -> tuple[bytes, bytes]:
    """(the whole messages of `data` but its notices, the incomplete message left at its end)."""
    out = bytearray()
    while len(data) >= 5:
        size = 1 + struct.unpack_from("!i", data, 1)[0]
        if len(data) < size:
            break
        if data[0] != NOTICE:
            out += data[:size]
        data = data[size:]
    return bytes(out), data
