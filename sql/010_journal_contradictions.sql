-- 010: a verified delivery of a Hyp transaction that contradicts the journal's decided row (another CCode or
-- amount for the same payment) is kept on that row: counted, with what it said and when. The decision itself
-- is never changed by it (the money already moved as first decided); the alarm sends a human. Adds only. Safe
-- to re-run.
ALTER TABLE public.hypay_transactions
  ADD COLUMN IF NOT EXISTS contradictions integer NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS last_contradiction text,
  ADD COLUMN IF NOT EXISTS last_contradiction_at timestamptz;
