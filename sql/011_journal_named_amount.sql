-- 011: an amount Hyp's answer gave unreadably, as an operator read it from Hyp's transactions to refund it, is kept on
-- the journal's row with who named it. A named amount is never taken for Hyp's own: a refund of that transaction is
-- always zikoyAPI (Hyp caps it), its credits are counted against the payment's price, and the operator may correct
-- the amount while no refund of it moved or may have moved money. Adds only. Safe to re-run.
ALTER TABLE public.hypay_transactions
  ADD COLUMN IF NOT EXISTS amount_named_by text;
