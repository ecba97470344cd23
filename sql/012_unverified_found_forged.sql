-- 012: a callback kept because it could not be verified (our configuration, Hyp unreachable) that a later check found
-- forged (the same text sent again: Hyp's redelivery, or an operator posting it to /hypay/notify) is marked so. The
-- mark alone changes nothing (one check of a public text is no proof): it lets an operator who finds no such
-- transaction in Hyp's portal fail the payment it held pending; then its Id leaves the review queue. Adds only.
-- Safe to re-run.
ALTER TABLE public.hypay_unverified_callbacks
  ADD COLUMN IF NOT EXISTS found_forged_at timestamptz;
