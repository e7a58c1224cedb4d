-- A small legacy shop schema, the kind ficus is pointed at: cryptic names, cents, status strings.
-- Runs once when the compose Postgres volume is created.

DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ficus') THEN
    CREATE ROLE ficus WITH LOGIN REPLICATION PASSWORD 'ficus';
  END IF;
END $$;

CREATE TABLE public.customers (
    id          bigserial PRIMARY KEY,
    eml         text NOT NULL,          -- e-mail
    nm          text,                   -- display name
    crt_ts      timestamptz NOT NULL DEFAULT now()
);
-- Full before-images, so CustomerEmailChanged can compare old.eml and new.eml.
ALTER TABLE public.customers REPLICA IDENTITY FULL;

CREATE TABLE public.orders (
    id          bigserial PRIMARY KEY,
    cust_id     bigint NOT NULL REFERENCES public.customers (id),
    status      text NOT NULL DEFAULT 'new',   -- new | paid | shipped | cancelled
    amt_cents   integer NOT NULL,
    currency    char(3) NOT NULL DEFAULT 'EUR',
    shipped_at  timestamptz,
    note        text
);
-- Full before-images, so state transitions (old.status → new.status) are visible.
ALTER TABLE public.orders REPLICA IDENTITY FULL;

CREATE SCHEMA legacy;
CREATE TABLE legacy."Order Lines" (
    "OrderId"   bigint NOT NULL,
    "LineNo"    integer NOT NULL,
    sku         text NOT NULL,
    qty         integer NOT NULL,
    unit_cents  integer NOT NULL,
    PRIMARY KEY ("OrderId", "LineNo")
);
-- Full before-images here too: the raw change events of its updates and deletes carry the whole old line, not only
-- the key (and `ficus check` has nothing to warn about on a clean start).
ALTER TABLE legacy."Order Lines" REPLICA IDENTITY FULL;

-- Least privilege: ficus reads the captured tables and owns its publication.
GRANT SELECT ON public.customers, public.orders TO ficus;
GRANT USAGE ON SCHEMA legacy TO ficus;
GRANT SELECT ON legacy."Order Lines" TO ficus;
-- Publications need the tables' owner; create it here so the ficus role does not need ownership.
CREATE PUBLICATION ficus FOR TABLE public.customers, public.orders, legacy."Order Lines";
