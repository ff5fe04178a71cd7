//! The status page drawn from a [`StatusView`]: one self-contained HTML document (inline CSS,
//! an inline SVG latency chart, one small inline script; nothing fetched from elsewhere, so it
//! works offline and behind the admin token). Every value is HTML-escaped here, once: builds,
//! test cases and error texts come from clients and from Rally. Tables turn into cards on a
//! phone. The script polls `/status.json` and, when its `version` differs from the page's,
//! fetches the page again and swaps `<main>` in place: no reload, no lost scroll position, and
//! one renderer (this file) for both.

use std::fmt::Write as _;

use base64::Engine as _;
use sha2::Digest;

use super::builds::BuildLine;
use super::status::{ContextSources, Latencies, StatusView};
use crate::commands::summary::Verdict;
use crate::journal::{State, WriteView};

/// HTML-escapes a value for text and for double- or single-quoted attributes; control
/// characters are spelled out so a value cannot fake a line in the page.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
:root { --fg: #1d2228; --muted: #5f6b76; --line: #dde1e5; --bg: #fff; --card: #f6f7f9;
  --ok: #1f7a45; --okbg: #e3f4ea; --bad: #b42318; --badbg: #fde4e1; --warn: #8a5a00; --warnbg: #fff3d1; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6e8ea; --muted: #9aa4ad; --line: #333a41;
  --bg: #15191d; --card: #1e2328; --okbg: #15351f; --badbg: #451a17; --warnbg: #3d3010;
  --ok: #6fd39a; --bad: #ff8a80; --warn: #f0c35a; } }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: var(--fg); background: var(--bg); }
header { display: flex; align-items: baseline; gap: 1em; flex-wrap: wrap; padding: .8em 1.2em; border-bottom: 1px solid var(--line); }
h1 { font-size: 1.25em; margin: 0; } h2 { font-size: 1.05em; margin: 1.4em 0 .5em; }
main { padding: 0 1.2em 2em; max-width: 1200px; }
.muted, .k { color: var(--muted); } .num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.time { white-space: nowrap; }
#live { font-size: .85em; color: var(--muted); } #live.stale { color: var(--bad); font-weight: 600; }
.totals { display: flex; flex-wrap: wrap; gap: .5em; margin: 1em 0 0; padding: 0; list-style: none; }
.totals li { background: var(--card); border-radius: 6px; padding: .35em .8em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid var(--line); padding: .35em .5em; text-align: left; vertical-align: top; }
th { font-weight: 600; color: var(--muted); font-size: .9em; white-space: nowrap; }
tr.problem { background: var(--badbg); } tr.unconfirmed { background: var(--badbg); font-weight: 600; }
tr.refused, tr.rejected { background: var(--warnbg); } tr.pending { background: var(--card); }
.verdict { font-weight: 600; white-space: nowrap; } .verdict.ok { color: var(--ok); } .verdict.bad { color: var(--bad); }
.state-unconfirmed { color: var(--bad); font-weight: 700; } .state-refused, .state-rejected { color: var(--warn); font-weight: 700; }
.reason { max-width: 40em; overflow-wrap: anywhere; }
ol.chain { margin: .3em 0; padding-left: 1.4em; } ol.chain li.active { font-weight: 600; }
ol.chain li.active::after { content: "  \2190 in effect"; color: var(--ok); }
.chart svg { width: 100%; max-width: 720px; height: 90px; display: block; background: var(--card); border-radius: 6px; }
.chart .ok { fill: var(--ok); } .chart .bad { fill: var(--bad); } .chart .warn { fill: var(--warn); }
footer { margin-top: 2em; font-size: .85em; color: var(--muted); overflow-wrap: anywhere; }
a { color: inherit; }
@media (max-width: 640px) {
  body { font-size: 14px; } header, main { padding-left: .7em; padding-right: .7em; }
  table.cards thead { display: none; }
  table.cards tr { display: block; border: 1px solid var(--line); border-radius: 8px; margin: 0 0 .6em; padding: .3em .6em; }
  table.cards td { display: flex; justify-content: space-between; gap: 1em; border: 0; padding: .15em 0; text-align: right; }
  table.cards td::before { content: attr(data-label); color: var(--muted); text-align: left; font-weight: 400; }
  .reason { max-width: none; }
}
"#;

/// Polls `/status.json` every two seconds; when the version changed, fetches the page and
/// swaps `<main>`. Shows when the data is stale (the sidecar stopped, the network went away).
const SCRIPT: &str = r#"
(function () {
  var version = document.body.getAttribute('data-version');
  var live = document.getElementById('live');
  function say(text, stale) { live.textContent = text; live.className = stale ? 'stale' : ''; }
  async function tick() {
    try {
      var r = await fetch('status.json', { cache: 'no-store', credentials: 'same-origin' });
      if (!r.ok) throw new Error('HTTP ' + r.status);
      var s = await r.json();
      if (s.version !== version) {
        var page = await fetch('./', { cache: 'no-store', credentials: 'same-origin' });
        if (!page.ok) throw new Error('HTTP ' + page.status);
        var doc = new DOMParser().parseFromString(await page.text(), 'text/html');
        var fresh = doc.querySelector('main');
        if (fresh) {
          document.querySelector('main').replaceWith(document.adoptNode(fresh));
          version = doc.body.getAttribute('data-version');
          document.body.setAttribute('data-version', version);
        }
      }
      say('live \u00b7 updated ' + new Date().toLocaleTimeString(), false);
    } catch (e) {
      say('not updating: ' + e.message, true);
    }
    setTimeout(tick, 2000);
  }
  setTimeout(tick, 2000);
})();
"#;

/// Only the page's own script (by its hash), its own styles, and requests to its own origin.
pub(super) fn content_security_policy() -> String {
    let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(SCRIPT));
    format!(
        "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
         connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// The whole page.
pub(super) fn render(v: &StatusView) -> String {
    let mut main = String::new();
    totals(&mut main, v);
    context(&mut main, &v.context);
    builds(&mut main, &v.builds, v.journal);
    attention(&mut main, &v.attention);
    chart(&mut main, &v.latencies);
    recent(&mut main, &v.recent);
    let _ = write!(
        main,
        "<footer><p><span class=\"k\">upstream:</span> last answer {}; last failure {}<br>\
         <span class=\"k\">readiness:</span> {}</p>\
         <p>JSON: <a href=\"status.json\">/status.json</a> · <a href=\"builds\">/builds</a> · \
         <a href=\"writes\">/writes</a> · <a href=\"context\">/context</a> · <a href=\"metrics\">/metrics</a></p></footer>",
        esc(&v.upstream_last_answer),
        esc(&v.upstream_last_failure),
        esc(v.readiness.trim_end().replace('\n', "; ").as_str()),
    );
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <link rel=\"icon\" href=\"data:,\"><title>rally-sidecar status</title><style>{STYLE}</style></head>\n\
         <body data-version=\"{}\"><header><h1>rally-sidecar</h1><span id=\"live\">live</span></header>\n\
         <main>\n{main}\n</main>\n<script>{SCRIPT}</script></body></html>\n",
        esc(&v.version)
    )
}

fn totals(out: &mut String, v: &StatusView) {
    if let Some(e) = &v.error {
        let _ = write!(
            out,
            "<p class=\"state-unconfirmed\">the journal cannot be read: {}</p>",
            esc(e)
        );
    }
    let n = |s: State| v.totals.get(s.as_str()).copied().unwrap_or(0);
    out.push_str("<ul class=\"totals\" id=\"totals\">");
    for s in [
        State::Confirmed,
        State::Unconfirmed,
        State::Refused,
        State::Rejected,
        State::Pending,
    ] {
        let _ = write!(
            out,
            "<li class=\"state-{0}\">{0} <b>{1}</b></li>",
            s.as_str(),
            n(s)
        );
    }
    out.push_str("</ul>\n");
}

fn context(out: &mut String, c: &ContextSources) {
    out.push_str("<section id=\"context\"><h2>Build context</h2><p>");
    match (&c.effective, &c.source) {
        (Some(b), Some(src)) => {
            let _ = write!(
                out,
                "Writes without a Build get <b>{}</b>, from {}.",
                esc(b),
                esc(src)
            );
        }
        _ => out.push_str(
            "<span class=\"state-unconfirmed\">No build is known:</span> writes without a Build \
             and without an X-Rally-Build header are refused.",
        ),
    }
    out.push_str("</p><ol class=\"chain\"><li>X-Rally-Build header: per request, wins over everything below</li>");
    let active = |on: bool| if on { " class=\"active\"" } else { "" };
    let mut scoped: Vec<String> = c
        .projects
        .iter()
        .map(|(k, b)| format!("project {} → {}", esc(k), esc(b)))
        .collect();
    scoped.extend(
        c.workspaces
            .iter()
            .map(|(k, b)| format!("workspace {} → {}", esc(k), esc(b))),
    );
    let _ = writeln!(
        out,
        "<li>PUT /context, scoped: {}</li><li{}>PUT /context, global: {}</li><li{}>config context.build: {}</li><li{}>CI variable: {}</li></ol></section>",
        if scoped.is_empty() {
            "none".into()
        } else {
            scoped.join("; ")
        },
        active(c.source.as_deref() == Some("PUT /context")),
        c.put_global
            .as_deref()
            .map(esc)
            .unwrap_or_else(|| "not set".into()),
        active(c.source.as_deref() == Some("config context.build")),
        c.config
            .as_deref()
            .map(esc)
            .unwrap_or_else(|| "not set".into()),
        active(
            c.source
                .as_deref()
                .is_some_and(|s| s.starts_with("CI variable"))
        ),
        match &c.ci_variable {
            Some((var, value)) => format!("{} = {}", esc(var), esc(value)),
            None if c.ci_variables.is_empty() =>
                "none looked for (context.build_env is empty)".into(),
            None => format!("none set (looked for {})", esc(&c.ci_variables.join(", "))),
        },
    );
}

/// What a build name needs encoded to be one path segment of `/builds/<B>`.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn verdict_cell(v: Verdict) -> (&'static str, &'static str) {
    match v {
        Verdict::AllConfirmed => ("ok", "all confirmed"),
        Verdict::Refused => ("bad", "refused"),
        Verdict::Unconfirmed => ("bad", "unconfirmed"),
        Verdict::Pending => ("", "pending"),
        Verdict::Empty => ("", "empty"),
    }
}

fn builds(out: &mut String, builds: &[BuildLine], journal: bool) {
    out.push_str("<section><h2>Builds</h2>");
    if !journal {
        out.push_str("<p class=\"muted\">No journal: confirmation is off (confirm.enabled = false).</p></section>\n");
        return;
    }
    if builds.is_empty() {
        out.push_str("<p class=\"muted\">No writes yet.</p></section>\n");
        return;
    }
    out.push_str(
        "<div class=\"scroll\"><table class=\"cards\" id=\"builds\"><thead><tr><th>Build</th><th>Verdict</th>\
         <th class=\"num\">Written</th><th class=\"num\">Confirmed</th><th class=\"num\">Refused</th>\
         <th class=\"num\">Rejected</th><th class=\"num\">Unconfirmed</th><th class=\"num\">Pending</th>\
         <th class=\"num\">Adopted</th><th>Last write (UTC)</th></tr></thead><tbody>\n",
    );
    for b in builds {
        let c = &b.counts;
        let (class, word) = verdict_cell(b.verdict);
        let name = match &c.build {
            Some(name) => format!(
                "<a href=\"builds/{}\">{}</a>",
                esc(&percent_encoding::utf8_percent_encode(name, PATH_SEGMENT).to_string()),
                esc(name)
            ),
            None => "<span class=\"muted\">(no build)</span>".into(),
        };
        let row_class = if class == "bad" {
            " class=\"problem\""
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "<tr{row_class}><td data-label=\"Build\">{name}</td><td data-label=\"Verdict\" class=\"verdict {class}\">{word}</td>\
             <td data-label=\"Written\" class=\"num\">{}</td><td data-label=\"Confirmed\" class=\"num\">{}</td>\
             <td data-label=\"Refused\" class=\"num\">{}</td><td data-label=\"Rejected\" class=\"num\">{}</td>\
             <td data-label=\"Unconfirmed\" class=\"num\">{}</td><td data-label=\"Pending\" class=\"num\">{}</td>\
             <td data-label=\"Adopted\" class=\"num\">{}</td><td data-label=\"Last write\" class=\"time\">{}</td></tr>",
            c.total,
            c.confirmed,
            c.refused,
            c.rejected,
            c.unconfirmed,
            c.pending,
            c.adopted,
            esc(&short_time(c.last_updated.as_deref().unwrap_or(""))),
        );
    }
    out.push_str("</tbody></table></div></section>\n");
}

/// One write as a table row (the attention list and the recent writes share it).
fn write_row(out: &mut String, w: &WriteView) {
    let state = w.state.as_str();
    let tc = match (&w.formatted_id, &w.test_case) {
        (Some(f), Some(oid)) => format!(
            "<b>{}</b> <span class=\"muted\">{}</span>",
            esc(f),
            esc(oid)
        ),
        _ => esc(&w.test_case_label()),
    };
    let _ = writeln!(
        out,
        "<tr class=\"{state}\"><td data-label=\"#\" class=\"num\">{}</td><td data-label=\"Received\" class=\"time\">{}</td>\
         <td data-label=\"Test case\">{tc}</td><td data-label=\"Verdict\">{}</td><td data-label=\"Build\">{}</td>\
         <td data-label=\"State\" class=\"state-{state}\">{state}{}</td><td data-label=\"Attempts\" class=\"num\">{}</td>\
         <td data-label=\"Latency\" class=\"num\">{}</td><td data-label=\"Reason\" class=\"reason\">{}</td></tr>",
        w.id,
        esc(&short_time(&w.received_at)),
        esc(w.verdict.as_deref().unwrap_or("")),
        esc(w.build.as_deref().unwrap_or("")),
        if w.adopted { " (adopted)" } else { "" },
        w.attempts,
        w.latency_ms
            .map(|l| format!("{l:.0} ms"))
            .unwrap_or_default(),
        esc(w.last_error.as_deref().unwrap_or("")),
    );
}

/// `2026-01-01T10:00:00.123Z` as `2026-01-01 10:00:00`: the milliseconds are noise on a page.
fn short_time(t: &str) -> String {
    t.split('.').next().unwrap_or(t).replacen('T', " ", 1)
}

const WRITES_HEAD: &str = "<thead><tr><th class=\"num\">#</th><th>Received (UTC)</th><th>Test case</th><th>Verdict</th>\
    <th>Build</th><th>State</th><th class=\"num\">Attempts</th><th class=\"num\">Latency</th><th>Reason</th></tr></thead><tbody>\n";

fn attention(out: &mut String, rows: &[WriteView]) {
    out.push_str("<section><h2>Needs attention</h2>");
    if rows.is_empty() {
        out.push_str(
            "<p class=\"muted\">Nothing: every journaled write is confirmed.</p></section>\n",
        );
        return;
    }
    let _ = write!(
        out,
        "<div class=\"scroll\"><table class=\"cards\" id=\"attention\">{WRITES_HEAD}"
    );
    rows.iter().for_each(|w| write_row(out, w));
    out.push_str("</tbody></table></div></section>\n");
}

fn recent(out: &mut String, rows: &[WriteView]) {
    out.push_str("<section><h2>Recent writes</h2>");
    if rows.is_empty() {
        out.push_str("<p class=\"muted\">No writes yet.</p></section>\n");
        return;
    }
    let _ = write!(
        out,
        "<div class=\"scroll\"><table class=\"cards\" id=\"recent\">{WRITES_HEAD}"
    );
    rows.iter().for_each(|w| write_row(out, w));
    out.push_str("</tbody></table></div></section>\n");
}

/// One bar per settled write, oldest left, height by latency; red when unconfirmed.
fn chart(out: &mut String, l: &Latencies) {
    out.push_str("<section class=\"chart\"><h2>Confirmation latency</h2>");
    if l.samples.is_empty() {
        out.push_str("<p class=\"muted\">No confirmations yet.</p></section>\n");
        return;
    }
    // A log scale: one slow write (seconds) must not flatten the usual milliseconds.
    let max = l.samples.iter().map(|s| s.ms).fold(1.0_f64, f64::max);
    let scale = |ms: f64| (1.0 + ms.max(0.0)).ln() / (1.0 + max).ln();
    let (w, h) = (600.0, 80.0);
    let step = w / l.samples.len() as f64;
    let _ = write!(
        out,
        "<svg id=\"latency\" viewBox=\"0 0 {w} {h}\" preserveAspectRatio=\"none\" role=\"img\" \
         aria-label=\"latencies of the last {} settled writes\">",
        l.samples.len()
    );
    for (
        i,
        super::status::Sample {
            id,
            test_case,
            state,
            ms,
        },
    ) in l.samples.iter().enumerate()
    {
        let bar = (scale(*ms) * (h - 4.0)).max(2.0);
        let class = match state {
            State::Confirmed => "ok",
            State::Rejected => "warn",
            _ => "bad",
        };
        let _ = write!(
            out,
            "<rect class=\"{class}\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bar:.1}\"><title>#{id} {}: {ms:.0} ms, {}</title></rect>",
            i as f64 * step + step * 0.1,
            h - bar,
            step * 0.8,
            esc(test_case),
            state.as_str(),
        );
    }
    let ms = |v: Option<f64>| {
        v.map(|v| format!("{v:.0} ms"))
            .unwrap_or_else(|| "–".into())
    };
    let _ = writeln!(
        out,
        "</svg><p class=\"muted\">last {} settled writes, oldest left, log scale up to {:.0} ms (red: unconfirmed) · confirmed: p50 {} · p95 {} · max {}</p></section>",
        l.samples.len(),
        max,
        ms(l.p50_ms),
        ms(l.p95_ms),
        ms(l.max_ms),
    );
}

#[cfg(test)]
mod tests;
