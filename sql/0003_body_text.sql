-- The published text of each order, byte for byte, beside its jsonb. Every
-- replica's cache serves this column, so bodies are identical everywhere and
-- are exactly what was published; `data` stays the queryable, comparable form.
-- Loading it skips PostgreSQL's jsonb-to-text conversion, which dominated the
-- start-up load and every listener's reads in the profile. Rows stored before
-- this migration have no body: readers fall back to data::text.
ALTER TABLE orders ADD COLUMN body text COMPRESSION lz4;
