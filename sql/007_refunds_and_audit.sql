-- 007: refunds through Hyp, and the audit trail of admin actions. Adds only. Safe to re-run.

-- A refund (Hyp's zikoyAPI) or a same-day cancellation (CancelTrans) of one Hyp transaction. The row is
-- written ('attempted') BEFORE Hyp is asked, and Hyp's answer is stored on it: a retry finds it and never
-- asks again. The sum of a payment's refunds that may have moved money never exceeds what was paid
-- (checked under the payment's row lock).
CREATE TABLE IF NOT EXISTS public.refunds (
  id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  payment_id          uuid NOT NULL REFERENCES public.payments(id),
  original_hypay_id   text NOT NULL,
  method              text NOT NULL CHECK (method IN ('cancel', 'refund')),
  amount              numeric(12, 2) NOT NULL CHECK (amount > 0),
  currency            text NOT NULL,
  -- attempted: asked (or about to ask) Hyp, no answer stored yet; succeeded; refused (Hyp said no: no
  -- money moved); unknown (the answer was lost: may have moved, a human confirms).
  status              text NOT NULL CHECK (status IN ('attempted', 'succeeded', 'refused', 'unknown')),
  hypay_refund_id     text,
  ccode               integer,
  message             text,
  credits_taken       integer NOT NULL DEFAULT 0,
  reason              text NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
  idempotency_key     text NOT NULL UNIQUE,
  admin               text NOT NULL,
  created_at          timestamptz NOT NULL DEFAULT now(),
  updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS refunds_payment_idx ON public.refunds (payment_id);

-- The journal learns refunds too: a row keyed on Hyp's refund transaction Id.
ALTER TABLE public.hypay_transactions DROP CONSTRAINT IF EXISTS hypay_transactions_source_check;
ALTER TABLE public.hypay_transactions ADD CONSTRAINT hypay_transactions_source_check
  CHECK (source IN ('redirect', 'notify', 'token_charge', 'refund'));
ALTER TABLE public.hypay_transactions DROP CONSTRAINT IF EXISTS hypay_transactions_decision_check;
ALTER TABLE public.hypay_transactions ADD CONSTRAINT hypay_transactions_decision_check
  CHECK (decision IN ('granted', 'duplicate', 'declined', 'review', 'unmatched', 'unverified', 'refunded'));

-- Who did what, when, to which payment, with which Idempotency-Key, and the state before and after.
-- Append-only for the functions: payments_backend may insert and read, never update or delete.
CREATE TABLE IF NOT EXISTS public.admin_audit_log (
  id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  at               timestamptz NOT NULL DEFAULT now(),
  admin            text NOT NULL,
  action           text NOT NULL CHECK (action IN ('resolve', 'refund', 'cleanup')),
  payment_id       uuid,
  idempotency_key  text,
  request          jsonb,
  before_state     jsonb,
  after_state      jsonb
);
CREATE INDEX IF NOT EXISTS admin_audit_log_payment_idx ON public.admin_audit_log (payment_id, at);

ALTER TABLE public.refunds ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.admin_audit_log ENABLE ROW LEVEL SECURITY;

DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'payments_backend') THEN
    GRANT SELECT, INSERT, UPDATE ON public.refunds TO payments_backend;
    GRANT SELECT, INSERT ON public.admin_audit_log TO payments_backend;
    IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE tablename = 'refunds' AND policyname = 'payments_backend_all_rows') THEN
      CREATE POLICY payments_backend_all_rows ON public.refunds FOR ALL TO payments_backend USING (true) WITH CHECK (true);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE tablename = 'admin_audit_log' AND policyname = 'payments_backend_append') THEN
      CREATE POLICY payments_backend_append ON public.admin_audit_log FOR INSERT TO payments_backend WITH CHECK (true);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE tablename = 'admin_audit_log' AND policyname = 'payments_backend_read') THEN
      CREATE POLICY payments_backend_read ON public.admin_audit_log FOR SELECT TO payments_backend USING (true);
    END IF;
  END IF;
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
    REVOKE ALL ON public.refunds, public.admin_audit_log FROM anon;
  END IF;
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
    REVOKE ALL ON public.refunds, public.admin_audit_log FROM authenticated;
  END IF;
  REVOKE ALL ON public.refunds, public.admin_audit_log FROM PUBLIC;
END $$;
