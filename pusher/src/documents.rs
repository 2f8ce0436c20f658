//! `--from FILE`: a file holds either one JSON document or JSON lines. Each
//! document is published byte for byte, under its `order_uid` as Nats-Msg-Id
//! when it has one.

/// One document to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub bytes: Vec<u8>,
    /// The `order_uid` string, when the document is an object that has one.
    pub order_uid: Option<String>,
}

/// Splits a file into documents: the whole file when it parses as one JSON
/// value, else every non-blank line (even lines that are not JSON: they are
/// published as they are, which is how bad input is replayed).
pub fn split_documents(bytes: &[u8]) -> Vec<Document> {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
        let trimmed = trim(bytes);
        return vec![Document {
            bytes: trimmed.to_vec(),
            order_uid: uid_of(&value),
        }];
    }
    bytes
        .split(|&b| b == b'\n')
        .map(trim)
        .filter(|line| !line.is_empty())
        .map(|line| Document {
            bytes: line.to_vec(),
            order_uid: serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|value| uid_of(&value)),
        })
        .collect()
}

fn uid_of(value: &serde_json::Value) -> Option<String> {
    value.get("order_uid")?.as_str().map(str::to_owned)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pretty_document() {
        let model = include_bytes!("../../testdata/model.json");
        let docs = split_documents(model);
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].order_uid.as_deref(), Some("b563feb7b2b84b6test"));
        assert!(docs[0].bytes.ends_with(b"}"));
    }

    #[test]
    fn json_lines_keep_bad_lines() {
        let text = b"{\"order_uid\":\"a\"}\n\n  [1,2]\r\nnot json\n{\"order_uid\":\"b\"}\n";
        let docs = split_documents(text);
        let uids: Vec<_> = docs.iter().map(|d| d.order_uid.clone()).collect();
        assert_eq!(uids, [Some("a".into()), None, None, Some("b".into())]);
        assert_eq!(docs[2].bytes, b"not json");
        assert_eq!(docs[1].bytes, b"[1,2]");
    }
}
