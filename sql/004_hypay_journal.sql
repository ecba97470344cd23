-- 004: the journal of Hyp money, and the saved-card charge attempt mark. Adds only. Safe to re-run.
--
-- hypay_transactions: one row per Hyp transaction the backend learns of (keyed on Hyp's `Id`),
-- written in the same transaction as the decision taken on it, so no decision exists without its
-- row and no paid transaction lives only in a log.

CREATE TABLE IF NOT EXISTS public.hypay_transactions (
  hypay_id         text PRIMARY KEY CHECK (hypay_id ~ '^[0-9]{1,20}$'),
  -- The payment the transaction claims (its `Order`), when that is one of our ids; the raw Order otherwise.
  payment_id       uuid,
  order_ref        text CHECK (length(order_ref) <= 200),
  ccode            integer,
  amount           numeric(12, 2),
  currency         text,
  -- redirect (the browser), notify (Hyp's server), token_charge (our action=soft).
  source           text NOT NULL CHECK (source IN ('redirect', 'notify', 'token_charge')),
  verified         boolean NOT NULL,
  -- granted: credits granted for it; duplicate: its Id already belongs to another payment;
  -- declined: Hyp did not charge; review: charged, but a human must look (second charge, amount
  -- mismatch, payment under review); unmatched: no payment of ours; unverified: not verifiable
  -- yet (our configuration, or Hyp unreachable), kept for reconciliation.
  decision         text NOT NULL
                   CHECK (decision IN ('granted', 'duplicate', 'declined', 'review', 'unmatched', 'unverified')),
  detail           text,
  -- The payment's status when the decision was taken (e.g. failed, expired: a late payment).
  previous_status  text,
  approval_code    text,
  -- For an unverified row: the first such callback as received (all of them: hypay_unverified_callbacks).
  raw_callback     text CHECK (length(raw_callback) <= 8192),
  deliveries       integer NOT NULL DEFAULT 1,
  first_seen       timestamptz NOT NULL DEFAULT now(),
  last_seen        timestamptz NOT NULL DEFAULT now(),
  decided_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS hypay_transactions_payment_idx ON public.hypay_transactions (payment_id);
CREATE INDEX IF NOT EXISTS hypay_transactions_attention_idx
  ON public.hypay_transactions (decision, first_seen) WHERE decision IN ('review', 'unmatched', 'unverified');

COMMENT ON TABLE public.hypay_transactions IS
  'Every Hyp transaction the payment backend learned of, and what it decided (written with the decision).';

-- Callbacks that could not be verified yet for a reason of ours (our credentials refused, Hyp
-- unreachable, configuration): every distinct one kept as received, append-only, to verify again.
-- An unverified claim can be forged, so it never changes anything: it only stops the cleanup from
-- expiring the payment it names until its Hyp Id is verified.
CREATE TABLE IF NOT EXISTS public.hypay_unverified_callbacks (
  raw_sha256    text PRIMARY KEY CHECK (raw_sha256 ~ '^[0-9a-f]{64}$'),
  hypay_id      text NOT NULL,
  payment_id    uuid,
  source        text NOT NULL CHECK (source IN ('redirect', 'notify')),
  reason        text,
  raw_callback  text NOT NULL CHECK (length(raw_callback) <= 8192),
  deliveries    integer NOT NULL DEFAULT 1,
  first_seen    timestamptz NOT NULL DEFAULT now(),
  last_seen     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS hypay_unverified_callbacks_payment_idx ON public.hypay_unverified_callbacks (payment_id);
CREATE INDEX IF NOT EXISTS hypay_unverified_callbacks_hypay_idx ON public.hypay_unverified_callbacks (hypay_id);

-- A saved-card charge: the attempt is marked (a conditional update) BEFORE Hyp is asked to charge,
-- so a retry can see that a charge may exist and never asks again.
ALTER TABLE public.payments
  ADD COLUMN IF NOT EXISTS charge_attempt_id   uuid,
  ADD COLUMN IF NOT EXISTS charge_attempted_at timestamptz;

-- Backend-only: with row level security on and no policy, Supabase's anon/authenticated roles see nothing.
ALTER TABLE public.hypay_transactions ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.hypay_unverified_callbacks ENABLE ROW LEVEL SECURITY;
