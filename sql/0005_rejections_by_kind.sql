-- GET /rejections?kind= pages one kind newest first, keyset by id: an index
-- on (kind, id) answers that with one range scan, however many dead letters
-- of other kinds lie between. It also serves every lookup by kind alone, so
-- it replaces the index on (kind).
CREATE INDEX rejected_messages_kind_id ON rejected_messages (kind, id);
DROP INDEX rejected_messages_kind;
