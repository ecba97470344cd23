"""The local stand-in for Supabase Auth: signing keys, the JWKS, and access tokens, in each JWT mode.

`hs256` signs with a local shared secret (the legacy Supabase setup), `rs256` / `es256` with a generated
RSA / P-256 key whose public half is served as a JWKS by the local API, the way Supabase publishes it at
`<project>/auth/v1/.well-known/jwks.json`. Generated keys are kept in `.local/auth/` so that tokens minted
by `python -m ops.token` in another terminal verify against a running `make run`. Local runs only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

Mode = Literal["hs256", "rs256", "es256"]
MODES: tuple[Mode, ...] = ("hs256", "rs256", "es256")
DEFAULT_MODE: Mode = "rs256"  # the JWT authorizer: API Gateway's 401 for a bad token, as before

LOCAL_JWT_SECRET = "local-development-jwt-secret-not-for-production"  # noqa: S105 - local only, printed at start
LOCAL_JWT_ISSUER = "http://127.0.0.1:3000/auth/v1"
LOCAL_JWT_AUDIENCE = "authenticated"
JWKS_PATH = "/auth/v1/.well-known/jwks.json"
OPENID_CONFIGURATION_PATH = "/auth/v1/.well-known/openid-configuration"
KEYS_DIR = Path(__file__).resolve().parent.parent / ".local" / "auth"
TOKEN_TTL_SECONDS = 7 * 24 * 3600


def mode_from(value: str | None) -> Mode:
    """`value` (e.g. AUTH_MODE) as a mode; the default when empty; ValueError when unknown."""
    chosen = (value or DEFAULT_MODE).strip().lower()
    if chosen not in MODES:
        raise ValueError(f"unknown auth mode {value!r}: one of {', '.join(MODES)}")
    return cast(Mode, chosen)


def _new_key(mode: Mode) -> Any:
    if mode == "rs256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _pem(key: Any) -> bytes:
    return cast(
        bytes,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


def _kept_key(mode: Mode, keys_dir: Path) -> Any:
    """The key of `mode` in `keys_dir`, created once (atomically: two processes starting together agree)."""
    path = keys_dir / f"{mode}.pem"
    if not path.exists():
        keys_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=keys_dir, prefix=f".{mode}-")  # 0600
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(_pem(_new_key(mode)))
            with contextlib.suppress(FileExistsError):  # another process got there first: theirs is the key
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


@dataclass(frozen=True)
class LocalAuth:
    """One mode's issuer: it mints tokens, publishes the JWKS, and configures the local authorizer."""

    mode: Mode
    private_key: Any = field(default=None, repr=False)  # RSA / EC for rs256 / es256
    secret: str = field(default=LOCAL_JWT_SECRET, repr=False)
    issuer: str = LOCAL_JWT_ISSUER
    audience: str = LOCAL_JWT_AUDIENCE

    @classmethod
    def for_mode(cls, mode: Mode = DEFAULT_MODE, keys_dir: Path | None = None) -> LocalAuth:
        """The mode with its kept key (`.local/auth/`, or LOCAL_AUTH_DIR), as `make run` and `ops.token` use it."""
        if mode == "hs256":
            return cls(mode)
        where = keys_dir or Path(os.environ.get("LOCAL_AUTH_DIR") or KEYS_DIR)
        return cls(mode, private_key=_kept_key(mode, where))

    @classmethod
    def generated(cls, mode: Mode, **kwargs: Any) -> LocalAuth:
        """The mode with a fresh in-memory key (tests)."""
        return cls(mode, private_key=None if mode == "hs256" else _new_key(mode), **kwargs)

    @property
    def algorithm(self) -> str:
        return self.mode.upper()

    @property
    def kid(self) -> str | None:
        """The key id: a digest of the public key, so it changes with the key."""
        if self.private_key is None:
            return None
        der = self.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(der).hexdigest()[:16]

    def public_key_pem(self) -> bytes:
        return cast(
            bytes,
            self.private_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )

    def token(
        self,
        sub: str,
        *,
        email: str | None = None,
        role: str = "authenticated",
        ttl_seconds: int = TOKEN_TTL_SECONDS,
        **claims: Any,
    ) -> str:
        """A Supabase-shaped access token for `sub`, signed as this mode's issuer signs."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": self.audience,
            "exp": now + ttl_seconds,
            "iat": now,
            "role": role,
            "aal": "aal1",
            "session_id": hashlib.sha256(f"{sub}{now}".encode()).hexdigest()[:32],
            "is_anonymous": False,
            "app_metadata": {"provider": "email", "providers": ["email"]},
            "user_metadata": {},
        }
        if email:
            payload["email"] = email
        payload.update(claims)
        if self.mode == "hs256":
            return jwt.encode(payload, self.secret, algorithm="HS256")
        return jwt.encode(payload, self.private_key, algorithm=self.algorithm, headers={"kid": self.kid})

    def jwks(self) -> dict[str, Any]:
        """The public keys as Supabase publishes them ({"keys": []} for hs256: the secret is never published)."""
        if self.private_key is None:
            return {"keys": []}
        algorithm = RSAAlgorithm if self.mode == "rs256" else ECAlgorithm
        key = algorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        return {"keys": [{**key, "kid": self.kid, "alg": self.algorithm, "use": "sig", "key_ops": ["verify"]}]}

    def jwks_json(self) -> bytes:
        return json.dumps(self.jwks()).encode()

    def template_parameters(self) -> dict[str, str]:
        """The template parameters a deployment of this mode would have."""
        return {"JwtMode": self.mode, "JwtIssuer": self.issuer, "JwtAudience": self.audience}

    def authorizer_environment(self, jwks_url: str) -> dict[str, str]:
        """The Lambda authorizer's environment, as the template sets it (the secret from the environment)."""
        env = {"JWT_MODE": self.mode, "JWT_ISSUER": self.issuer, "JWT_AUDIENCE": self.audience}
        if self.mode == "hs256":
            env["JWT_SECRET"] = self.secret
        else:
            env["JWKS_URL"] = jwks_url
        return env
