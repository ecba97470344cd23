"""Signing the web app's tokens as Supabase does (and as attackers try to): issuers per mode, a JWKS server
that counts its fetches, and tokens no library would sign (`alg: none`, HS256 keyed with a public key)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ops.local_auth import LocalAuth

USER = "0e000000-0000-4000-8000-00000000a001"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(payload: dict[str, Any], **header: Any) -> str:
    """`alg: none`: a token with no signature at all."""
    head = {"alg": "none", "typ": "JWT", **header}
    return f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(payload).encode())}."


def hs256_with(key: bytes, payload: dict[str, Any], **header: Any) -> str:
    """HS256 keyed with any bytes, e.g. the issuer's public key PEM (PyJWT refuses to sign that)."""
    head = {"alg": "HS256", "typ": "JWT", **header}
    signing_input = f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def claims(auth: LocalAuth, **changes: Any) -> dict[str, Any]:
    """A valid Supabase payload from `auth`, with `changes` (None removes a claim)."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": auth.issuer,
        "sub": USER,
        "aud": auth.audience,
        "exp": now + 3600,
        "iat": now,
        "role": "authenticated",
        "email": "user@example.com",
        "session_id": str(uuid.uuid4()),
        "is_anonymous": False,
        "aal": "aal1",
        "app_metadata": {"provider": "email"},
    }
    for name, value in changes.items():
        if value is None:
            payload.pop(name, None)
        else:
            payload[name] = value
    return payload


def sign(auth: LocalAuth, payload: dict[str, Any], **header: Any) -> str:
    """`payload` signed as `auth` signs (its key and kid), header fields overridable."""
    import jwt

    if auth.mode == "hs256":
        return jwt.encode(payload, auth.secret, algorithm="HS256", headers=header or None)
    return jwt.encode(payload, auth.private_key, algorithm=auth.algorithm, headers={"kid": auth.kid, **header})


class JwksServer:
    """Publishes `keys` (a JWKS document, replaceable) on 127.0.0.1 and counts the fetches."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.fetches = 0
        self.status = 200
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                return

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                server.fetches += 1
                body = json.dumps(server.document).encode()
                self.send_response(server.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}/auth/v1/.well-known/jwks.json"

    def start(self) -> JwksServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()


@contextmanager
def jwks_server(*issuers: LocalAuth) -> Iterator[JwksServer]:
    keys = [key for auth in issuers for key in auth.jwks()["keys"]]
    server = JwksServer({"keys": keys}).start()
    try:
        yield server
    finally:
        server.stop()
