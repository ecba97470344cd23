-- 016: a stored answer's exact text never outlives the answer it is the text of. Adds only (a function and a trigger
-- on the backend's own table). Safe to re-run.

-- A replay returns response_text when there is one (009). A release from before 009 writes response_data alone: the
-- takeover of an expired record clears response_data and leaves the text of the record's earlier run, and its
-- completion writes its own answer there. Were that release redeployed on this schema (a rollback), the next release
-- would replay the earlier run's text instead of the record's own answer. Any write that changes response_data and
-- leaves response_text as it was (that release, the web app) therefore clears the text: the answer is read from
-- response_data, as for rows written before 009. This release writes both columns in each statement: the trigger
-- changes nothing it writes.
CREATE OR REPLACE FUNCTION public.idempotency_text_follows_data() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  NEW.response_text := NULL;
  RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER idempotency_text_follows_data
  BEFORE UPDATE OF response_data ON public.idempotency_keys
  FOR EACH ROW
  WHEN (NEW.response_data IS DISTINCT FROM OLD.response_data AND NEW.response_text IS NOT DISTINCT FROM OLD.response_text)
  EXECUTE FUNCTION public.idempotency_text_follows_data();

-- Called by the trigger alone (a trigger's function is not checked for EXECUTE when it fires): nobody calls it.
REVOKE ALL ON FUNCTION public.idempotency_text_follows_data() FROM PUBLIC;
