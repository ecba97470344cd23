-- 005: payments_backend, the least-privilege role the functions use. Adds a role, grants and policies;
-- takes back only what Supabase's default privileges gave its browser roles on the backend's own tables.
-- Safe to re-run.
--
-- A NOLOGIN group role: not a superuser, owns nothing, bypasses no row level security, is a member of
-- no other role. The functions log in as a LOGIN role that is a member of it (docs/deploy.md). It gets
-- exactly what the backend's SQL needs (layers/shared/payments/adapters/*.py, idempotency/persistence.py);
-- a migration that makes the backend use another table or column grants it there, in the same file.
-- Roles are per cluster, not per database: the role is created once, its grants are per database.

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'payments_backend') THEN
    BEGIN
      CREATE ROLE payments_backend NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
      NULL;  -- created meanwhile by a migration of another database on the same server
    END;
  END IF;
  -- An existing role is taken as it is only when it is least privilege: anything more is refused, not fixed
  -- (only a superuser may take such attributes away).
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'payments_backend'
               AND (rolsuper OR rolbypassrls OR rolcreaterole OR rolcreatedb OR rolreplication))
     OR EXISTS (SELECT 1 FROM pg_auth_members WHERE member = 'payments_backend'::regrole)
     OR EXISTS (SELECT 1 FROM pg_class WHERE relowner = 'payments_backend'::regrole) THEN
    RAISE EXCEPTION 'role payments_backend is not least privilege (superuser, BYPASSRLS, CREATEROLE, CREATEDB, '
                    'REPLICATION, a member of another role, or the owner of a table): fix it, then migrate again';
  END IF;
END $$;

-- No CREATE: the backend never changes the schema (migrations run as the tables' owner).
GRANT USAGE ON SCHEMA public TO payments_backend;

GRANT SELECT, INSERT, UPDATE, DELETE ON public.idempotency_keys TO payments_backend;  -- records; cleanup purges
GRANT SELECT, INSERT, UPDATE ON public.payments TO payments_backend;                  -- never deleted
GRANT SELECT ON public.credit_packs TO payments_backend;                              -- prices
-- The web app's profiles: the buyer's name and e-mail, and the balance a grant adds to; no other column.
GRANT SELECT (id, email, full_name, credits), UPDATE (credits, updated_at) ON public.profiles TO payments_backend;
GRANT SELECT, INSERT ON public.credit_transactions TO payments_backend;               -- "granted before?", grants
-- Hyp's invoice number. SELECT: ON CONFLICT reads the arbiter index's columns and predicate.
GRANT SELECT, INSERT ON public.invoices TO payments_backend;
GRANT SELECT, INSERT, UPDATE ON public.saved_cards TO payments_backend;               -- one card per user, upserted
GRANT SELECT, INSERT, UPDATE, DELETE ON public.rate_limits TO payments_backend;       -- counters; cleanup purges
GRANT SELECT, INSERT, UPDATE ON public.hypay_transactions TO payments_backend;        -- the journal, never deleted
GRANT SELECT, INSERT, UPDATE ON public.hypay_unverified_callbacks TO payments_backend; -- append-only, counted

-- Row level security: the backend acts for every user, so on every table it uses it sees every row
-- (the grants above are what limit it). A policy for this role only; inert where RLS is off (the web
-- app's tables today), and what keeps the backend working if the web app turns RLS on there.
-- The backend-only tables (003, 004) have RLS on and no other policy. BYPASSRLS is not an option:
-- only a superuser may give it (Supabase's postgres is not one).
DO $$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['idempotency_keys', 'payments', 'credit_packs', 'profiles', 'credit_transactions',
                           'invoices', 'saved_cards', 'rate_limits', 'hypay_transactions',
                           'hypay_unverified_callbacks'] LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_policies
                    WHERE schemaname = 'public' AND tablename = t AND policyname = 'payments_backend_all_rows') THEN
      EXECUTE format('CREATE POLICY payments_backend_all_rows ON public.%I AS PERMISSIVE FOR ALL TO payments_backend'
                     ' USING (true) WITH CHECK (true)', t);
    END IF;
  END LOOP;
END $$;

-- The backend-only tables hold nothing the web app's browser clients may see or change (Hyp tokens, the
-- journal, counters, the migrations' ledger). Supabase's default privileges grant every new table in public
-- to anon and authenticated: taken back here, and row level security with no policy for them stays on as
-- the second wall. On a server without those roles there is nothing to take back. schema_migrations is the
-- runner's (ops/migrate.py creates it before any file runs); absent when psql runs this file first, and
-- then handled when the runner applies the file again.
DO $$
DECLARE
  t text;
  r text;
BEGIN
  FOREACH t IN ARRAY ARRAY['saved_cards', 'rate_limits', 'hypay_transactions', 'hypay_unverified_callbacks',
                           'schema_migrations'] LOOP
    CONTINUE WHEN to_regclass('public.' || t) IS NULL;
    IF NOT (SELECT relrowsecurity FROM pg_class WHERE oid = to_regclass('public.' || t)) THEN
      EXECUTE format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', t);
    END IF;
    EXECUTE format('REVOKE ALL ON public.%I FROM PUBLIC', t);
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
      IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
        EXECUTE format('REVOKE ALL ON public.%I FROM %I', t, r);
      END IF;
    END LOOP;
  END LOOP;
END $$;
