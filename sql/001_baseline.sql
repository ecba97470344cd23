-- 001 baseline: the production tables as the web app created them, for an empty database.
-- On the production database every statement here is a no-op. Safe to re-run.

CREATE TABLE IF NOT EXISTS public.profiles (
  id          uuid PRIMARY KEY,
  email       text,
  full_name   text,
  credits     integer NOT NULL DEFAULT 0,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.credit_packs (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name        text NOT NULL,
  credits     integer NOT NULL,
  price       numeric(10,2) NOT NULL,
  is_active   boolean NOT NULL DEFAULT true,
  created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.payments (
  id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id               uuid NOT NULL REFERENCES public.profiles(id),
  credit_pack_id        uuid REFERENCES public.credit_packs(id),
  amount                numeric(10,2) NOT NULL,
  status                text NOT NULL DEFAULT 'pending',
  payment_url           text,
  hypay_transaction_id  text,
  created_at            timestamptz NOT NULL DEFAULT now(),
  updated_at            timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE public.payments ADD COLUMN IF NOT EXISTS idempotency_key text;
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'unique_idempotency_key'
                 AND conrelid = 'public.payments'::regclass) THEN
    ALTER TABLE public.payments ADD CONSTRAINT unique_idempotency_key UNIQUE (idempotency_key);
  END IF;
END $$;

CREATE TABLE IF NOT EXISTS public.credit_transactions (
  id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id      uuid NOT NULL REFERENCES public.profiles(id),
  amount       integer NOT NULL,
  type         text NOT NULL,
  description  text,
  payment_id   uuid REFERENCES public.payments(id),
  created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.invoices (
  id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id         uuid NOT NULL REFERENCES public.profiles(id),
  payment_id      uuid REFERENCES public.payments(id),
  invoice_number  text,
  amount          numeric(10,2) NOT NULL,
  created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.videos (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id     uuid NOT NULL REFERENCES public.profiles(id),
  title       text,
  created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.transcripts (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  video_id    uuid NOT NULL REFERENCES public.videos(id),
  content     text,
  created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.idempotency_keys (
  key         text PRIMARY KEY,
  payment_id  uuid REFERENCES public.payments(id),
  created_at  timestamptz DEFAULT now()
);
ALTER TABLE public.idempotency_keys
  ADD COLUMN IF NOT EXISTS id uuid DEFAULT gen_random_uuid(),
  ADD COLUMN IF NOT EXISTS request_hash text,
  ADD COLUMN IF NOT EXISTS response_data jsonb,
  ADD COLUMN IF NOT EXISTS status text CHECK (status IN ('pending','completed','failed')) DEFAULT 'pending',
  ADD COLUMN IF NOT EXISTS updated_at timestamptz DEFAULT now();
