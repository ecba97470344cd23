"""The demo web app `make run` serves at /demo: it stands in for the real web app.

It shows the demo user's credits and the active credit packs; "Buy" calls `POST /payments` with the
user's token and a fresh `Idempotency-Key`, then sends the browser to the returned payment page. Hyp
(the simulator) redirects to `/hypay/return`, which sends the browser to `/demo/result`, where the
payment's status (`GET /payments/{id}`) and the new balance are shown. Its own JSON (`/demo/api/state`)
reads the database directly, as the web app reads its Supabase tables.

`/demo/operator` is the operator's page: it asks for the admin token (kept in the tab's sessionStorage, never
in a URL, never in the page), lists `GET /admin/review` and offers, per item, Complete / Fail
(`POST /admin/payments/{id}/resolve`) or Refund (`POST /admin/payments/{id}/refund` of that Hyp transaction),
each with a fresh `Idempotency-Key` (kept for a retry until an answer is final), and says the answer in
words. Its journal panel (`/demo/api/payments/{id}/journal`, the admin token required) reads the database
directly: the payment, its Hyp transactions, refunds and credit ledger rows, and the user's balance.
"""

from __future__ import annotations

import datetime as dt
import hmac
import html
import json
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from uuid import UUID

from payments.adapters.db import Database, bind
from payments.settings import DatabaseSettings

PREFIX = "/demo"
_HEADERS = {
    "cache-control": "no-store",
    "content-security-policy": "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
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
#error{color:#b91c1c}
body.operator{max-width:64rem}li.item{border:1px solid #ddd;border-radius:6px;padding:.6rem 1rem;margin:.8rem 0}
li.item h3{margin:.2rem 0}li.item .kind{font-weight:normal;color:#666;font-size:.9rem}
dl{display:grid;grid-template-columns:9rem 1fr;gap:.2rem .8rem;margin:.4rem 0}dt{color:#666}dd{margin:0}
ul.tried{list-style:disc;padding-left:1.4rem;margin:.2rem 0}.label{margin:.4rem 0 0;color:#666}
.next-step{font-style:italic}.actions{display:flex;flex-wrap:wrap;gap:.5rem;align-items:end}
.actions label{display:flex;flex-direction:column;font-size:.85rem}.actions input{padding:.4rem;min-width:14rem}
.hint{color:#666;font-size:.9rem}#answer{padding:.4rem 0}#answer.ok{color:#15803d}#answer.error{color:#b91c1c}
#answer.warning{color:#b45309}table{border-collapse:collapse;width:100%;font-size:.85rem;margin-bottom:.8rem}
th,td{border:1px solid #ddd;padding:.25rem .4rem;text-align:left;vertical-align:top}th{background:#f5f5f5}"""

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


_OPERATOR_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Operator - review queue</title>
<link rel="stylesheet" href="/demo/app.css"></head>
<body class="operator">
<header><h1>Operator: what needs a human</h1>
<p>The review queue of the payments backend (<code>GET /admin/review</code>). <a href="/demo/">The shop</a></p></header>
<main>
<section id="login"><h2>Admin token</h2>
<form id="login-form" autocomplete="off">
<label>Admin token <input id="admin-token" type="password" autocomplete="off" spellcheck="false"></label>
<button id="sign-in" type="submit">Use this token</button>
</form>
<p class="hint">Kept in this tab only (sessionStorage); sent as <code>Authorization: Bearer</code>, never in a URL.
<code>make run</code> prints the local one.</p></section>
<section id="signed-in" hidden>
<p>Signed in with an admin token. <button id="sign-out" type="button">Forget the token</button>
<button id="reload" type="button">Reload the queue</button></p></section>
<p id="answer" role="status"></p>
<section id="queue-section" hidden><h2>Review queue <small id="queue-count"></small></h2>
<p id="queue-empty" hidden>Nothing needs a human.</p>
<ol id="queue"></ol>
<button id="more" type="button" hidden>More</button></section>
<section id="journal-section" hidden><h2>Journal of a payment</h2>
<form id="journal-form" autocomplete="off">
<label>Payment id <input id="journal-payment-id" spellcheck="false" size="38"></label>
<button id="journal-show" type="submit">Show</button></form>
<div id="journal" hidden>
<p>Payment <code id="journal-payment"></code>: <strong id="journal-status"></strong>,
<span id="journal-amount"></span> for <span id="journal-credits"></span> credits; paid by Hyp transaction
<code id="journal-paid-by"></code>. User <span id="journal-user"></span>: balance
<strong id="journal-balance"></strong> credits.</p>
<h3>Hyp transactions</h3>
<table id="journal-transactions"><thead><tr><th>Hyp id</th><th>source</th><th>decision</th><th>amount</th>
<th>CCode</th><th>first seen</th><th>detail</th></tr></thead><tbody></tbody></table>
<h3>Refunds</h3>
<table id="journal-refunds"><thead><tr><th>of Hyp id</th><th>method</th><th>amount</th><th>status</th>
<th>Hyp refund id</th><th>credits taken</th><th>reason</th><th>by</th><th>at</th></tr></thead><tbody></tbody></table>
<h3>Credits ledger</h3>
<table id="journal-ledger"><thead><tr><th>amount</th><th>type</th><th>description</th><th>at</th></tr></thead>
<tbody></tbody></table>
</div></section>
</main>
<script src="/demo/operator.js"></script>
</body></html>
"""

_OPERATOR_SCRIPT = """'use strict';
// The operator page: the admin token lives in this tab's sessionStorage only, and goes out as a bearer header.
const STORE = 'payments-admin-token';
const $ = (id) => document.getElementById(id);
const pendingKeys = new Map();  // request -> its Idempotency-Key, kept until the answer is final (a retry reuses it)
let cursor = null;

const adminToken = () => sessionStorage.getItem(STORE) || '';
const authHeader = () => ({'Authorization': 'Bearer ' + adminToken()});

function node(tag, className, text) {
  const element = document.createElement(tag);
  if (className) element.className = className;
  if (text !== undefined && text !== null) element.textContent = String(text);
  return element;
}

function say(text, kind) {
  const answer = $('answer');
  answer.textContent = text;
  answer.className = kind || '';
}

function when(value) {
  if (!value) return null;
  const date = new Date(value);
  return isNaN(date) ? value : date.toISOString().slice(0, 19).replace('T', ' ') + ' UTC';
}

function ago(seconds) {
  if (seconds < 60) return seconds + ' s';
  if (seconds < 3600) return Math.floor(seconds / 60) + ' min';
  if (seconds < 86400) return Math.floor(seconds / 3600) + ' h ' + Math.floor((seconds % 3600) / 60) + ' min';
  return Math.floor(seconds / 86400) + ' d ' + Math.floor((seconds % 86400) / 3600) + ' h';
}

async function readBody(response) {
  const text = await response.text();
  try { return JSON.parse(text); } catch (error) { return {detail: text.slice(0, 300)}; }
}

function problemWords(status, body) {
  const words = (body && (body.detail || body.message)) || 'no detail';
  return (body && body.title ? body.title : 'HTTP ' + status) + ' (' + status + '): ' + words;
}

function showSignedIn(signedIn) {
  $('login').hidden = signedIn;
  $('signed-in').hidden = !signedIn;
  $('queue-section').hidden = !signedIn;
  $('journal-section').hidden = !signedIn;
  if (!signedIn) { $('queue').replaceChildren(); $('journal').hidden = true; }
}

function refused(status, body) {
  // The admin API (or the journal) refused the token: forget it and ask again.
  sessionStorage.removeItem(STORE);
  showSignedIn(false);
  say('The admin token was refused: ' + problemWords(status, body), 'error');
  $('admin-token').focus();
}

// -- the queue -------------------------------------------------------------------------------------

async function loadQueue(more) {
  if (!adminToken()) { showSignedIn(false); return; }
  const query = new URLSearchParams({limit: '50'});
  if (more && cursor) query.set('after', cursor);
  let response, body;
  try {
    response = await fetch('/admin/review?' + query.toString(), {headers: authHeader(), cache: 'no-store'});
    body = await readBody(response);
  } catch (error) { say('The queue could not be read: ' + error.message, 'error'); return; }
  if (response.status === 401 || response.status === 403) { refused(response.status, body); return; }
  if (response.status !== 200) {
    say('The queue could not be read: ' + problemWords(response.status, body), 'error');
    return;
  }
  showSignedIn(true);
  const list = $('queue');
  if (!more) list.replaceChildren();
  for (const item of body.items) list.append(renderItem(item));
  cursor = body.next;
  $('more').hidden = !cursor;
  const shown = list.children.length;
  $('queue-empty').hidden = shown > 0;
  $('queue-count').textContent = shown + (cursor ? '+' : '') + ' item' + (shown === 1 ? '' : 's');
}

function fact(list, label, value) {
  if (value === undefined || value === null || value === '') return;
  list.append(node('dt', null, label), node('dd', null, value));
}

function renderItem(item) {
  const payment = item.payment;
  const li = node('li', 'item ' + item.kind);
  li.dataset.itemId = item.id;
  li.dataset.reason = item.reason;
  li.dataset.kind = item.kind;
  if (payment) li.dataset.paymentId = payment.id;
  const heading = node('h3');
  heading.append(node('span', 'reason', item.reason), ' ', node('span', 'kind', item.kind));
  li.append(heading);
  const facts = node('dl');
  const amount = item.amount ? item.amount + ' ' + (item.currency || '?') : null;
  fact(facts, item.kind === 'payment' ? 'Amount' : 'Charged', amount);
  if (payment) {
    fact(facts, 'Payment', payment.id + ' (' + payment.status + ', ' + payment.amount + ' ' + payment.currency +
      (payment.credits !== null ? ' for ' + payment.credits + ' credits' : '') + ')');
    fact(facts, 'Paid by Hyp id', payment.paid_by_hypay_id);
  }
  fact(facts, 'Hyp ids', (item.hypay_ids || []).filter(Boolean).join(', '));
  fact(facts, 'User', item.user_id);
  fact(facts, 'Waiting', ago(item.age_seconds) + ' (since ' + when(item.since) + ')');
  if (item.transaction) {
    const t = item.transaction;
    fact(facts, 'Decision', t.decision + (t.source ? ' (' + t.source + ')' : ''));
    fact(facts, 'Detail', item.transaction.detail);
    fact(facts, 'Order', item.transaction.order_ref);
  }
  if (payment) fact(facts, 'Review reason', payment.review_reason);
  li.append(facts);
  if (item.tried && item.tried.length) {
    li.append(node('p', 'label', 'What was tried'));
    const tried = node('ul', 'tried');
    for (const line of item.tried) tried.append(node('li', null, line));
    li.append(tried);
  }
  li.append(node('p', 'next-step', 'Next step: ' + item.next_step));
  li.append(actions(item));
  return li;
}

function input(className, label, placeholder) {
  const wrapper = node('label', null, label + ' ');
  const field = node('input', className);
  field.placeholder = placeholder || '';
  field.autocomplete = 'off';
  wrapper.append(field);
  return [wrapper, field];
}

function actions(item) {
  const box = node('div', 'actions');
  const payment = item.payment;
  const [reasonLabel, reason] = input('reason', 'Reason', 'why (kept in the audit trail)');
  if (item.kind === 'payment') {
    const [hypLabel, hypId] = input('hypay-id', 'Hyp id (complete; optional)', 'the transaction that paid');
    const complete = node('button', 'complete', 'Complete');
    const fail = node('button', 'fail', 'Fail');
    const resolve = (action) => {
      const body = {action: action, reason: reason.value.trim()};
      if (action === 'complete' && hypId.value.trim()) body.hypay_id = hypId.value.trim();
      act(item, '/admin/payments/' + encodeURIComponent(payment.id) + '/resolve', body, [complete, fail], reason);
    };
    complete.type = fail.type = 'button';
    complete.addEventListener('click', () => resolve('complete'));
    fail.addEventListener('click', () => resolve('fail'));
    box.append(reasonLabel, hypLabel, complete, fail);
  } else if (item.kind === 'transaction' && payment && item.transaction && item.transaction.hypay_id) {
    const [amountLabel, amount] = input('amount', 'Amount (optional)', 'all that remains');
    const refund = node('button', 'refund', 'Refund');
    refund.type = 'button';
    refund.addEventListener('click', () => {
      const body = {reason: reason.value.trim(), hypay_id: item.transaction.hypay_id};
      if (amount.value.trim()) body.amount = amount.value.trim();
      act(item, '/admin/payments/' + encodeURIComponent(payment.id) + '/refund', body, [refund], reason);
    });
    box.append(reasonLabel, amountLabel, refund);
  } else {
    box.append(node('p', 'hint', item.kind === 'refund'
      ? 'Look the refund up in Hyp\\'s portal; nothing to press here.'
      : 'No payment of ours: nothing to press here (see the next step).'));
  }
  if (payment) {
    const journal = node('button', 'journal', 'Journal');
    journal.type = 'button';
    journal.addEventListener('click', () => showJournal(payment.id));
    box.append(journal);
  }
  return box;
}

// -- resolve / refund ------------------------------------------------------------------------------

function words(path, status, body, replayed) {
  const again = replayed ? ' (the answer to an earlier request with the same Idempotency-Key)' : '';
  if (path.endsWith('/refund')) {
    if (status === 201) {
      return 'Refunded ' + body.amount + ' ' + body.currency + ' of Hyp transaction ' + body.hypay_transaction_id +
        (body.method === 'cancel' ? ' (cancelled the same day)' : ' (refund' +
          (body.hypay_refund_id ? ' ' + body.hypay_refund_id : '') + ')') + '; ' + body.credits_taken +
        ' credits taken back; ' + body.remaining + ' ' + body.currency + ' remains refundable.' +
        (body.detail ? ' ' + body.detail : '') + again;
    }
    if (status === 202) return 'Refund outcome unknown: ' + (body.detail || 'being confirmed') + again;
  } else if (status === 200) {
    return 'Payment ' + body.payment_id + ' ' + (body.action === 'complete' ? 'completed' : 'failed') +
      (body.hypay_id ? ' with Hyp transaction ' + body.hypay_id : '') + '; ' + body.credits_granted +
      ' credits granted; by ' + body.resolved_by + '.' + again;
  }
  return problemWords(status, body) + again;
}

async function act(item, path, body, buttons, reasonField) {
  if (!body.reason) {
    say('Say why first (the reason goes to the audit trail).', 'error');
    reasonField.focus();
    return;
  }
  const request = path + ' ' + JSON.stringify(body);
  let key = pendingKeys.get(request);
  if (!key) { key = crypto.randomUUID(); pendingKeys.set(request, key); }
  for (const button of buttons) button.disabled = true;
  say('Sending ' + path + ' ...', 'busy');
  let response, answer;
  try {
    response = await fetch(path, {
      method: 'POST',
      headers: {...authHeader(), 'Content-Type': 'application/json', 'Idempotency-Key': key},
      body: JSON.stringify(body),
    });
    answer = await readBody(response);
  } catch (error) {
    for (const button of buttons) button.disabled = false;
    say('No answer (' + error.message + '). Press again: the same Idempotency-Key is sent, nothing happens twice.',
      'error');
    return;
  }
  const retry = response.status >= 500 && response.status !== 502 || response.headers.get('Retry-After') !== null;
  if (!retry) pendingKeys.delete(request);
  if (response.status === 401) { refused(response.status, answer); return; }
  const ok = response.status === 200 || response.status === 201;
  let text = words(path, response.status, answer, response.headers.get('Idempotent-Replayed') === 'true');
  if (retry) text += ' Press again to retry with the same Idempotency-Key.';
  say(text, ok ? 'ok' : (response.status === 202 ? 'warning' : 'error'));
  for (const button of buttons) button.disabled = false;
  if (item.payment) await showJournal(item.payment.id);
  await loadQueue(false);
}

// -- the journal of one payment --------------------------------------------------------------------

function row(table, cells, data) {
  const tr = node('tr');
  for (const [name, value] of Object.entries(data)) tr.dataset[name] = value === null ? '' : String(value);
  for (const cell of cells) tr.append(node('td', null, cell === null || cell === undefined ? '-' : cell));
  $(table).tBodies[0].append(tr);
}

async function showJournal(paymentId) {
  $('journal-payment-id').value = paymentId;
  let response, body;
  try {
    response = await fetch('/demo/api/payments/' + encodeURIComponent(paymentId) + '/journal',
      {headers: authHeader(), cache: 'no-store'});
    body = await readBody(response);
  } catch (error) { say('The journal could not be read: ' + error.message, 'error'); return; }
  if (response.status === 401) { refused(response.status, body); return; }
  const journal = $('journal');
  if (response.status !== 200) {
    journal.hidden = true;
    say('The journal could not be read: ' + problemWords(response.status, body), 'error');
    return;
  }
  const p = body.payment;
  journal.dataset.paymentId = p.id;
  $('journal-payment').textContent = p.id;
  $('journal-status').textContent = p.status;
  $('journal-amount').textContent = p.amount + ' ' + p.currency;
  $('journal-credits').textContent = p.credits === null ? '?' : p.credits;
  $('journal-paid-by').textContent = p.hypay_transaction_id || '-';
  $('journal-user').textContent = body.user.email || body.user.id;
  $('journal-balance').textContent = body.user.credits;
  for (const id of ['journal-transactions', 'journal-refunds', 'journal-ledger']) $(id).tBodies[0].replaceChildren();
  for (const t of body.transactions) {
    row('journal-transactions',
      [t.hypay_id + (t.hypay_id === p.hypay_transaction_id ? ' (paid it)' : ''), t.source, t.decision,
        t.amount ? t.amount + ' ' + (t.currency || '?') : null, t.ccode, when(t.first_seen), t.detail],
      {hypayId: t.hypay_id, source: t.source, decision: t.decision});
  }
  for (const r of body.refunds) {
    row('journal-refunds',
      [r.original_hypay_id, r.method, r.amount + ' ' + r.currency, r.status + (r.message ? ': ' + r.message : ''),
        r.hypay_refund_id, r.credits_taken, r.reason, r.admin, when(r.created_at)],
      {refundId: r.id, originalHypayId: r.original_hypay_id, status: r.status});
  }
  for (const c of body.ledger) {
    row('journal-ledger', [c.amount, c.type, c.description, when(c.created_at)], {type: c.type});
  }
  journal.hidden = false;
}

// -- wiring ----------------------------------------------------------------------------------------

$('login-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const field = $('admin-token');
  const value = field.value.trim();
  field.value = '';
  if (!value) { say('Enter the admin token.', 'error'); return; }
  sessionStorage.setItem(STORE, value);
  say('', '');
  loadQueue(false);
});
$('sign-out').addEventListener('click', () => {
  sessionStorage.removeItem(STORE);
  showSignedIn(false);
  say('The token is forgotten.', '');
});
$('reload').addEventListener('click', () => loadQueue(false));
$('more').addEventListener('click', () => loadQueue(true));
$('journal-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const id = $('journal-payment-id').value.trim();
  if (id) showJournal(id);
});
showSignedIn(false);
if (adminToken()) loadQueue(false);
"""

_JOURNAL_PATH = re.compile(r"^/demo/api/payments/([^/]+)/journal$")
_JSON = {**_HEADERS, "content-type": "application/json"}
_PROBLEM = {**_HEADERS, "content-type": "application/problem+json"}


def _problem(status: int, title: str, detail: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return status, {**_PROBLEM, **headers}, json.dumps(body).encode()


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, dt.datetime) else None


class DemoSite:
    """`handle(method, path, headers)` answers the /demo pages, or None for anything else.

    `admin_token`: what the operator page's journal requires as `Authorization: Bearer` (None: the journal is off).
    """

    def __init__(self, database_url: str, user_id: str, token: str, admin_token: str | None = None) -> None:
        self._db = Database.from_settings(DatabaseSettings(DATABASE_URL=database_url))
        self._user_id = user_id
        self._token = token
        self._admin_token = admin_token

    def handle(
        self, method: str, path: str, headers: Mapping[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes] | None:
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
            return 200, _JSON, json.dumps(self.state()).encode()
        if path == PREFIX + "/operator":
            return 200, {**_HEADERS, "content-type": "text/html; charset=utf-8"}, _OPERATOR_PAGE.encode()
        if path == PREFIX + "/operator.js":
            return 200, {**_HEADERS, "content-type": "text/javascript; charset=utf-8"}, _OPERATOR_SCRIPT.encode()
        found = _JOURNAL_PATH.match(path)
        if found:
            return self._journal_answer(found.group(1), (headers or {}).get("authorization", ""))
        return 404, {"content-type": "text/plain"}, b"not found"

    def _is_admin(self, authorization: str) -> bool:
        scheme, _, presented = authorization.partition(" ")
        if self._admin_token is None or scheme.lower() != "bearer" or not presented.strip():
            return False
        return hmac.compare_digest(presented.strip().encode(), self._admin_token.encode())

    def _journal_answer(self, payment_id: str, authorization: str) -> tuple[int, dict[str, str], bytes]:
        if not self._is_admin(authorization):
            return _problem(401, "Unauthorized", "a valid admin token is required", **{"www-authenticate": "Bearer"})
        try:
            pid = UUID(payment_id)
        except ValueError:
            return _problem(404, "Not Found", "no such payment")
        journal = self.journal(pid)
        if journal is None:
            return _problem(404, "Not Found", "no such payment")
        return 200, _JSON, json.dumps(journal).encode()

    def journal(self, payment_id: UUID) -> dict[str, Any] | None:
        """The payment, its Hyp transactions, refunds and ledger rows, and its user's balance; None: no such one."""
        pid = str(payment_id)
        found = self._db.run(
            bind(
                "SELECT p.id::text, p.status, p.amount::text, p.currency, p.credits, p.hypay_transaction_id,"
                " p.review_reason, p.created_at, p.completed_at, p.user_id::text, u.email, u.credits"
                " FROM public.payments p LEFT JOIN public.profiles u ON u.id = p.user_id WHERE p.id = :id::uuid",
                id=pid,
            )
        )
        if not found:
            return None
        (_, status, amount, currency, credits, paid_by, review_reason, created, completed, user_id, email,
         balance) = found[0]  # fmt: skip
        transactions = self._db.run(
            bind(
                "SELECT hypay_id, source, decision, detail, ccode, amount::text, currency, verified, deliveries,"
                " first_seen FROM public.hypay_transactions WHERE payment_id = :id::uuid ORDER BY first_seen, hypay_id",
                id=pid,
            )
        )
        refunds = self._db.run(
            bind(
                "SELECT id::text, original_hypay_id, method, amount::text, currency, status, hypay_refund_id, ccode,"
                " message, credits_taken, reason, admin, created_at FROM public.refunds"
                " WHERE payment_id = :id::uuid ORDER BY created_at, id",
                id=pid,
            )
        )
        ledger = self._db.run(
            bind(
                "SELECT amount, type, description, created_at FROM public.credit_transactions"
                " WHERE payment_id = :id::uuid ORDER BY created_at, id",
                id=pid,
            )
        )
        return {
            "payment": {
                "id": pid,
                "status": status,
                "amount": f"{Decimal(amount):.2f}",
                "currency": currency,
                "credits": credits,
                "hypay_transaction_id": paid_by,
                "review_reason": review_reason,
                "created_at": _iso(created),
                "completed_at": _iso(completed),
            },
            "user": {"id": user_id, "email": email, "credits": balance},
            "transactions": [
                {
                    "hypay_id": t[0],
                    "source": t[1],
                    "decision": t[2],
                    "detail": t[3],
                    "ccode": t[4],
                    "amount": f"{Decimal(t[5]):.2f}" if t[5] is not None else None,
                    "currency": t[6],
                    "verified": t[7],
                    "deliveries": t[8],
                    "first_seen": _iso(t[9]),
                }
                for t in transactions
            ],
            "refunds": [
                {
                    "id": r[0],
                    "original_hypay_id": r[1],
                    "method": r[2],
                    "amount": f"{Decimal(r[3]):.2f}",
                    "currency": r[4],
                    "status": r[5],
                    "hypay_refund_id": r[6],
                    "ccode": r[7],
                    "message": r[8],
                    "credits_taken": r[9],
                    "reason": r[10],
                    "admin": r[11],
                    "created_at": _iso(r[12]),
                }
                for r in refunds
            ],
            "ledger": [{"amount": c[0], "type": c[1], "description": c[2], "created_at": _iso(c[3])} for c in ledger],
        }

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
