-- Dead letters become idempotent (issue 14 item 2). A Term ack lost on the
-- way, or a COMMIT whose answer was lost and is retried, delivers the same
-- message again, and its dead letter used to be written a second time.
--
-- A message is identified by its stream sequence together with the time
-- the server stored it: sequences restart at 1 when a stream is deleted and
-- re-created, but a re-created stream's message 5 is not stored in the same
-- microsecond as the old one's. (The stream name would not tell the two
-- apart: a re-created stream keeps its name.)
ALTER TABLE rejected_messages ADD COLUMN published_at timestamptz;

-- Rows written before this migration have no publish time, so the index
-- below does not cover them. Their duplicates are removed here: rows with
-- the same sequence and the same kind, reason and payload, keeping the
-- first. (Two different messages would have to share a sequence, through a
-- re-created stream, and be byte for byte the same to be merged; the row
-- kept then still says all there is to say about either.)
DELETE FROM rejected_messages later
USING rejected_messages first
WHERE later.stream_sequence = first.stream_sequence
  AND later.id > first.id
  AND later.kind = first.kind
  AND later.reason = first.reason
  AND later.payload_length = first.payload_length
  AND later.payload = first.payload;

-- The writer inserts with ON CONFLICT DO NOTHING against this index. A row
-- without a sequence or publish time (NULL) is never a conflict.
CREATE UNIQUE INDEX rejected_messages_message
    ON rejected_messages (stream_sequence, published_at);
