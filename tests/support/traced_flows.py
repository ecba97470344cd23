"""The payment flows with tracing on, as in Lambda: run as a program by the trace test.

Lambda's environment (LAMBDA_TASK_ROOT, _X_AMZN_TRACE_ID, AWS_XRAY_DAEMON_ADDRESS) comes from the
caller, so Powertools' Tracer and the X-Ray SDK behave as deployed and send every subsegment to
the address the test listens on.
"""

from __future__ import annotations

import os

from ops.hypay_simulator import APPROVING_CARD, HypaySimulator, public_test_terminal
from tests.support.api import invoke
from tests.support.payments import CALLBACK, CVV, PRO, STARTER, post

ADMIN_TOKEN = "test-admin-token-0123456789"


def main() -> None:
    sim = HypaySimulator([public_test_terminal()]).start()
    os.environ["HYPAY_URL"] = sim.url
    os.environ["ADMIN_API_TOKEN"] = ADMIN_TOKEN
    try:
        # A hosted-page payment, card kept; the browser's redirect and the notification
        created = post({"credit_pack_id": STARTER, "save_card": True}, key="traced-1")
        assert created.status == 201, created.body
        paid = sim.pay(created.json["payment_url"], APPROVING_CARD)
        returned = invoke(CALLBACK, "GET", f"/hypay/return?{paid.redirect_query}", headers={"accept": "text/html"})
        assert returned.status == 302 and "failure" not in returned.headers["location"], returned.headers
        notified = invoke(
            CALLBACK,
            "POST",
            "/hypay/notify",
            body=paid.redirect_query,
            source_ip="198.51.100.20",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert notified.status == 200, notified.body
        # A forged redirect: rejected
        forged = paid.redirect_query.replace("CCode=0", "CCode=0&Amount=1", 1)
        invoke(CALLBACK, "GET", f"/hypay/return?{forged}", headers={"accept": "text/html"})
        # The saved card charged with a CVV, approved then declined; a bad CVV refused
        charged = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="traced-2")
        assert charged.status == 201 and charged.json["status"] == "completed", charged.body
        sim.faults.add("soft", "ccode", ccode=4)
        declined = post({"credit_pack_id": PRO, "saved_card": True, "cvv": CVV}, key="traced-3")
        assert declined.status == 402, declined.body
        post({"credit_pack_id": PRO, "saved_card": True, "cvv": "12x"}, key="traced-4")
        # The admin endpoint, with the token and with a wrong one
        for token in (ADMIN_TOKEN, "wrong-admin-token-000000"):
            invoke(
                "CleanupFunction", "POST", "/admin/cleanup-idempotency", headers={"authorization": f"Bearer {token}"}
            )
    finally:
        sim.stop()


if __name__ == "__main__":
    main()
