"""Input never steers a request to Hyp: the web app's stored names, emails and pack names, and a callback's fields,
go out as values only, each parameter once, to the configured URL."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import pytest

from ops.seed import DEMO_USER_ID
from payments.adapters import hypay
from tests.support.payments import CVV, STARTER, Env, post

EVIL_NAME = "Eve &KEY=stolen&Masof=0000000001 %26PassP%3Dx\r\nX-Injected: 1;Amount=0.01"
EVIL_EMAIL = "e%26Amount%3D0.01@x.test&Order=evil"
EVIL_PACK = "Starter&Amount=0.01&Coin=2\n"


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[tuple[str, str]]]]:
    seen: list[tuple[str, list[tuple[str, str]]]] = []
    real = hypay._opener()

    class Recording:
        def open(self, request: Any, timeout: float) -> Any:
            seen.append((request.full_url, parse_qsl(request.data.decode(), keep_blank_values=True)))
            return real.open(request, timeout=timeout)

    monkeypatch.setattr(hypay, "_opener", lambda: Recording())
    return seen


def _names(pairs: list[tuple[str, str]]) -> list[str]:
    return [n for n, _ in pairs]


def test_profile_and_pack_fields_are_values_only(env: Env, saved_card: str, sent: list) -> None:
    env.rows(
        "UPDATE profiles SET full_name = :n, email = :e WHERE id = :u::uuid", n=EVIL_NAME, e=EVIL_EMAIL, u=DEMO_USER_ID
    )
    env.rows("UPDATE credit_packs SET name = :n WHERE id = :p::uuid", n=EVIL_PACK, p=STARTER)
    page = post({"credit_pack_id": STARTER}, key="steer-page")
    assert page.status == 201, page.body
    charge = post({"credit_pack_id": STARTER, "saved_card": True, "cvv": CVV}, key="steer-charge")
    assert charge.status in (201, 402), charge.body
    assert sent, "nothing sent"
    for url, pairs in sent:
        assert url == env.sim.url
        names = _names(pairs)
        assert len(names) == len(set(names)), names  # no parameter added twice
        fields = dict(pairs)
        assert fields.get("Masof") == "0010131918", fields.get("Masof")
        assert "X-Injected" not in names
        if fields.get("action") in ("APISign", "soft") and "Order" in fields:
            first, _, last = EVIL_NAME.partition(" ")
            assert fields["ClientName"] == first and last.startswith(fields["ClientLName"])
            assert fields["Amount"] == "49.90" and fields["Coin"] == "1"
            assert fields["Info"] == EVIL_PACK


@pytest.mark.parametrize(
    "value",
    ["a;KEY=x", "a%26KEY%3Dx", "a=KEY", "x\r\nHost: evil", "%zz&", "\u05d0;Masof=1", "a%00b", "a+b%2B", "a#b", "'\"<>"],
)
def test_verify_request_is_our_head_and_redirect_fields_only(value: str) -> None:
    from payments.domain import hypay as protocol

    raw = f"Id=1&CCode=0&Amount=1&ACode=1&Order=o&Fild1={value}&Fild2=&Fild3=&Sign={'a' * 64}&Hesh=1"
    fields = "&".join(f"{n}={v}" for n, v in protocol.verify_fields(raw))
    pairs = parse_qsl("action=APISign&What=VERIFY&Masof=0010131918&KEY=k&PassP=p&" + fields, keep_blank_values=True)
    names = [n for n, _ in pairs]
    assert names.count("KEY") == 1 and names.count("Masof") == 1 and names.count("What") == 1, names
    assert set(names) <= protocol.REDIRECT_FIELDS | {"action", "What", "Masof", "KEY", "PassP"}, names
