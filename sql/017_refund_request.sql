-- 017: a refund's row keeps the request it was made for. Adds only (a nullable column on the backend's own table,
-- no default: no rewrite). Safe to re-run.

-- A refund's Idempotency-Key is checked against its request by the idempotency record, which expires (7 days) and is
-- purged. The refund's own row outlives it: a key sent again afterwards finds the row, and its outcome was answered
-- for whatever the new request asked (another amount, another transaction). The row now holds the request (amount
-- or "all that remains", currency, reason, the Hyp transaction named, the original amount named), and a request that
-- differs is refused as the key reused (422). Rows written before this have none: answered as before.
ALTER TABLE public.refunds ADD COLUMN IF NOT EXISTS request jsonb;
