-- 003: what payment creation and the Hypay callback need: currency and credits on a payment,
-- Hyp's outcome, the constraints that make granting credits happen at most once, saved-card
-- tokens and the per-user rate limit. Adds only; every existing row stays valid. Safe to re-run.

ALTER TABLE public.payments
  ADD COLUMN IF NOT EXISTS currency            text NOT NULL DEFAULT 'ILS',
  ADD COLUMN IF NOT EXISTS credits             integer,
  ADD COLUMN IF NOT EXISTS save_card           boolean NOT NULL DEFAULT false,
  ADD COLUMN IF NOT EXISTS hypay_ccode         integer,
  ADD COLUMN IF NOT EXISTS hypay_message       text,
  ADD COLUMN IF NOT EXISTS hypay_approval_code text,
  ADD COLUMN IF NOT EXISTS review_reason       text,
  ADD COLUMN IF NOT EXISTS completed_at        timestamptz;

-- Statuses: the web app's three, plus expired (cleanup) and needs_review (amount mismatch).
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'payments_status_check'
                 AND conrelid = 'public.payments'::regclass) THEN
    ALTER TABLE public.payments ADD CONSTRAINT payments_status_check
      CHECK (status IN ('pending', 'completed', 'failed', 'expired', 'needs_review'));
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'payments_currency_check'
                 AND conrelid = 'public.payments'::regclass) THEN
    ALTER TABLE public.payments ADD CONSTRAINT payments_currency_check
      CHECK (currency IN ('ILS', 'USD', 'EUR', 'GBP'));
  END IF;
END $$;

-- One Hyp transaction pays for one payment; one purchase grant and one invoice per payment.
CREATE UNIQUE INDEX IF NOT EXISTS payments_hypay_transaction_id_key
  ON public.payments (hypay_transaction_id) WHERE hypay_transaction_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS credit_transactions_one_purchase_per_payment
  ON public.credit_transactions (payment_id) WHERE type = 'purchase' AND payment_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS invoices_one_per_payment
  ON public.invoices (payment_id) WHERE payment_id IS NOT NULL;
-- Cleanup finds stale pending payments; users list their own.
CREATE INDEX IF NOT EXISTS payments_pending_created_idx
  ON public.payments (created_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS payments_user_idx ON public.payments (user_id, created_at);

-- Hyp tokens for saved cards (PCI: a token and the last four digits only, never a card number or CVV).
CREATE TABLE IF NOT EXISTS public.saved_cards (
  id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id          uuid NOT NULL REFERENCES public.profiles(id),
  token            text NOT NULL,
  expiry_month     smallint NOT NULL CHECK (expiry_month BETWEEN 1 AND 12),
  expiry_year      smallint NOT NULL CHECK (expiry_year BETWEEN 2000 AND 2100),
  last4            text CHECK (last4 ~ '^[0-9]{4}$'),
  payment_id       uuid REFERENCES public.payments(id),
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS saved_cards_one_per_user ON public.saved_cards (user_id);

-- Fixed-window counters for the per-user rate limit (one atomic upsert per request).
CREATE TABLE IF NOT EXISTS public.rate_limits (
  bucket        text NOT NULL,
  window_start  timestamptz NOT NULL,
  count         integer NOT NULL DEFAULT 0,
  PRIMARY KEY (bucket, window_start)
);

-- New tables hold nothing the web app's browser clients may read: with row level security on
-- and no policy, Supabase's anon/authenticated roles see nothing; the backend's role owns them.
ALTER TABLE public.saved_cards ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.rate_limits ENABLE ROW LEVEL SECURITY;
