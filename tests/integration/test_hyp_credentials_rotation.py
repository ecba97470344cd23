"""Hyp's credentials rotated (the portal, then the secret) under warm functions. The Hyp secret was read again only
when its cached copy expired (SecretCacheSeconds, 300 s by default): every sale, saved-card charge and callback was
answered 503 in every warm environment until then. Hyp's 901/902 (our credentials refused) now makes the next request
read the secret again (at most once in 30 s), before anything is sent; a payment page is signed again at once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from ops.hypay_simulator import PUBLIC_TEST_TERMINAL_KEY, PUBLIC_TEST_TERMINAL_MASOF, PUBLIC_TEST_TERMINAL_PASSP
from payments.adapters import secrets
from tests.support.api import reset_function_state
from tests.support.payments import CALLBACK, CREATE, CVV, PRO, STARTER, Env, post

NEW_PASSP = "rotated-PassP-0123456789"


@pytest.fixture
def hyp_secret(env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[object, str]]:
    from payments.settings import hypay_settings

    with mock_aws():
        client = boto3.client("secretsmanager", region_name="eu-west-1")
        value = {
            "Masof": PUBLIC_TEST_TERMINAL_MASOF,
            "KEY": PUBLIC_TEST_TERMINAL_KEY,
            "PassP": PUBLIC_TEST_TERMINAL_PASSP,
        }
        arn = client.create_secret(Name="payments/prod/hyp-rotation", SecretString=json.dumps(value))["ARN"]
        monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
        monkeypatch.setenv("HYPAY_SECRET_ARN", arn)
        hypay_settings.cache_clear()
        secrets._secrets.cache_clear()
        reset_function_state(CREATE)
        yield client, arn
        hypay_settings.cache_clear()
        secrets._secrets.cache_clear()
        reset_function_state(CREATE)
        reset_function_state(CALLBACK)


def _rotate_passp(env: Env, client: object, arn: str) -> None:
    env.sim.terminals[PUBLIC_TEST_TERMINAL_MASOF].passp = NEW_PASSP  # the portal
    value = {"Masof": PUBLIC_TEST_TERMINAL_MASOF, "KEY": PUBLIC_TEST_TERMINAL_KEY, "PassP": NEW_PASSP}
    client.put_secret_value(SecretId=arn, SecretString=json.dumps(value))  # type: ignore[attr-defined]


def test_a_payment_page_after_a_passp_rotation_needs_no_cold_start(env: Env, hyp_secret: tuple[object, str]) -> None:
    client, arn = hyp_secret
    # Given a warm create_payment (it read the Hyp secret)
    assert post({"credit_pack_id": STARTER}, key="before-rotation").status == 201
    # When the PassP is rotated: in Hyp's portal, then in the secret (the documented order)
    _rotate_passp(env, client, arn)
    # Then the next sale works: Hyp's 902 makes the function read the secret again and sign the page again
    answer = post({"credit_pack_id": STARTER}, key="after-rotation")
    assert answer.status == 201, answer.body
    assert env.sim.calls.count("SIGN") == 3  # before, refused, signed


def test_a_saved_card_charge_after_a_passp_rotation_needs_no_cold_start(
    env: Env, saved_card: str, hyp_secret: tuple[object, str]
) -> None:
    client, arn = hyp_secret
    assert post({"credit_pack_id": STARTER}, key="warm").status == 201
    _rotate_passp(env, client, arn)
    # The first charge after the rotation is refused (902: nothing charged), answered "not yet" ...
    first = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="saved-after-rotation")
    assert first.status == 503, first.body
    # ... and its retry, with the secret read again before anything is sent, charges
    answer = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="saved-after-rotation")
    assert answer.status == 201, answer.body
    # and charged once
    assert len([t for t in env.sim.transactions.values() if t.order == answer.json["payment_id"]]) == 1


NEW_KEY = "rotated-KEY-0123456789abcdef"


def test_a_callback_signed_with_the_new_key_after_a_rotation_needs_no_cold_start(
    env: Env, hyp_secret: tuple[object, str]
) -> None:
    from tests.integration.test_hypay_callback import buy, notify, pay

    client, arn = hyp_secret
    reset_function_state(CALLBACK)
    first, second = buy(env, key="first"), buy(env, key="second")
    # Given a warm callback function (it read the Hyp secret for a delivery)
    assert notify(pay(env, first).redirect_query).status == 200
    paid = pay(env, second)  # paid at the moment of the rotation: Hyp signs its redirect with the new KEY
    # When the KEY and PassP are rotated as docs/integration.md says: the portal, then the secret (old KEY kept)
    _rotate_key_and_passp(env, client, arn)
    # Then a payment made now (its callback signed with the new KEY) is "not yet" on its first delivery (kept: the
    # cached KEY fails, and Hyp refuses the cached PassP) and settled on the next: the secret was read again
    from ops.hypay_simulator import redirect_sign
    from payments.domain import hypay as protocol

    pairs = protocol.split_raw_query(paid.redirect_query)
    sign = redirect_sign(dict(pairs), NEW_KEY)
    signed = "&".join(f"{k}={sign if k == 'Sign' else v}" for k, v in pairs)
    assert notify(signed).status == 503
    answer = notify(signed)
    assert answer.status == 200, answer.body
    assert env.status(second["payment_id"]) == "completed"


def secrets_manager_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets Manager unreachable from now on (its client fails every call: what Powertools has cached still works)."""
    from botocore.exceptions import EndpointConnectionError

    from payments.adapters import secrets

    def unreachable(**kwargs: object) -> object:
        raise EndpointConnectionError(endpoint_url="https://secretsmanager.eu-west-1.amazonaws.com")

    monkeypatch.setattr(secrets._secrets().provider.client, "get_secret_value", unreachable)


def _rotate_key_and_passp(env: Env, client: Any, arn: str) -> None:
    """KEY and PassP rotated as docs/integration.md says: in Hyp's portal, then in the secret (the old KEY kept as
    PreviousKEY)."""
    terminal = env.sim.terminals[PUBLIC_TEST_TERMINAL_MASOF]
    terminal.key, terminal.passp = NEW_KEY, NEW_PASSP
    value = {
        "Masof": PUBLIC_TEST_TERMINAL_MASOF,
        "KEY": NEW_KEY,
        "PassP": NEW_PASSP,
        "PreviousKEY": PUBLIC_TEST_TERMINAL_KEY,
    }
    client.put_secret_value(SecretId=arn, SecretString=json.dumps(value))


def _paid_across_a_rotation(env: Env, client: Any, arn: str, monkeypatch: pytest.MonkeyPatch, mode: str) -> Any:
    """A warm callback function (in `mode`) holding the old credentials, the rotation done as docs/integration.md says
    (the portal, then the secret, the old KEY kept as PreviousKEY), and a payment paid since (Hyp signs its redirect
    with the new KEY): the payment and Hyp's transaction."""
    from payments.adapters import secrets
    from payments.settings import callback_settings
    from tests.integration.test_hypay_callback import buy, notify, pay

    monkeypatch.setenv("HYPAY_VERIFY_MODE", mode)
    callback_settings.cache_clear()
    reset_function_state(CALLBACK)
    assert notify(pay(env, buy(env, key="first")).redirect_query).status == 200
    # Each Lambda function is its own process with its own secret cache; in this test process create_payment and
    # hypay_callback share payments.adapters.secrets._secrets(): the callback's copy is saved here, put back below.
    callback_cache = (dict(secrets._secrets().asked), dict(secrets._secrets().held))
    _rotate_key_and_passp(env, client, arn)
    secrets._secrets().asked.clear()  # create_payment (another environment) reads the new secret
    second = buy(env, key="second")
    paid = pay(env, second)
    secrets._secrets().asked.update(callback_cache[0])  # the callback environment still holds the old credentials
    secrets._secrets().held.update(callback_cache[1])
    return second, paid


def test_verify_mode_a_genuine_callback_right_after_a_rotation_is_not_called_forged(
    env: Env, hyp_secret: tuple[object, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.integration.test_hypay_callback import notify

    client, arn = hyp_secret
    second, paid = _paid_across_a_rotation(env, client, arn, monkeypatch, "verify")
    # Its notify: VERIFY with the cached (old) credentials answers 902, and so does the check of those credentials: "not
    # yet" (kept), never "forged" (a check that read the secret again in the middle, and passed with the new
    # credentials, called it forged: 403, and Hyp stops sending it).
    answer = notify(paid.redirect_query)
    assert answer.status != 403, "a genuine, paid callback was called forged"
    assert answer.status in (200, 503), answer.body
    # Hyp stops sending a notify answered 403: the paid transaction must have left a row by now
    kept = env.rows("SELECT count(*) FROM hypay_unverified_callbacks WHERE hypay_id = :i", i=paid.id)[0][0]
    assert env.status(second["payment_id"]) == "completed" or kept == 1
    # Whatever the first answer, the paid transaction leaves a row and is settled on a later delivery
    assert notify(paid.redirect_query).status == 200
    assert env.status(second["payment_id"]) == "completed"


def test_verify_mode_a_forged_callback_during_a_secrets_manager_outage_is_refused_and_writes_nothing(
    env: Env, hyp_secret: tuple[object, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from payments.settings import callback_settings
    from tests.integration.test_callback_attacks import unpaid_claim
    from tests.integration.test_hypay_callback import buy, forge, notify, pay

    monkeypatch.setenv("HYPAY_VERIFY_MODE", "verify")
    callback_settings.cache_clear()
    reset_function_state(CALLBACK)
    first, second = buy(env, key="first"), buy(env, key="second")
    # A warm callback function: the Hyp secret read and cached (valid for SecretCacheSeconds, Hyp accepts it)
    assert notify(pay(env, first).redirect_query).status == 200
    # Secrets Manager becomes unreachable (the cached credentials are still good for minutes)
    secrets_manager_outage(monkeypatch)
    # A forged success for the unpaid payment: Hyp's VERIFY says 902 (not genuine), and Hyp accepts our cached
    # credentials, so it is a forgery: 403, nothing written (VERIFY's 902 is no refusal of our credentials: taken as
    # one, the secret was read again, and the outage made the forgery "not yet", kept).
    forged = forge(unpaid_claim(second["payment_id"]), key="not-our-key-0123456789")
    answer = notify(forged)
    assert answer.status == 403, answer.body
    assert env.rows("SELECT count(*) FROM hypay_unverified_callbacks") == [[0]]


@pytest.mark.parametrize(
    ("mode", "step"), [("verify", "verify_redirect"), ("hmac", "signed_text"), ("both", "signed_text")]
)
def test_a_check_uses_one_set_of_credentials_even_when_their_cached_copy_ages_out_midway(
    env: Env, hyp_secret: tuple[object, str], monkeypatch: pytest.MonkeyPatch, mode: str, step: str
) -> None:
    """The cached secret reaching its max age between two steps of one check (VERIFY may take 12 s) made the later
    step read the new credentials: the Sign or VERIFY failed with the old ones, the credentials check passed with the
    new ones, and a genuine paid callback was called forged (403, no row)."""
    from payments.adapters import secrets
    from payments.adapters.hypay import HypayClient
    from tests.integration.test_hypay_callback import notify

    client, arn = hyp_secret
    second, paid = _paid_across_a_rotation(env, client, arn, monkeypatch, mode)
    original = getattr(HypayClient, step)

    def then_aged_out(self: HypayClient, raw: str) -> Any:
        answer = original(self, raw)  # with the cached (old) credentials
        for key in list(secrets._secrets().asked):
            secrets._secrets().asked[key] -= 10_000  # the copy's max age ends right after
        return answer

    monkeypatch.setattr(HypayClient, step, then_aged_out)
    answer = notify(paid.redirect_query)
    kept = env.rows("SELECT count(*) FROM hypay_unverified_callbacks WHERE hypay_id = :i", i=paid.id)[0][0]
    assert answer.status == 503 and kept == 1, answer.body
    assert env.status(second["payment_id"]) == "pending"
