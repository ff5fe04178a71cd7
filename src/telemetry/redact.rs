//! What may reach a log line or a terminal: credentials redacted, control characters escaped.
//!
//! Credentials travel in `Authorization`, `ZSESSIONID` (header and cookie), `JSESSIONID` and other
//! cookies, and the `key=` security token in the query string. Logs only ever see request paths
//! through [`path_and_query`] and header values through [`header_value`]; nothing else about a
//! request is logged. Values that come from clients or from Rally (a Build, a test case, Rally's
//! error text) go through [`escape_controls`] wherever they are printed for people — the human
//! log format, `journal list`, `sweep`, `check` — so a newline cannot forge a log line and an
//! escape sequence cannot drive the operator's terminal.

use std::borrow::Cow;

/// What a secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Query parameters whose values are secrets (compared case-insensitively).
const SECRET_PARAMS: &[&str] = &[
    "key",
    "zsessionid",
    "apikey",
    "api_key",
    "password",
    "token",
    "access_token",
];

/// Headers whose values are secrets (compared case-insensitively).
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "zsessionid",
    "cookie",
    "set-cookie",
    "x-api-key",
];

/// Returns `path?query` with the values of secret parameters replaced by `[redacted]`.
/// The parameter names and the order are kept so the log still says what was sent.
pub fn path_and_query(pq: &str) -> Cow<'_, str> {
    let Some((path, query)) = pq.split_once('?') else {
        return Cow::Borrowed(pq);
    };
    let mut changed = false;
    let parts: Vec<Cow<'_, str>> = query
        .split('&')
        .map(|pair| {
            let (name, _) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
            if pair.contains('=')
                && SECRET_PARAMS
                    .iter()
                    .any(|s| decoded.eq_ignore_ascii_case(s))
            {
                changed = true;
                Cow::Owned(format!("{name}={REDACTED}"))
            } else {
                Cow::Borrowed(pair)
            }
        })
        .collect();
    if !changed {
        return Cow::Borrowed(pq);
    }
    Cow::Owned(format!("{path}?{}", parts.join("&")))
}

/// Returns the header value fit for a log line: secrets are replaced, cookies keep their names.
pub fn header_value<'a>(name: &str, value: &'a str) -> Cow<'a, str> {
    let lower = name.to_ascii_lowercase();
    if lower == "cookie" {
        let names: Vec<String> = value
            .split(';')
            .map(|c| c.trim().split('=').next().unwrap_or("").to_string())
            .map(|n| format!("{n}={REDACTED}"))
            .collect();
        return Cow::Owned(names.join("; "));
    }
    if SECRET_HEADERS.contains(&lower.as_str()) {
        return Cow::Borrowed(REDACTED);
    }
    Cow::Borrowed(value)
}

/// `text` with control characters (C0, DEL, C1: newlines, escape sequences), line and paragraph
/// separators and bidi overrides written as escapes — `\n`, `\r`, `\t`, `\u{1b}` — before it
/// reaches a log line or a terminal. Everything else is kept.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    push_escaped_controls(&mut out, text);
    Cow::Owned(out)
}

/// Appends `text` to `out` escaped as [`escape_controls`] escapes it (the access line is
/// written this way, without a string of its own per field).
pub fn push_escaped_controls(out: &mut String, text: &str) {
    if !text.chars().any(unsafe_char) {
        out.push_str(text);
        return;
    }
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => {
                use std::fmt::Write;
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
}

fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_parameter_is_redacted_wherever_it_stands() {
        assert_eq!(
            path_and_query(
                "/slm/webservice/v2.0/testcaseresult/create?key=abc123&workspace=/workspace/1"
            ),
            "/slm/webservice/v2.0/testcaseresult/create?key=[redacted]&workspace=/workspace/1"
        );
        assert_eq!(path_and_query("/x?a=1&KEY=s3cret"), "/x?a=1&KEY=[redacted]");
        assert_eq!(path_and_query("/x?%6Bey=s3cret"), "/x?%6Bey=[redacted]");
        assert_eq!(path_and_query("/x?monkey=1"), "/x?monkey=1");
        assert_eq!(path_and_query("/x"), "/x");
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(
            escape_controls("2026.11.24-7 Größe ✓"),
            "2026.11.24-7 Größe ✓"
        );
        assert_eq!(
            escape_controls("b1\n2026-01-01T00:00:00Z  INFO forged"),
            "b1\\n2026-01-01T00:00:00Z  INFO forged"
        );
        assert_eq!(
            escape_controls("\u{1b}[31mred\u{1b}[0m\r\t\u{7f}\u{9b}\u{202e}"),
            "\\u{1b}[31mred\\u{1b}[0m\\r\\t\\u{7f}\\u{9b}\\u{202e}"
        );
    }

    #[test]
    fn cookies_keep_names_only() {
        assert_eq!(
            header_value("Cookie", "JSESSIONID=abc; ZSESSIONID=def"),
            "JSESSIONID=[redacted]; ZSESSIONID=[redacted]"
        );
        assert_eq!(header_value("zsessionid", "_key"), REDACTED);
        assert_eq!(header_value("Authorization", "Basic x"), REDACTED);
        assert_eq!(header_value("User-Agent", "pyral"), "pyral");
    }
}
