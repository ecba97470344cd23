-- 013: a transaction that needs a human but that no action of ours settles (charged for an Order that is not one of
-- our payments; a second charge, or one held for a payment already closed, refunded through Hyp's portal) is closed by
-- an operator from what Hyp's portal shows: as what, by whom, when and why. It then leaves the review queue, and is
-- never refunded again through this API nor taken to complete a payment. The row itself stays (the journal is never
-- deleted), and the audit trail has the action ('close'). Adds only. Safe to re-run.
ALTER TABLE public.hypay_transactions
  ADD COLUMN IF NOT EXISTS closed_as text CHECK (closed_as IN ('refunded_in_hyp')),
  ADD COLUMN IF NOT EXISTS closed_by text,
  ADD COLUMN IF NOT EXISTS closed_at timestamptz,
  ADD COLUMN IF NOT EXISTS closed_reason text CHECK (length(closed_reason) <= 500);

ALTER TABLE public.admin_audit_log DROP CONSTRAINT IF EXISTS admin_audit_log_action_check;
ALTER TABLE public.admin_audit_log ADD CONSTRAINT admin_audit_log_action_check
  CHECK (action IN ('resolve', 'refund', 'cleanup', 'close'));
