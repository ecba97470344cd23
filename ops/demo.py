"""The demo web app `make run` serves at /demo: it stands in for the real web app.

It shows the demo user's credits and the active credit packs; "Buy" calls `POST /payments` with the
user's token and a fresh `Idempotency-Key`, then sends the browser to the returned payment page. Hyp
(the simulator) redirects to `/hypay/return`, which sends the browser to `/demo/result`, where the
payment's status (`GET /payments/{id}`) and the new balance are shown. Its own JSON (`/demo/api/state`)
reads the database directly, as the web app reads its Supabase tables.
"""

from __future__ import annotations

import html
import json
from decimal import Decimal
from typing import Any

from payments.adapters.db import Database, bind
from payments.settings import DatabaseSettings

PREFIX = "/demo"
_HEADERS = {
    "cache-control": "no-store",
    "content-security-policy": "default-src 'self'; connect-src 'self'; img-src 'self' data:",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="demo-token" content="{token}">
<title>Credits - demo web app</title>
<link rel="stylesheet" href="/demo/app.css"></head>
<body>
<header><h1>Transcription credits</h1><p>Signed in as <strong id="user">...</strong> &middot;
balance <strong id="credits">...</strong> credits</p></header>
<main>
<section id="shop"><h2>Credit packs</h2><ul id="packs"></ul></section>
<section id="result" hidden><h2>Your payment</h2>
<p>Status: <strong id="result-status">...</strong></p>
<p id="result-detail"></p>
<p><a href="/demo/">Back to the shop</a></p></section>
<p id="error" role="alert"></p>
</main>
<script src="/demo/app.js"></script>
</body></html>
"""

_CSS = """body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;color:#222}
header{border-bottom:1px solid #ddd;margin-bottom:1rem}ul{list-style:none;padding:0}
li.pack{display:flex;justify-content:space-between;align-items:center;border:1px solid #ddd;border-radius:6px;
padding:.8rem 1rem;margin:.5rem 0}button{padding:.5rem 1.2rem;font-size:1rem;cursor:pointer}
#result-status.completed{color:#15803d}#result-status.failed,#result-status.expired{color:#b91c1c}
#error{color:#b91c1c}"""

_SCRIPT = """'use strict';
const TOKEN = document.querySelector('meta[name="demo-token"]').content;
const auth = {'Authorization': 'Bearer ' + TOKEN};
const $ = (id) => document.getElementById(id);

async function loadState() {
  const state = await (await fetch('/demo/api/state')).json();
  $('user').textContent = state.user.email;
  $('credits').textContent = state.user.credits;
  return state;
}

function showError(text) { $('error').textContent = text; }

async function buy(packId, button) {
  button.disabled = true;
  const response = await fetch('/payments', {
    method: 'POST',
    headers: {...auth, 'Content-Type': 'application/json', 'Idempotency-Key': crypto.randomUUID()},
    body: JSON.stringify({credit_pack_id: packId}),
  });
  const body = await response.json();
  if (response.status === 201) { window.location.assign(body.payment_url); return; }
  button.disabled = false;
  showError(body.detail || ('payment could not be created (' + response.status + ')'));
}

async function shop() {
  const state = await loadState();
  const list = $('packs');
  for (const pack of state.packs) {
    const item = document.createElement('li');
    item.className = 'pack';
    item.dataset.packId = pack.id;
    const label = document.createElement('span');
    label.textContent = pack.name + ' - ' + pack.credits + ' credits - ' + pack.price + ' ' + pack.currency;
    const button = document.createElement('button');
    button.className = 'buy';
    button.textContent = 'Buy';
    button.addEventListener('click', () => buy(pack.id, button));
    item.append(label, button);
    list.append(item);
  }
}

async function result(paymentId) {
  $('shop').hidden = true;
  $('result').hidden = false;
  if (!paymentId) { $('result-status').textContent = 'failed'; $('result-status').className = 'failed';
    $('result-detail').textContent = 'The payment could not be verified.'; await loadState(); return; }
  for (let attempt = 0; attempt < 30; attempt++) {
    const response = await fetch('/payments/' + encodeURIComponent(paymentId), {headers: auth});
    const payment = await response.json();
    if (response.status !== 200) { showError(payment.detail || 'unknown payment'); return; }
    $('result-status').textContent = payment.status;
    $('result-status').className = payment.status;
    $('result-detail').textContent = payment.amount + ' ' + payment.currency + ' for ' + payment.credits + ' credits';
    if (payment.status !== 'pending') break;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  await loadState();
}

const params = new URLSearchParams(window.location.search);
if (window.location.pathname.startsWith('/demo/result')) { result(params.get('payment_id')); } else { shop(); }
"""


class DemoSite:
    """`handle(method, path)` answers the /demo pages, or None for anything else."""

    def __init__(self, database_url: str, user_id: str, token: str) -> None:
        self._db = Database.from_settings(DatabaseSettings(DATABASE_URL=database_url))
        self._user_id = user_id
        self._token = token

    def handle(self, method: str, path: str) -> tuple[int, dict[str, str], bytes] | None:
        if not (path == PREFIX or path.startswith(PREFIX + "/")):
            return None
        if method not in ("GET", "HEAD"):
            return 405, {"content-type": "text/plain"}, b"method not allowed"
        if path in (PREFIX, PREFIX + "/", PREFIX + "/result"):
            page = _PAGE.format(token=html.escape(self._token))
            return 200, {**_HEADERS, "content-type": "text/html; charset=utf-8"}, page.encode()
        if path == PREFIX + "/app.js":
            return 200, {**_HEADERS, "content-type": "text/javascript; charset=utf-8"}, _SCRIPT.encode()
        if path == PREFIX + "/app.css":
            return 200, {**_HEADERS, "content-type": "text/css; charset=utf-8"}, _CSS.encode()
        if path == PREFIX + "/api/state":
            return 200, {**_HEADERS, "content-type": "application/json"}, json.dumps(self.state()).encode()
        return 404, {"content-type": "text/plain"}, b"not found"

    def state(self) -> dict[str, Any]:
        user = self._db.run(
            bind("SELECT id::text, email, full_name, credits FROM public.profiles WHERE id = :u::uuid", u=self._user_id)
        )
        packs = self._db.run(
            "SELECT id::text, name, credits, price::text FROM public.credit_packs WHERE is_active ORDER BY price"
        )
        uid, email, name, credits = user[0]
        return {
            "user": {"id": uid, "email": email, "name": name, "credits": credits},
            "packs": [
                {"id": p[0], "name": p[1], "credits": p[2], "price": f"{Decimal(p[3]):.2f}", "currency": "ILS"}
                for p in packs
            ],
        }

    def close(self) -> None:
        self._db.close()
