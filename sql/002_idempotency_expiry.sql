-- 002: what the Powertools persistence layer needs in idempotency_keys. Adds, never changes:
-- the web app's rows keep NULL here, which is how the layer tells them from its own.
-- Safe to re-run.

-- Unix seconds (Lambda clock) after which the record may be replaced or purged.
ALTER TABLE public.idempotency_keys ADD COLUMN IF NOT EXISTS expiry_timestamp bigint;
-- Unix milliseconds after which an in-progress record's holder is known to have timed out.
ALTER TABLE public.idempotency_keys ADD COLUMN IF NOT EXISTS in_progress_expiry_timestamp bigint;

COMMENT ON COLUMN public.idempotency_keys.expiry_timestamp IS
  'Powertools idempotency: record expiry, Unix seconds. NULL on rows written by the web app.';
COMMENT ON COLUMN public.idempotency_keys.in_progress_expiry_timestamp IS
  'Powertools idempotency: in-progress expiry, Unix milliseconds (the holder''s Lambda deadline).';

-- The cleanup purges by expiry in bounded batches.
CREATE INDEX IF NOT EXISTS idempotency_keys_expiry_idx
  ON public.idempotency_keys (expiry_timestamp) WHERE expiry_timestamp IS NOT NULL;
CREATE INDEX IF NOT EXISTS idempotency_keys_web_updated_idx
  ON public.idempotency_keys (updated_at) WHERE expiry_timestamp IS NULL;
