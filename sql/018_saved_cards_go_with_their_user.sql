-- 018: a saved card never stops the web app from deleting a user or a payment. Changes only the backend's own table's
-- foreign keys (saved_cards, 003); replacing them locks profiles and payments for a moment (their key's triggers
-- change), taken up front by the migration runner, which gives way to the web app's requests. Safe to re-run.

-- 003 made saved_cards refer to profiles and payments with no rule for their deletion: once the backend had kept a
-- user's card, the web app's deletion of that user (its payments, then the profile), which worked on the schema it
-- knows, failed on the card it does not know of. A card now goes with its user (it is theirs, and a Hyp token is
-- nothing to keep once they are gone), and stays when the payment that saved it is deleted (it is the user's card;
-- it no longer names that payment).
--
-- Refunds (007) still refer to their payment with no rule: a refund is a record of money sent back and is kept, so a
-- payment refunded through this backend cannot be deleted (docs/integration.md: anonymise the user instead).
-- The keys are found by the column they constrain, whatever their names (a restore by another tool may have renamed
-- them): every one of saved_cards(user_id) -> profiles and saved_cards(payment_id) -> payments without the rule is
-- dropped, and the one with the rule added when none has it.
DO $migration$
DECLARE
  wanted record;
  found record;
BEGIN
  FOR wanted IN
    -- The referenced tables named as plain strings: dropping a key locks its table ACCESS EXCLUSIVE (its triggers go),
    -- and the migration runner reads the tables a file with statements built at run time locks from such strings, to
    -- take every lock before any file runs.
    SELECT w.col, to_regclass('public.' || w.parent_name) AS parent, w.rule, w.clause
      FROM (VALUES ('user_id', 'profiles', 'c', 'REFERENCES public.profiles(id) ON DELETE CASCADE'),
                   ('payment_id', 'payments', 'n', 'REFERENCES public.payments(id) ON DELETE SET NULL'))
           AS w(col, parent_name, rule, clause)
  LOOP
    FOR found IN
      SELECT c.conname FROM pg_constraint c
       WHERE c.conrelid = 'public.saved_cards'::regclass AND c.contype = 'f' AND c.confrelid = wanted.parent
         AND c.conkey = ARRAY[(SELECT attnum FROM pg_attribute
                                WHERE attrelid = 'public.saved_cards'::regclass AND attname = wanted.col)]
         AND c.confdeltype <> wanted.rule
    LOOP
      EXECUTE format('ALTER TABLE public.saved_cards DROP CONSTRAINT %I', found.conname);
    END LOOP;
    IF NOT EXISTS (
      SELECT 1 FROM pg_constraint c
       WHERE c.conrelid = 'public.saved_cards'::regclass AND c.contype = 'f' AND c.confrelid = wanted.parent
         AND c.conkey = ARRAY[(SELECT attnum FROM pg_attribute
                                WHERE attrelid = 'public.saved_cards'::regclass AND attname = wanted.col)])
    THEN
      IF EXISTS (SELECT 1 FROM pg_constraint
                  WHERE conrelid = 'public.saved_cards'::regclass AND conname = 'saved_cards_' || wanted.col || '_fkey')
      THEN  -- the usual name is another key's (the column refers to another table too): the server names this one
        EXECUTE format('ALTER TABLE public.saved_cards ADD FOREIGN KEY (%I) %s', wanted.col, wanted.clause);
      ELSE
        EXECUTE format('ALTER TABLE public.saved_cards ADD CONSTRAINT %I FOREIGN KEY (%I) %s',
                       'saved_cards_' || wanted.col || '_fkey', wanted.col, wanted.clause);
      END IF;
    END IF;
  END LOOP;
END
$migration$;
