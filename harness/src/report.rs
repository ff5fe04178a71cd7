//! The summary lines the runs print (and docs/reliability.md quotes).

use crate::run::*;

/// The report as a short Markdown summary.
pub fn summary(r: &SoakReport) -> String {
    let t = &r.tally;
    let s = &r.simulator;
    let mut out = format!(
        "| writes | concurrency | path | elapsed | writes/s | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|---|---|\n\
         | {} | {} | {} | {:.1} s | {:.0} | {:.1} | {:.1} | {:.1} |\n\n",
        r.writes,
        r.concurrency,
        if r.direct { "direct" } else { "sidecar" },
        r.elapsed_s,
        r.writes_per_s,
        r.latency_ms.p50,
        r.latency_ms.p99,
        r.latency_ms.max,
    );
    if !r.direct {
        out += &format!(
            "confirmed {}, answered at the acknowledgement then not read back {}, unconfirmed and journaled {} (of which stored anyway {}), rejected {}, **duplicates {}**, **lost {}**\n\n",
            t.confirmed,
            t.acknowledged_unconfirmed,
            t.unconfirmed_journaled,
            t.unconfirmed_but_stored,
            t.rejected,
            t.duplicates,
            t.lost
        );
    }
    out += &format!(
        "simulator: {} write requests, {} stored, {} dropped, {} conflicts, {} 5xx, {} gateway timeouts after storing, {} resets; at most {} requests open for alice\n\n",
        s.writes_received,
        s.persisted,
        s.dropped,
        s.conflicts,
        s.errors,
        s.gateway_timeouts,
        s.resets_before_persist + s.resets_after_persist,
        r.max_open_at_upstream
    );
    out += &format!("answers by status: {:?}\n\n", t.statuses);
    if let Some((a, b)) = r.outage {
        out += &format!(
            "outage: simulator down from {a:.1} s to {b:.1} s; {} answers came meanwhile\n\n",
            r.answers_during_outage
        );
    }
    if !r.readyz.is_empty() {
        out += "/readyz changes:\n";
        for c in &r.readyz {
            out += &format!(
                "- {:.1} s: {} ({})\n",
                c.at,
                if c.ready {
                    "200 ready"
                } else {
                    "503 not ready"
                },
                c.detail
            );
        }
        out += "\n";
    }
    out += &replay_lines(&r.replay, r.after_replay.as_ref());
    out += &error_lines(t);
    out
}

/// The replay passes and where the writes ended, one line each.
pub(crate) fn replay_lines(passes: &[ReplayPass], end: Option<&Final>) -> String {
    let mut out = String::new();
    for (i, p) in passes.iter().enumerate() {
        out += &format!(
            "replay pass {}: {} rows, {} confirmed ({} found already stored), {} still unconfirmed, {:.1} s ({:.1} rows/s)\n",
            i + 1,
            p.rows,
            p.confirmed,
            p.adopted,
            p.still_unconfirmed,
            p.elapsed_s,
            p.rows as f64 / p.elapsed_s.max(0.001)
        );
    }
    if let Some(f) = end {
        out += &format!(
            "\nafter replay: {} stored exactly once, **{} duplicates**, {} still journaled, **{} missing**\n",
            f.stored_once, f.duplicates, f.still_journaled, f.missing
        );
    }
    out
}

/// What clients were told, by kind, and examples of lost writes.
pub(crate) fn error_lines(t: &Tally) -> String {
    let mut out = String::new();
    if !t.errors.is_empty() {
        out += "\nerrors clients saw:\n";
        for (e, n) in &t.errors {
            out += &format!("- {n} × {e}\n");
        }
    }
    for l in &t.lost_examples {
        out += &format!("- lost: {l}\n");
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The SIGTERM run: the sidecar as its own process, many writes held, then SIGTERM.
// ---------------------------------------------------------------------------------------------
