-- Orders over about 2 KB are compressed by TOAST. pglz was the largest single
-- item in the ingest profile (3.7% of all CPU, `make bench`); lz4 compresses
-- several times faster. Applies to rows written from now on.
ALTER TABLE orders ALTER COLUMN data SET COMPRESSION lz4;
