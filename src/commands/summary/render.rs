//! A build's [`Summary`] as text (a terminal), JSON, Markdown (a CI job's summary page) and
//! JUnit XML (a test report CI systems display natively). Every value that came from a client
//! or from Rally is made safe for its medium: control characters escaped everywhere, Markdown
//! and HTML syntax neutralised in Markdown, XML escaping by the writer.

use std::fmt::Write as _;

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesText, Event};

use super::{Format, Summary, Verdict};
use crate::journal::{State, WriteView};

/// The report in `format`, ending with a newline.
pub fn render(s: &Summary, format: Format) -> String {
    match format {
        Format::Text => text(s),
        Format::Json => {
            let mut out = serde_json::to_string_pretty(s).unwrap_or_default();
            out.push('\n');
            out
        }
        Format::Markdown => markdown(s),
        Format::Junit => junit(s),
    }
}

/// Control characters (a newline in a build name, an escape sequence in Rally's error text)
/// written as Rust-style escapes, so they can neither forge a line nor reach a terminal.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn headline(s: &Summary) -> String {
    let c = &s.counts;
    let mut parts = Vec::new();
    for (n, what) in [
        (c.refused, "refused by the sidecar"),
        (c.rejected, "rejected by Rally"),
        (c.unconfirmed, "unconfirmed"),
        (c.pending, "still pending"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    match s.verdict {
        Verdict::AllConfirmed if c.total == 1 => "its one result confirmed".into(),
        Verdict::AllConfirmed => format!("all {} results confirmed", c.total),
        Verdict::Empty => "no results journaled".into(),
        _ => format!(
            "{} of {} results: {}",
            c.total - c.confirmed,
            c.total,
            parts.join(", ")
        ),
    }
}

fn label(w: &WriteView) -> String {
    w.test_case_label()
}

fn reason(w: &WriteView) -> String {
    match (w.state, w.last_error.as_deref()) {
        (_, Some(e)) if !e.is_empty() => e.to_string(),
        (State::Pending, _) => "the outcome is not known yet".into(),
        _ => String::new(),
    }
}

fn text(s: &Summary) -> String {
    let c = &s.counts;
    let mut out = format!(
        "build {}: {} (exit {})\n  written {}  confirmed {}  refused {}  rejected {}  unconfirmed {}  pending {}  duplicates adopted {}\n",
        printable(&s.build),
        headline(s),
        s.exit_code,
        c.total,
        c.confirmed,
        c.refused,
        c.rejected,
        c.unconfirmed,
        c.pending,
        c.adopted,
    );
    if !s.problems.is_empty() {
        out.push_str("not confirmed:\n");
        for w in &s.problems {
            let _ = writeln!(
                out,
                "  #{:<6} {:<11} {:<12} {:<12} {}",
                w.id,
                w.state.as_str(),
                printable(&label(w)),
                printable(w.verdict.as_deref().unwrap_or("-")),
                printable(&reason(w)),
            );
        }
    }
    if !s.test_cases.is_empty() {
        let names: Vec<String> = s.test_cases.iter().map(|t| printable(&t.name)).collect();
        let _ = writeln!(out, "test cases ({}): {}", names.len(), names.join(" "));
    }
    for n in &s.notes {
        let _ = writeln!(out, "note: {}", printable(n));
    }
    out
}

/// A value inside Markdown (a table cell or a heading): no line breaks, no table pipes, no
/// emphasis, links, images or HTML a client could smuggle into a job's summary page.
pub fn md(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in printable(s).chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\\' | '|' | '*' | '_' | '`' | '[' | ']' | '(' | ')' | '!' | '#' | '~' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

fn markdown(s: &Summary) -> String {
    let c = &s.counts;
    let icon = match s.verdict {
        Verdict::AllConfirmed => "✅",
        Verdict::Pending => "⏳",
        _ => "❌",
    };
    let mut out = format!(
        "### {icon} Rally results of build {}: {}\n\n\
         | written | confirmed | refused | rejected by Rally | unconfirmed | pending | duplicates adopted |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n\
         | {} | {} | {} | {} | {} | {} | {} |\n\n",
        md(&s.build),
        headline(s),
        c.total,
        c.confirmed,
        c.refused,
        c.rejected,
        c.unconfirmed,
        c.pending,
        c.adopted,
    );
    if !s.problems.is_empty() {
        let _ = write!(
            out,
            "#### Not confirmed ({})\n\n| # | Test case | Verdict | State | Reason |\n|---:|---|---|---|---|\n",
            s.problems.len()
        );
        for w in &s.problems {
            let _ = writeln!(
                out,
                "| {} | {} | {} | **{}** | {} |",
                w.id,
                md(&label(w)),
                md(w.verdict.as_deref().unwrap_or("")),
                w.state.as_str(),
                md(&reason(w)),
            );
        }
        out.push('\n');
    }
    if !s.test_cases.is_empty() {
        let _ = write!(
            out,
            "<details><summary>Test cases ({})</summary>\n\n| Test case | Results | Last verdict | State |\n|---|---:|---|---|\n",
            s.test_cases.len()
        );
        for t in &s.test_cases {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                md(&t.name),
                t.results,
                md(t.verdict.as_deref().unwrap_or("")),
                t.state.as_str()
            );
        }
        out.push_str("\n</details>\n\n");
    }
    for n in &s.notes {
        let _ = writeln!(out, "> {}\n", md(n));
    }
    let _ = writeln!(
        out,
        "<sub>rally-sidecar summary · exit {}</sub>",
        s.exit_code
    );
    out
}

/// What a write is in JUnit terms: nothing (passed), a failure, or an error (not known yet).
fn junit_outcome(w: &WriteView) -> Option<(&'static str, &'static str)> {
    match w.state {
        State::Confirmed => None,
        State::Refused => Some(("failure", "refused")),
        State::Rejected => Some(("failure", "rejected")),
        State::Unconfirmed => Some(("failure", "unconfirmed")),
        State::Pending => Some(("error", "pending")),
    }
}

fn junit(s: &Summary) -> String {
    let failures = s
        .writes
        .iter()
        .filter(|w| junit_outcome(w).is_some_and(|(k, _)| k == "failure"))
        .count()
        .to_string();
    let errors = s.counts.pending.to_string();
    let tests = s.writes.len().to_string();
    let suite = format!("Rally results of build {}", printable(&s.build));
    let class = format!("rally-sidecar.{}", printable(&s.build));
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    let written = w
        .write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))
        .and_then(|_| {
            w.create_element("testsuites")
                .with_attributes([
                    ("name", "rally-sidecar"),
                    ("tests", tests.as_str()),
                    ("failures", failures.as_str()),
                    ("errors", errors.as_str()),
                ])
                .write_inner_content(|w| {
                    w.create_element("testsuite")
                        .with_attributes([
                            ("name", suite.as_str()),
                            ("tests", tests.as_str()),
                            ("failures", failures.as_str()),
                            ("errors", errors.as_str()),
                            ("skipped", "0"),
                        ])
                        .write_inner_content(|w| {
                            for row in &s.writes {
                                junit_case(w, row, &class)?;
                            }
                            Ok(())
                        })
                        .map(|_| ())
                })
        });
    match written {
        Ok(_) => {
            let mut out = String::from_utf8_lossy(&w.into_inner()).into_owned();
            out.push('\n');
            out
        }
        // Writing into a Vec cannot fail; say so plainly rather than emit half a document.
        Err(e) => format!("<!-- cannot write the JUnit report: {e} -->\n"),
    }
}

fn junit_case(w: &mut Writer<Vec<u8>>, row: &WriteView, class: &str) -> std::io::Result<()> {
    let name = printable(&format!(
        "{} {} [#{}]",
        label(row),
        row.verdict.as_deref().unwrap_or(""),
        row.id
    ));
    let time = format!("{:.3}", row.latency_ms.unwrap_or(0.0) / 1000.0);
    let el = w.create_element("testcase").with_attributes([
        ("name", name.as_str()),
        ("classname", class),
        ("time", &time),
    ]);
    let detail = printable(&format!(
        "journal #{}; {} of test case {}; state {}; attempts {}{}{}",
        row.id,
        row.operation,
        label(row),
        row.state.as_str(),
        row.attempts,
        row.object_id
            .map(|o| format!("; result ObjectID {o}"))
            .unwrap_or_default(),
        if row.adopted {
            "; adopted: Rally's answer was lost and the stored result was found, not written twice"
        } else {
            ""
        },
    ));
    el.write_inner_content(|w| {
        if let Some((kind, ty)) = junit_outcome(row) {
            let why = printable(&reason(row));
            w.create_element(kind)
                .with_attributes([("type", ty), ("message", why.as_str())])
                .write_text_content(BytesText::new(&why))?;
        }
        w.create_element("system-out")
            .write_text_content(BytesText::new(&detail))?;
        Ok(())
    })
    .map(|_| ())
}
