-- 012: a callback kept because it could not be verified (our configuration, Hyp unreachable) that a later check found
-- forged (the same text sent again: Hyp's redelivery, or an operator posting it to /hypay/notify) is marked so. Once
-- every callback kept for a Hyp Id is found forged, that Id leaves the review queue and no longer keeps its payment
-- pending: the cleanup expires it as any payment Hyp never paid. Adds only. Safe to re-run.
ALTER TABLE public.hypay_unverified_callbacks
  ADD COLUMN IF NOT EXISTS found_forged_at timestamptz;
