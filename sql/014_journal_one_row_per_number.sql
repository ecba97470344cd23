-- 014: one journal row per Hyp transaction number, however its Id is written. Hyp writes its Ids without leading zeros,
-- and the journal keeps them as Hyp sent them and compares them as text, so "0123" would be a second row (a second
-- credit) for transaction 123 were Hyp ever to send both spellings, or an operator's "123" meet Hyp's "0123". This
-- unique index on the number refuses that second row: the second spelling's delivery is "not yet" and alarmed
-- (CallbackNotSettled), never granted. Adds only (no row is changed; there is no such pair to refuse today). Safe to
-- re-run.
CREATE UNIQUE INDEX IF NOT EXISTS hypay_transactions_number_key
  ON public.hypay_transactions ((ltrim(hypay_id, '0')));
