-- 019: the invoice Hyp numbered for a transaction (its `Hesh`, read only from an answer or a delivery whose fields
-- are trusted) is kept on the transaction's journal row, whatever was decided. A saved-card charge or a callback sent
-- to review still names its invoice, and an operator who completes the payment records it in public.invoices, as a
-- callback's grant does. Adds a nullable column only (no rewrite, no scan of the journal). Safe to re-run.
ALTER TABLE public.hypay_transactions ADD COLUMN IF NOT EXISTS invoice_number text;
