-- Orders, the dead letters, and the trigger that tells every replica's
-- listener which keys were inserted. Applied once, under an advisory lock,
-- by whichever replica starts first (src/store.rs: migrate).

CREATE TABLE orders (
    -- Assigned at insert, so it orders pages newest first. Commit order is not
    -- id order: listeners never rely on ids to find what they missed.
    id          bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    order_uid   text        PRIMARY KEY,
    data        jsonb       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rejected_messages (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at     timestamptz NOT NULL DEFAULT now(),
    kind            text        NOT NULL,
    reason          text        NOT NULL,
    stream_sequence bigint,
    payload_length  integer     NOT NULL,
    -- The first 64 KiB of the raw message, whatever its bytes.
    payload         bytea       NOT NULL
);

CREATE INDEX rejected_messages_kind ON rejected_messages (kind);

-- One notification per chunk of inserted keys, never the rows: a NOTIFY
-- payload is capped at 8000 bytes, and a uid is at most 64 characters of
-- [A-Za-z0-9_-], so 100 uids joined by commas always fit.
CREATE FUNCTION notify_orders_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    chunk text;
BEGIN
    FOR chunk IN
        SELECT string_agg(order_uid, ',')
        FROM (SELECT order_uid, (row_number() OVER () - 1) / 100 AS n FROM inserted) AS numbered
        GROUP BY n
    LOOP
        PERFORM pg_notify('orders_inserted', chunk);
    END LOOP;
    RETURN NULL;
END
$$;

CREATE TRIGGER orders_inserted
AFTER INSERT ON orders
REFERENCING NEW TABLE AS inserted
FOR EACH STATEMENT EXECUTE FUNCTION notify_orders_inserted();
