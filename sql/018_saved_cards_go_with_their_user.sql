-- 018: a saved card never stops the web app from deleting a user or a payment. Changes only the backend's own table's
-- foreign keys (saved_cards, 003). Safe to re-run.

-- 003 made saved_cards refer to profiles and payments with no rule for their deletion: once the backend had kept a
-- user's card, the web app's deletion of that user (its payments, then the profile), which worked on the schema it
-- knows, failed on the card it does not know of. A card now goes with its user (it is theirs, and a Hyp token is
-- nothing to keep once they are gone), and stays when the payment that saved it is deleted (it is the user's card;
-- it no longer names that payment).
--
-- Refunds (007) still refer to their payment with no rule: a refund is a record of money sent back and is kept, so a
-- payment refunded through this backend cannot be deleted (docs/integration.md: anonymise the user instead).
DO $migration$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_constraint
              WHERE conrelid = 'public.saved_cards'::regclass AND conname = 'saved_cards_user_id_fkey'
                AND confdeltype <> 'c') THEN
    ALTER TABLE public.saved_cards DROP CONSTRAINT saved_cards_user_id_fkey;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_constraint
                  WHERE conrelid = 'public.saved_cards'::regclass AND conname = 'saved_cards_user_id_fkey') THEN
    ALTER TABLE public.saved_cards ADD CONSTRAINT saved_cards_user_id_fkey
      FOREIGN KEY (user_id) REFERENCES public.profiles(id) ON DELETE CASCADE;
  END IF;
  IF EXISTS (SELECT 1 FROM pg_constraint
              WHERE conrelid = 'public.saved_cards'::regclass AND conname = 'saved_cards_payment_id_fkey'
                AND confdeltype <> 'n') THEN
    ALTER TABLE public.saved_cards DROP CONSTRAINT saved_cards_payment_id_fkey;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_constraint
                  WHERE conrelid = 'public.saved_cards'::regclass AND conname = 'saved_cards_payment_id_fkey') THEN
    ALTER TABLE public.saved_cards ADD CONSTRAINT saved_cards_payment_id_fkey
      FOREIGN KEY (payment_id) REFERENCES public.payments(id) ON DELETE SET NULL;
  END IF;
END
$migration$;
