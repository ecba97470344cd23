"""The database `make migrate` names before it works: host, port and name, never a piece of the password."""

from __future__ import annotations

import pytest

from ops.migrate import _target


def test_the_target_is_host_port_and_name() -> None:
    assert _target("postgresql://admin:s3cret@db.example.com:6543/payments", local=False) == (
        "db.example.com:6543/payments"
    )
    assert "local make run database" in _target("postgresql://postgres@/postgres?host=/tmp/x&port=5432", local=True)


@pytest.mark.parametrize(
    "url",
    [
        # a password holding a raw '/', '?' or '#' (not percent-encoded) that begins like a port
        "postgresql://admin:4242/s3cretPW@db.example.com/payments",
        "postgresql://admin:4242?s3cretPW@db.example.com/payments",
        "postgresql://admin:4242#s3cretPW@db.example.com/payments",
    ],
)
def test_the_printed_target_never_holds_any_of_the_password(url: str) -> None:
    password = url.split("://admin:", 1)[1].rsplit("@", 1)[0]
    printed = _target(url, local=False)
    pieces = [p for p in password.replace("?", "/").replace("#", "/").split("/") if p]
    assert not any(piece in printed for piece in pieces), printed


def test_a_unix_socket_is_named_by_its_path_alone() -> None:
    said = _target("postgresql://postgres@/payments?host=/tmp/x&port=5433", local=False)
    assert said == "/tmp/x/.s.PGSQL.5433/payments", said
