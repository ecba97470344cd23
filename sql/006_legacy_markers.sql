-- 006: the marker of rows adopted from the web app's history. Adds only. Safe to re-run.
--
-- `python -m ops.migrate --adopt-legacy` (MIGRATE_ADOPT_LEGACY=1 make migrate) takes existing rows that
-- 003's unique indexes refuse forward without deleting or changing them: of each set of duplicates the
-- earliest row stays in the index, every later one gets legacy_duplicate_of = the kept row's id and is
-- left out of it (the index is then created `WHERE ... AND legacy_duplicate_of IS NULL`). NULL on every
-- other row and on every row written since; nothing but the migration runner sets it. Added here on
-- every database, so statements may name it whether or not a database had anything to adopt.

ALTER TABLE public.payments ADD COLUMN IF NOT EXISTS legacy_duplicate_of uuid;
ALTER TABLE public.credit_transactions ADD COLUMN IF NOT EXISTS legacy_duplicate_of uuid;
ALTER TABLE public.invoices ADD COLUMN IF NOT EXISTS legacy_duplicate_of uuid;

COMMENT ON COLUMN public.payments.legacy_duplicate_of IS
  'Adopted legacy row: its hypay_transaction_id is also on this (earlier) payment. To review; see docs/deploy.md.';
COMMENT ON COLUMN public.credit_transactions.legacy_duplicate_of IS
  'Adopted legacy row: a second purchase grant for its payment; the first grant is this one. To review.';
COMMENT ON COLUMN public.invoices.legacy_duplicate_of IS
  'Adopted legacy row: a second invoice for its payment; the first invoice is this one. To review.';
