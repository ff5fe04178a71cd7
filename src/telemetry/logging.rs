//! Log set-up: tracing with a human or JSON format; `RUST_LOG` wins over `log.level`.
//! Nothing logs a credential: request paths go through [`crate::telemetry::redact`] and no code logs
//! request headers or bodies. Field values and messages carry text from clients and from Rally:
//! the JSON format escapes control characters as JSON does, and the human format writes them
//! through [`redact::escape_controls`], so one event is always one line.
//!
//! Lines go to stderr through [`sink`]: access lines in batches (at most [`sink::INTERVAL`]
//! late, all written when the process stops cleanly — keep the [`LogGuard`] that [`init`]
//! returns until then), every other line at once. The access line itself is formatted by
//! [`access`], the rest by tracing-subscriber. (A background writer thread per line,
//! tracing-appender's, was measured slower on a 2-core machine: it woke a thread per line.)
//! The human format colours only a terminal (`log.color`): escape codes in a file or a pipe
//! make logs hard to read and to grep. The JSON format never colours, and nests event fields
//! under `fields` and the span under `span`, so a field named like a top-level key cannot make
//! a line with duplicated keys.

pub mod access;
pub mod sink;

use std::io::IsTerminal;
use std::sync::LazyLock;

use tracing_subscriber::fmt::MakeWriter;

use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::FormatFields;

use crate::config::{LogColor, LogConfig, LogFormat};
use crate::telemetry::redact;
use sink::{LineWriter, Sink};

/// The process's stderr, batched.
static STDERR: LazyLock<Sink> = LazyLock::new(|| Sink::new(Box::new(std::io::stderr())));

/// Whether the human format writes ANSI colours: `auto` colours a terminal only, and not
/// when `NO_COLOR` is set (no-color.org).
pub fn use_color(color: LogColor, stderr_is_terminal: bool, no_color: bool) -> bool {
    match color {
        LogColor::Always => true,
        LogColor::Never => false,
        LogColor::Auto => stderr_is_terminal && !no_color,
    }
}

/// Writes every buffered log line now.
pub fn flush() {
    STDERR.flush();
}

/// Writes the buffered access lines when dropped: held by `main` for as long as the process
/// logs, so that a clean stop loses none.
#[must_use = "the buffered access lines are written when the guard is dropped"]
pub struct LogGuard(());

impl Drop for LogGuard {
    fn drop(&mut self) {
        flush();
    }
}

/// Hands tracing-subscriber a writer per line: access lines may wait for their batch.
#[derive(Clone, Copy)]
struct ToSink(&'static Sink);

impl<'a> MakeWriter<'a> for ToSink {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        LineWriter {
            sink: self.0,
            defer: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LineWriter<'a> {
        let defer = meta.target() == access::TARGET;
        if defer {
            self.0.start_flusher();
        }
        LineWriter {
            sink: self.0,
            defer,
        }
    }
}

/// Installs the global subscriber. Safe to call twice (the second call is ignored).
pub fn init(cfg: &LogConfig) -> LogGuard {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .or_else(|| tracing_subscriber::EnvFilter::try_new(&cfg.level).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(ToSink(&STDERR));
    let _ = match cfg.format {
        LogFormat::Json => builder
            .json()
            .with_ansi(false)
            .fmt_fields(access::JsonSpanFields)
            .event_format(access::Fast {
                inner: tracing_subscriber::fmt::format()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false),
                json: true,
            })
            .try_init(),
        LogFormat::Human => builder
            .with_ansi(use_color(
                cfg.color,
                std::io::stderr().is_terminal(),
                no_color,
            ))
            .fmt_fields(escaping_fields())
            .event_format(access::Fast {
                inner: tracing_subscriber::fmt::format(),
                json: false,
            })
            .try_init(),
    };
    LogGuard(())
}

/// The human format's fields: `message name=value ...`, each value's control characters escaped.
pub fn escaping_fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let text = format!("{value:?}");
        let text = redact::escape_controls(&text);
        if field.name() == "message" {
            write!(w, "{text}")
        } else {
            write!(w, "{field}={text}")
        }
    })
    .delimited(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut v) = self.0.lock() {
                v.extend_from_slice(b);
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_newline_in_a_value_cannot_forge_a_human_log_line() {
        let buf = Buffer::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || buf.clone())
            .fmt_fields(escaping_fields())
            .finish();
        let forged = "b1\n2026-01-01T00:00:00Z  INFO rally_sidecar: forged";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(build = %forged, test_case = "TC1\r\u{1b}[2J", "filled {}", forged);
        });
        let text = String::from_utf8(out.0.lock().map(|v| v.clone()).unwrap_or_default())
            .unwrap_or_default();
        assert_eq!(text.matches('\n').count(), 1, "one event, one line: {text}");
        assert!(text.contains("build=b1\\n2026-01-01T00:00:00Z"), "{text}");
        assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text:?}");
    }

    #[test]
    fn auto_colours_only_a_terminal_without_no_color() {
        assert!(use_color(LogColor::Auto, true, false));
        assert!(!use_color(LogColor::Auto, false, false), "a file or a pipe");
        assert!(!use_color(LogColor::Auto, true, true), "NO_COLOR");
        assert!(use_color(LogColor::Always, false, true));
        assert!(!use_color(LogColor::Never, true, false));
    }
}
