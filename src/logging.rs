//! Logging to stderr, one line per message: stdout is kept for the start-up
//! line (`{"http_addr": …}`) alone. Set up once by `main`, in one of two
//! formats: text for people, or one JSON object per line for a log
//! pipeline. A call site attaches fields with the `log` crate's key-values
//! (`log::info!(stream_sequence = seq; "…")`); both formats print them.

use log::kv::{self, Key, Value, VisitSource, VisitValue};
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::OnceLock;

/// How each log line is written (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `[timestamp LEVEL target] message key=value …`, control characters
    /// escaped.
    #[default]
    Text,
    /// `{"timestamp":…,"level":…,"target":…,"message":…,"key":value,…}`.
    Json,
}

/// The format `init` chose, for `fatal`, which writes without the logger.
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Installs the logger with an `env_logger` filter (`info`,
/// `order_service=debug,warn`, …). In JSON mode a panic is logged as one
/// JSON line too, so that nothing on stderr breaks the pipeline's parser.
pub fn init(filter: &str, format: LogFormat) {
    let _ = FORMAT.set(format);
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(filter);
    match format {
        LogFormat::Text => builder.format(|out, record| {
            let mut line = format!("{}", record.args());
            write_fields(&mut line, record.key_values());
            writeln!(
                out,
                "[{} {:<5} {}] {}",
                out.timestamp_millis(),
                record.level(),
                record.target(),
                one_line(&line)
            )
        }),
        LogFormat::Json => {
            std::panic::set_hook(Box::new(log_panic));
            builder.format(|out, record| {
                let line = json_line(
                    &now(),
                    record.level().as_str(),
                    record.target(),
                    &record.args().to_string(),
                    record.key_values(),
                );
                writeln!(out, "{line}")
            })
        }
    };
    builder.init();
}

/// Reports the error that ends the process, in the chosen format, whatever
/// the log filter says.
pub fn fatal(message: &str) {
    match FORMAT.get() {
        Some(LogFormat::Json) => eprintln!(
            "{}",
            json_line(&now(), "ERROR", "order_service", message, &NO_FIELDS)
        ),
        _ => eprintln!("order-service: {}", one_line(message)),
    }
}

/// A log message as one line: control characters (newlines, ESC) from
/// servers' error messages or rejected input are written as escapes, so no
/// text can forge a log line or drive a terminal.
fn one_line(message: &str) -> std::borrow::Cow<'_, str> {
    if !message.contains(char::is_control) {
        return message.into();
    }
    let mut line = String::with_capacity(message.len() + 16);
    for c in message.chars() {
        if c.is_control() {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
    }
    line.into()
}

/// Keys the JSON line sets itself; a field of the same name is dropped
/// rather than written twice (a parser would keep either).
const RESERVED: [&str; 4] = ["timestamp", "level", "target", "message"];

/// One JSON object, fixed keys first. serde_json escapes what needs it, so
/// the line is valid JSON and one line whatever the message holds.
fn json_line(
    timestamp: &str,
    level: &str,
    target: &str,
    message: &str,
    fields: &dyn kv::Source,
) -> String {
    let string = |s: &str| serde_json::Value::from(s).to_string();
    let mut line = format!(
        "{{\"timestamp\":{},\"level\":{},\"target\":{},\"message\":{}",
        string(timestamp),
        string(level),
        string(target),
        string(message)
    );
    let _ = fields.visit(&mut JsonFields(&mut line));
    line.push('}');
    line
}

struct JsonFields<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), kv::Error> {
        if RESERVED.contains(&key.as_str()) {
            return Ok(());
        }
        let mut json = JsonValue(serde_json::Value::Null);
        value.visit(&mut json)?;
        let _ = write!(
            self.0,
            ",{}:{}",
            serde_json::Value::from(key.as_str()),
            json.0
        );
        Ok(())
    }
}

/// A field's value as JSON: numbers and booleans as such, `None` as null,
/// anything else as its `Display` text.
struct JsonValue(serde_json::Value);

impl<'v> VisitValue<'v> for JsonValue {
    fn visit_any(&mut self, value: Value) -> Result<(), kv::Error> {
        self.0 = value.to_string().into();
        Ok(())
    }
    fn visit_null(&mut self) -> Result<(), kv::Error> {
        self.0 = serde_json::Value::Null;
        Ok(())
    }
    fn visit_u64(&mut self, value: u64) -> Result<(), kv::Error> {
        self.0 = value.into();
        Ok(())
    }
    fn visit_i64(&mut self, value: i64) -> Result<(), kv::Error> {
        self.0 = value.into();
        Ok(())
    }
    fn visit_f64(&mut self, value: f64) -> Result<(), kv::Error> {
        // NaN and infinities have no JSON form: null, as serde_json does.
        self.0 = value.into();
        Ok(())
    }
    fn visit_bool(&mut self, value: bool) -> Result<(), kv::Error> {
        self.0 = value.into();
        Ok(())
    }
    fn visit_str(&mut self, value: &str) -> Result<(), kv::Error> {
        self.0 = value.into();
        Ok(())
    }
}

/// Text mode: ` key=value` after the message, in the call's order.
fn write_fields(line: &mut String, fields: &dyn kv::Source) {
    struct TextFields<'a>(&'a mut String);
    impl<'kvs> VisitSource<'kvs> for TextFields<'_> {
        fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), kv::Error> {
            let _ = write!(self.0, " {key}={value}");
            Ok(())
        }
    }
    let _ = fields.visit(&mut TextFields(line));
}

const NO_FIELDS: [(&str, &str); 0] = [];

/// The panic hook in JSON mode: Rust's own hook writes several plain lines.
/// The Supervisor still hears the panic and logs the thread's end.
fn log_panic(info: &std::panic::PanicHookInfo<'_>) {
    let payload = info.payload();
    let what = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("unknown panic");
    let thread = std::thread::current();
    let thread = thread.name().unwrap_or("unnamed");
    let location = info.location().map(ToString::to_string);
    let backtrace = std::backtrace::Backtrace::capture();
    let backtrace = (backtrace.status() == std::backtrace::BacktraceStatus::Captured)
        .then(|| backtrace.to_string());
    let fields = [
        ("thread", Some(thread)),
        ("location", location.as_deref()),
        ("backtrace", backtrace.as_deref()),
    ];
    let line = json_line(
        &now(),
        "ERROR",
        "panic",
        &format!("thread '{thread}' panicked: {what}"),
        &fields,
    );
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The time now, as the JSON lines give it: RFC 3339, UTC.
fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::kv::ToValue as _;

    #[test]
    fn control_characters_become_escapes() {
        assert_eq!(one_line("plain text"), "plain text");
        assert_eq!(
            one_line("a\nforged [0 INFO x] line\u{1b}[31m"),
            "a\\nforged [0 INFO x] line\\u{1b}[31m"
        );
    }

    #[test]
    fn a_json_line_is_one_valid_object_whatever_the_message_holds() {
        let message = "a\nforged\r\"line\"\u{1b}[31m \u{0} \\ \u{2028} é";
        let fields: [(&str, Value); 5] = [
            ("stream_sequence", Value::from(42u64)),
            ("order_uid", Value::from("b563feb7\nb2b84b6test")),
            ("missing", Option::<u64>::None.to_value()),
            ("retry", Value::from(true)),
            ("message", Value::from("shadowed")),
        ];
        let line = json_line("2026-12-01T20:00:00Z", "INFO", "t", message, &fields);
        assert!(!line.contains('\n') && !line.contains('\r'), "{line}");
        let object: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(object["message"], message);
        assert_eq!(object["level"], "INFO");
        assert_eq!(object["target"], "t");
        assert_eq!(object["timestamp"], "2026-12-01T20:00:00Z");
        assert_eq!(object["stream_sequence"], 42);
        assert_eq!(object["order_uid"], "b563feb7\nb2b84b6test");
        assert!(object["missing"].is_null());
        assert_eq!(object["retry"], true);
        assert_eq!(line.matches("\"message\"").count(), 1, "{line}");
        assert!(line.starts_with("{\"timestamp\":"), "{line}");
    }

    #[test]
    fn text_lines_carry_the_fields_after_the_message() {
        let mut line = String::from("dead-lettered");
        write_fields(&mut line, &[("stream_sequence", 7u64)]);
        assert_eq!(line, "dead-lettered stream_sequence=7");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let now = now();
        assert!(now.ends_with('Z') && now.contains('T'), "{now}");
        time::OffsetDateTime::parse(&now, &time::format_description::well_known::Rfc3339).unwrap();
    }
}
