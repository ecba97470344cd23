-- 015: refunds found by the number of the transaction they send back, however its Id is written. A callback approving
-- a Hyp transaction reads, in the statement that locks its payment, whether a refund of another payment sent that
-- transaction's money back (an operator named it as that payment's lost saved-card charge): then the payment goes to
-- a human instead of being granted credits for money that went back. Adds only (a non-unique index on the backend's
-- own table). Safe to re-run.
CREATE INDEX IF NOT EXISTS refunds_original_number_idx
  ON public.refunds ((ltrim(original_hypay_id, '0')));
