-- 009: the idempotency layer keeps each stored answer's exact text. Adds only. Safe to re-run.

-- response_text: the answer as the function produced it, byte for byte (a replay returns exactly it: jsonb
-- reorders keys and refuses \u0000 and NaN, which the Powertools utility's own stores keep). response_data,
-- the web app's jsonb column, still gets the same answer wherever jsonb can hold it (NULL where it cannot).
-- Rows written before this migration have no text: they are read from response_data as before.
ALTER TABLE public.idempotency_keys ADD COLUMN IF NOT EXISTS response_text text;
