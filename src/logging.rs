//! Logging to stderr, one line per message: stdout is kept for the start-up
//! line (`{"http_addr": …}`) alone. Set up once by `main`.

/// Installs the logger with an `env_logger` filter (`info`,
/// `order_service=debug,warn`, …).
pub fn init(filter: &str) {
    env_logger::Builder::new()
        .parse_filters(filter)
        .format(|out, record| {
            use std::io::Write;
            writeln!(
                out,
                "[{} {:<5} {}] {}",
                out.timestamp_millis(),
                record.level(),
                record.target(),
                one_line(&record.args().to_string())
            )
        })
        .init();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_become_escapes() {
        assert_eq!(one_line("plain text"), "plain text");
        assert_eq!(
            one_line("a\nforged [0 INFO x] line\u{1b}[31m"),
            "a\\nforged [0 INFO x] line\\u{1b}[31m"
        );
    }
}
