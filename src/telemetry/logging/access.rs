//! The access line, formatted by hand. There is one per request, and tracing-subscriber's
//! general formatters spent more on it than the rest of the pass-through path's own code
//! (about 26,000 instructions in the JSON format, 16,000 in the human one, under callgrind):
//! the JSON one writes through a hundred small `io::Write` calls and parses the span's stored
//! fields back from JSON. This formatter writes the same line — the same keys in the same order,
//! values escaped the same way — straight into the line buffer, and caches the timestamp's date
//! and time to the second. Every other event, and an access line it does not expect (colours
//! on, another level, no request span), goes to tracing-subscriber's formatter; a test checks
//! that both give the same lines.

use std::cell::RefCell;
use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{JsonFields as JsonFields_, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::telemetry::redact;

/// The access log's target.
pub const TARGET: &str = "rally_sidecar::access";

/// tracing-subscriber's formatter `F` (JSON or human), with access lines written by hand.
pub struct Fast<F> {
    pub inner: F,
    pub json: bool,
}

impl<S, N, F> FormatEvent<S, N> for Fast<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if meta.target() != TARGET || *meta.level() != Level::INFO || writer.has_ansi_escapes() {
            return self.inner.format_event(ctx, writer, event);
        }
        let span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        let Some(span) = span else {
            return self.inner.format_event(ctx, writer, event);
        };
        // Only the request span (one field, `id`) is known to format identically; and the
        // human format names every span in scope, so the request span must be the only one.
        let alone = span.parent().is_none();
        if span.name() != "request" || span.fields().len() != 1 || !alone {
            return self.inner.format_event(ctx, writer, event);
        }
        let ext = span.extensions();
        let Some(stored) = ext.get::<FormattedFields<N>>() else {
            drop(ext);
            return self.inner.format_event(ctx, writer, event);
        };
        // The line is built in a buffer of this thread's, then handed over in one write: the
        // writer tracing-subscriber passes in is a `dyn fmt::Write`, slow for small pieces.
        thread_local! {
            static LINE: RefCell<String> = const { RefCell::new(String::new()) };
        }
        let line = LINE.with(|cell| {
            let Ok(mut line) = cell.try_borrow_mut() else {
                return Err(fmt::Error);
            };
            line.clear();
            let ok = if self.json {
                json_line(&mut line, &stored.fields, event)
            } else {
                human_line(&mut line, &stored.fields, event)
            };
            ok.map(|()| writer.write_str(&line))
        });
        match line {
            Ok(written) => written,
            // The span's fields were not the JSON object expected: the general formatter.
            Err(_) => {
                drop(ext);
                self.inner.format_event(ctx, writer, event)
            }
        }
    }
}

/// The JSON access line, into `line`. `Err` when the span's stored fields are not a JSON
/// object (nothing is then written).
fn json_line(line: &mut String, span_fields: &str, event: &Event<'_>) -> fmt::Result {
    // The span's fields were stored as a JSON object: `{"id":"..."}`.
    let inner = span_fields
        .strip_prefix('{')
        .and_then(|f| f.strip_suffix('}'))
        .ok_or(fmt::Error)?;
    line.push_str("{\"timestamp\":\"");
    timestamp(line);
    line.push_str("\",\"level\":\"INFO\",\"fields\":{");
    let mut v = JsonFields {
        w: line,
        first: true,
    };
    event.record(&mut v);
    line.push_str("},\"target\":\"");
    json_str(line, TARGET);
    line.push_str("\",\"span\":{");
    line.push_str(inner);
    if !inner.is_empty() {
        line.push(',');
    }
    line.push_str("\"name\":\"request\"}}\n");
    Ok(())
}

/// The human access line, into `line`.
fn human_line(line: &mut String, span_fields: &str, event: &Event<'_>) -> fmt::Result {
    timestamp(line);
    line.push_str("  INFO request");
    if !span_fields.is_empty() {
        line.push('{');
        line.push_str(span_fields);
        line.push('}');
    }
    line.push_str(": ");
    line.push_str(TARGET);
    line.push_str(": ");
    let mut v = HumanFields {
        w: line,
        first: true,
    };
    event.record(&mut v);
    line.push('\n');
    Ok(())
}

/// The JSON format's span fields (the request span is made once per request): a span with
/// one field written by hand as tracing-subscriber's `JsonFields` writes it, `{"id":"..."}`;
/// anything else by `JsonFields` itself.
pub struct JsonSpanFields;

impl<'w> FormatFields<'w> for JsonSpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        struct Count(usize);
        impl Visit for Count {
            fn record_debug(&mut self, _: &Field, _: &dyn fmt::Debug) {
                self.0 += 1;
            }
        }
        let mut count = Count(0);
        fields.record(&mut count);
        if count.0 != 1 {
            // JsonFields sorts several fields by name; not worth repeating here.
            return JsonFields_::new().format_fields(writer, fields);
        }
        let mut one = String::with_capacity(64);
        one.push('{');
        fields.record(&mut JsonFields {
            w: &mut one,
            first: true,
        });
        one.push('}');
        writer.write_str(&one)
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        if current.is_empty() {
            return self.format_fields(current.as_writer(), fields);
        }
        // As JsonFields does: parse what is there, add, write again (sorted by name).
        let mut map: std::collections::BTreeMap<String, serde_json::Value> =
            serde_json::from_str(&current.fields).map_err(|_| fmt::Error)?;
        let mut added = String::from("{");
        fields.record(&mut JsonFields {
            w: &mut added,
            first: true,
        });
        added.push('}');
        let added: std::collections::BTreeMap<String, serde_json::Value> =
            serde_json::from_str(&added).map_err(|_| fmt::Error)?;
        map.extend(added);
        current.fields = serde_json::to_string(&map).map_err(|_| fmt::Error)?;
        Ok(())
    }
}

/// `2026-11-24T10:00:00.123456Z`, as tracing-subscriber's `SystemTime` writes it; the part up
/// to the second is formatted once a second per thread.
fn timestamp(line: &mut String) {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (secs, micros) = (now.as_secs(), now.subsec_micros());
    SECOND.with(|cell| {
        let Ok(mut cached) = cell.try_borrow_mut() else {
            return;
        };
        if cached.0 != secs {
            let t = time::OffsetDateTime::from_unix_timestamp(secs as i64)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            cached.1.clear();
            let _ = write!(
                cached.1,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            );
            cached.0 = secs;
        }
        line.push_str(&cached.1);
    });
    let mut digits = [b'0'; 6];
    let mut n = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    for d in digits {
        line.push(char::from(d));
    }
    line.push('Z');
}

/// Writes `s` escaped as serde_json escapes a string's contents.
fn json_str(line: &mut String, s: &str) {
    let bytes = s.as_bytes();
    // Nearly always nothing to escape: one scan (vectorised), one copy.
    if !bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\') {
        line.push_str(s);
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        line.push_str(&s[start..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            line.push_str("\\u00");
            line.push(char::from(HEX[usize::from(b >> 4)]));
            line.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            line.push_str(esc);
        }
        start = i + 1;
    }
    line.push_str(&s[start..]);
}

/// A `fmt::Write` that escapes what passes through it for a JSON string.
struct JsonEscaping<'a>(&'a mut String);

impl Write for JsonEscaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        json_str(self.0, s);
        Ok(())
    }
}

/// Event fields as tracing-serde writes them: strings and `Debug`/`Display` values as JSON
/// strings, numbers as serde_json writes them, booleans, a non-finite float as `null`.
struct JsonFields<'a> {
    w: &'a mut String,
    first: bool,
}

impl JsonFields<'_> {
    fn key(&mut self, field: &Field) {
        if !std::mem::take(&mut self.first) {
            self.w.push(',');
        }
        self.w.push('"');
        json_str(self.w, field.name());
        self.w.push_str("\":");
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        self.w.push('"');
        json_str(self.w, value);
        self.w.push('"');
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        self.w.push('"');
        let _ = write!(JsonEscaping(self.w), "{value:?}");
        self.w.push('"');
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        self.w.push_str(itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        self.w.push_str(itoa::Buffer::new().format(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.w.push_str(if value { "true" } else { "false" });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            // serde_json's own float formatter, so the digits are the same.
            self.w.push_str(zmij::Buffer::new().format_finite(value));
        } else {
            self.w.push_str("null");
        }
    }
}

/// Event fields as the human format's field formatter ([`super::escaping_fields`]) writes
/// them: the message first, then `name=value` with `Debug` (so `Display` values bare, strings
/// quoted), control characters escaped, separated by spaces.
struct HumanFields<'a> {
    w: &'a mut String,
    first: bool,
}

impl HumanFields<'_> {
    fn name(&mut self, field: &Field) {
        if !std::mem::take(&mut self.first) {
            self.w.push(' ');
        }
        if field.name() != "message" {
            self.w.push_str(field.name());
            self.w.push('=');
        }
    }
}

impl Visit for HumanFields<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.name(field);
        self.w.push_str(itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.name(field);
        self.w.push_str(itoa::Buffer::new().format(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.name(field);
        self.w.push_str(if value { "true" } else { "false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.name(field);
        let _ = write!(ControlEscaping(self.w), "{value:?}");
    }
}

/// A `fmt::Write` that escapes control characters as [`redact::escape_controls`] does.
struct ControlEscaping<'a>(&'a mut String);

impl Write for ControlEscaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        redact::push_escaped_controls(self.0, s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
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
    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }
    impl Buf {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().expect("buf")).into_owned()
        }
    }

    /// The access line, and a line of another target, as the proxy logs them; then a span of
    /// several fields, one recorded late.
    fn log_some(upstream_ms: f64, path: &str) {
        let other = tracing::info_span!(
            "work",
            zeta = 1u64,
            alpha = "x",
            later = tracing::field::Empty
        );
        other.record("later", 5u64);
        other.in_scope(|| tracing::info!("inside"));
        let once = tracing::info_span!("late", later = tracing::field::Empty);
        once.record("later", "v");
        once.in_scope(|| tracing::info!("inside"));
        let span = tracing::info_span!("request", id = %"4f0c\"quoted\"-id");
        span.in_scope(|| {
            tracing::info!(
                target: "rally_sidecar::access",
                method = %http::Method::GET,
                path = %path,
                status = 200u16,
                bytes_in = 0u64,
                bytes_out = 12_345u64,
                total_ms = 1.25,
                upstream_ms,
                complete = true,
                "access"
            );
            tracing::info!(reason = "a \"quoted\"\nline", "something else");
        });
        // Outside the span: no fast path.
        tracing::info!(target: "rally_sidecar::access", status = 503u16, "access");
    }

    /// Lines with the timestamps (everything before the first `Z"` or `Z `) blanked.
    fn untimed(text: &str) -> Vec<String> {
        text.lines()
            .map(|l| match l.split_once('Z') {
                Some((_, rest)) => format!("T{rest}"),
                None => l.to_string(),
            })
            .collect()
    }

    fn both(json: bool, upstream_ms: f64, path: &str) -> (Vec<String>, Vec<String>) {
        let (fast, plain) = (Buf::default(), Buf::default());
        let fast_sub: Box<dyn Subscriber + Send + Sync> = if json {
            Box::new(
                tracing_subscriber::fmt()
                    .json()
                    .with_ansi(false)
                    .with_writer(fast.clone())
                    .fmt_fields(JsonSpanFields)
                    .event_format(Fast {
                        inner: tracing_subscriber::fmt::format()
                            .json()
                            .with_current_span(true)
                            .with_span_list(false),
                        json: true,
                    })
                    .finish(),
            )
        } else {
            Box::new(
                tracing_subscriber::fmt()
                    .with_ansi(false)
                    .with_writer(fast.clone())
                    .fmt_fields(super::super::escaping_fields())
                    .event_format(Fast {
                        inner: tracing_subscriber::fmt::format(),
                        json: false,
                    })
                    .finish(),
            )
        };
        let plain_sub: Box<dyn Subscriber + Send + Sync> = if json {
            Box::new(
                tracing_subscriber::fmt()
                    .json()
                    .with_ansi(false)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(plain.clone())
                    .finish(),
            )
        } else {
            Box::new(
                tracing_subscriber::fmt()
                    .with_ansi(false)
                    .with_writer(plain.clone())
                    .fmt_fields(super::super::escaping_fields())
                    .finish(),
            )
        };
        tracing::subscriber::with_default(fast_sub, || log_some(upstream_ms, path));
        tracing::subscriber::with_default(plain_sub, || log_some(upstream_ms, path));
        (untimed(&fast.text()), untimed(&plain.text()))
    }

    #[test]
    fn the_access_line_is_the_line_tracing_subscriber_writes() {
        for json in [true, false] {
            for (upstream_ms, path) in [
                (
                    -1.0,
                    "/slm/webservice/v2.0/defect?key=[redacted]&fetch=Name",
                ),
                (0.123456789, "/x\\y\"z\u{1}"),
                (49.967273999999996, "/"),
                (1e-7, "/tiny"),
                (1.5e20, "/huge"),
                (f64::NAN, "/nan"),
            ] {
                let (fast, plain) = both(json, upstream_ms, path);
                assert_eq!(fast.len(), 5, "{fast:?}");
                assert_eq!(fast, plain, "json: {json}");
            }
        }
    }

    #[test]
    fn timestamps_read_like_tracing_subscribers() {
        let mut ours = String::new();
        timestamp(&mut ours);
        let mut theirs = String::new();
        tracing_subscriber::fmt::time::FormatTime::format_time(
            &tracing_subscriber::fmt::time::SystemTime,
            &mut Writer::new(&mut theirs),
        )
        .expect("format");
        assert_eq!(ours.len(), theirs.len(), "{ours} vs {theirs}");
        assert_eq!(ours[..16], theirs[..16], "same minute: {ours} vs {theirs}");
        assert!(ours.ends_with('Z'));
    }
}
