#!/usr/bin/env bash
# Keeps writing legacy rows: new customers and orders moving through new → paid → shipped, every 7th order cancelled
# while still new, every 5th customer changing e-mail — so each business event of config/shop.yaml shows up.
# WORKLOAD_ROUNDS=n stops after n rounds (default: never); WORKLOAD_PAUSE is the pause between rounds (default 1 s).
set -euo pipefail
export PGHOST=${PGHOST:-postgres} PGUSER=${PGUSER:-postgres} PGDATABASE=${PGDATABASE:-shop}
rounds=${WORKLOAD_ROUNDS:-0}
i=0
while [ "$rounds" -eq 0 ] || [ "$i" -lt "$rounds" ]; do
  i=$((i + 1))
  psql -q -v ON_ERROR_STOP=1 <<SQL
WITH c AS (INSERT INTO public.customers (eml, nm) VALUES ('user$i@example.com', 'User $i') RETURNING id),
     o AS (INSERT INTO public.orders (cust_id, amt_cents) SELECT id, (random() * 10000)::int FROM c RETURNING id)
INSERT INTO legacy."Order Lines" ("OrderId", "LineNo", sku, qty, unit_cents)
  SELECT id, 1, 'SKU-' || $i, 1 + $i % 3, 999 FROM o;
UPDATE public.orders SET status = 'cancelled' WHERE status = 'new' AND id % 7 = 0;
UPDATE public.orders SET status = 'paid' WHERE status = 'new';
UPDATE public.orders SET status = 'shipped', shipped_at = now() WHERE status = 'paid' AND id % 3 = 0;
UPDATE public.customers SET eml = 'new' || eml WHERE id = $i AND $i % 5 = 0;
SQL
  sleep "${WORKLOAD_PAUSE:-1}"
done
