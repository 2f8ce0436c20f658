-- Back from 0004: with a bounded cache (CACHE_MAX_BYTES) rows are looked up
-- by id again. The start-up load reads the newest orders first and stops
-- when the budget is full, `GET /orders` pages keyset by id from PostgreSQL,
-- and `/random-order` reads min(id), max(id) and the first id at or after a
-- random point: each one index range, however large the table. Without it
-- each would scan and sort the whole table. It costs every insert a second
-- B-tree (0004 measured that), paid in unbounded mode too: one schema for
-- both modes, so a replica can switch mode by a restart.
CREATE INDEX orders_id ON orders (id);
