-- 008: the rate limit counts a request once, however often its statement is sent. Adds only. Safe to re-run.

-- The last request counted in the window: the counting upsert adds one only for a request other than the last,
-- so the statement is safe to send twice (the database layer resends a statement whose connection dropped
-- before its answer arrived). A client's retry with the same Idempotency-Key is the same request.
ALTER TABLE public.rate_limits ADD COLUMN IF NOT EXISTS last_request text;
