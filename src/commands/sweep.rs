//! `rally-sidecar sweep`: the cleanup of stuck results. Rally has no "In Progress" verdict by
//! default, so "stuck" is what `sweep.stuck_verdicts` says (e.g. a custom "In Progress"). A
//! result is stuck when its Verdict is one of those and its Date is older than
//! `sweep.older_than`; the action sets Verdict to `sweep.set_verdict` and appends a line to
//! Notes saying when and why. Dry-run by default; idempotent (a swept result is no longer
//! stuck, and each one is re-read just before it is changed, so two sweeps at once change it
//! once); audited in Notes and in the output.
//!
//! [`plan`] is a pure function of (now, candidates, config). [`run`] gathers candidates —
//! Rally's stuck results in the configured scope, and journal rows unconfirmed for longer than
//! `older_than`, which are re-confirmed first — and applies the plan through the governor.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

pub use crate::config::SweepConfig;

/// A result that may be stuck, as read from Rally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub object_id: i64,
    pub test_case: Option<String>,
    pub build: Option<String>,
    pub verdict: String,
    pub date: String,
    pub notes: Option<String>,
}

/// One change the sweep will make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Action {
    pub object_id: i64,
    pub test_case: Option<String>,
    pub build: Option<String>,
    pub from: String,
    pub to: String,
    pub date: String,
    /// The Notes after the change (the audit line appended).
    pub notes: String,
}

fn parse(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// The audit line appended to Notes.
pub fn audit_line(
    now: OffsetDateTime,
    from: &str,
    to: &str,
    older_than: Duration,
    since: &str,
) -> String {
    format!(
        "[rally-sidecar sweep {}] Verdict {from} -> {to}: still {from} after more than {} (result dated {since})",
        crate::wsapi::format_date(now),
        humantime::format_duration(older_than)
    )
}

/// Decides what to change. Pure: same inputs, same plan.
pub fn plan(now: OffsetDateTime, candidates: &[Candidate], cfg: &SweepConfig) -> Vec<Action> {
    let cutoff = now - cfg.older_than;
    let mut actions: Vec<Action> = candidates
        .iter()
        .filter(|c| cfg.stuck_verdicts.contains(&c.verdict))
        .filter(|c| c.verdict != cfg.set_verdict)
        .filter(|c| parse(&c.date).is_some_and(|d| d < cutoff))
        .map(|c| {
            let line = audit_line(now, &c.verdict, &cfg.set_verdict, cfg.older_than, &c.date);
            let notes = match c.notes.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
                Some(n) => format!("{n}<br />{line}"),
                None => line,
            };
            Action {
                object_id: c.object_id,
                test_case: c.test_case.clone(),
                build: c.build.clone(),
                from: c.verdict.clone(),
                to: cfg.set_verdict.clone(),
                date: c.date.clone(),
                notes,
            }
        })
        .collect();
    actions.sort_by_key(|a| a.object_id);
    actions.dedup_by_key(|a| a.object_id);
    actions
}

/// The query for stuck results: `((Verdict = "a") OR (Verdict = "b"))` AND older than the cutoff.
pub fn stuck_query(verdicts: &[String], cutoff: OffsetDateTime) -> Option<String> {
    let mut parts = verdicts
        .iter()
        .filter_map(|v| crate::confirm::quote(v).map(|q| format!("(Verdict = {q})")));
    let first = parts.next()?;
    let verdicts = parts.fold(first, |acc, p| format!("({acc} OR {p})"));
    Some(format!(
        "({verdicts} AND (Date < \"{}\"))",
        crate::wsapi::format_date(cutoff)
    ))
}

/// A candidate from a query result item.
pub fn candidate_of(v: &Value) -> Option<Candidate> {
    Some(Candidate {
        object_id: v.get("ObjectID")?.as_i64()?,
        test_case: v
            .get("TestCase")
            .and_then(crate::wsapi::parse_ref)
            .map(|(_, id)| id),
        build: v.get("Build").and_then(Value::as_str).map(str::to_string),
        verdict: v.get("Verdict")?.as_str()?.to_string(),
        date: v.get("Date")?.as_str()?.to_string(),
        notes: v.get("Notes").and_then(Value::as_str).map(str::to_string),
    })
}

/// `rally-sidecar sweep`.
pub fn cli(serve: super::ConfigArgs, apply: bool, dry_run: bool, json: bool) -> u8 {
    let cfg = match serve.load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(key) = crate::rally::credential::Operator::from_env()
        .and_then(|o| o.api_key().map(str::to_string))
    else {
        eprintln!(
            "rally-sidecar sweep: set RALLY_API_KEY to a full-access API key that may edit the results"
        );
        return super::EX_USAGE;
    };
    let apply = (apply || cfg.sweep.apply) && !dry_run;
    super::block_on(async move {
        let journal = crate::journal::Journal::open(&cfg.journal.path).ok();
        let cfg = std::sync::Arc::new(cfg);
        match run(
            cfg,
            journal.as_ref(),
            &key,
            apply,
            time::OffsetDateTime::now_utc(),
        )
        .await
        {
            Ok(report) => {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&report).unwrap_or_default()
                    );
                } else {
                    print!("{}", render(&report));
                }
                if report
                    .outcomes
                    .iter()
                    .any(|(_, o)| matches!(o, Outcome::Failed(_)))
                {
                    2
                } else {
                    0
                }
            }
            Err(e) => {
                eprintln!("rally-sidecar sweep: {e}");
                1
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SweepConfig {
        SweepConfig {
            stuck_verdicts: vec!["In Progress".into()],
            older_than: Duration::from_secs(3600),
            set_verdict: "Blocked".into(),
            apply: false,
            interval: None,
        }
    }

    fn c(oid: i64, verdict: &str, date: &str, notes: Option<&str>) -> Candidate {
        Candidate {
            object_id: oid,
            test_case: Some("1001".into()),
            build: Some("b".into()),
            verdict: verdict.into(),
            date: date.into(),
            notes: notes.map(str::to_string),
        }
    }

    fn now() -> OffsetDateTime {
        parse("2026-11-24T12:00:00.000Z").expect("now")
    }

    #[test]
    fn only_old_results_with_a_stuck_verdict() {
        let cands = [
            c(1, "In Progress", "2026-11-24T10:00:00.000Z", None),
            c(2, "In Progress", "2026-11-24T11:30:00.000Z", None),
            c(3, "Pass", "2026-11-20T00:00:00.000Z", None),
            c(
                4,
                "In Progress",
                "2026-11-01T00:00:00.000Z",
                Some("first line"),
            ),
            c(
                4,
                "In Progress",
                "2026-11-01T00:00:00.000Z",
                Some("first line"),
            ),
            c(5, "In Progress", "not a date", None),
        ];
        let p = plan(now(), &cands, &cfg());
        assert_eq!(
            p.iter().map(|a| a.object_id).collect::<Vec<_>>(),
            vec![1, 4],
            "recent, other verdicts, duplicates and bad dates are left"
        );
        assert_eq!(p[0].to, "Blocked");
        assert_eq!(
            p[0].notes,
            "[rally-sidecar sweep 2026-11-24T12:00:00.000Z] Verdict In Progress -> Blocked: still In Progress after more than 1h (result dated 2026-11-24T10:00:00.000Z)"
        );
        assert!(
            p[1].notes
                .starts_with("first line<br />[rally-sidecar sweep"),
            "Notes are appended to"
        );
    }

    #[test]
    fn the_plan_is_a_function_of_its_inputs_and_idempotent() {
        let cands = [c(1, "In Progress", "2026-11-24T10:00:00.000Z", None)];
        assert_eq!(plan(now(), &cands, &cfg()), plan(now(), &cands, &cfg()));
        let after: Vec<Candidate> = plan(now(), &cands, &cfg())
            .into_iter()
            .map(|a| c(a.object_id, &a.to, &a.date, Some(&a.notes)))
            .collect();
        assert!(
            plan(now(), &after, &cfg()).is_empty(),
            "a swept result is no longer stuck"
        );
        let mut none = cfg();
        none.stuck_verdicts.clear();
        assert!(
            plan(now(), &cands, &none).is_empty(),
            "no stuck verdicts configured: nothing to do"
        );
    }

    #[test]
    fn the_query_is_pairwise_and_quoted() {
        let q = stuck_query(&["In Progress".into(), "Running".into()], now()).expect("query");
        assert_eq!(
            q,
            "(((Verdict = \"In Progress\") OR (Verdict = \"Running\")) AND (Date < \"2026-11-24T12:00:00.000Z\"))"
        );
        assert!(
            crate::sim::query::parse(&q).is_ok(),
            "the simulator's parser accepts it"
        );
        assert_eq!(stuck_query(&[], now()), None);
    }
}

/// What applying one action did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// The result changed since it was planned (another sweep, a person): left alone.
    Skipped {
        verdict: String,
    },
    Failed(String),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Applied => f.write_str("applied"),
            Outcome::Skipped { verdict } => write!(f, "skipped: Verdict is now {verdict:?}"),
            Outcome::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

impl PartialEq<str> for Outcome {
    fn eq(&self, other: &str) -> bool {
        match self {
            Outcome::Applied => other == "applied",
            _ => other == self.to_string().as_str(),
        }
    }
}

impl Serialize for Outcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What a sweep found and did.
#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    pub dry_run: bool,
    pub actions: Vec<Action>,
    /// ObjectID → what applying its action did.
    pub outcomes: Vec<(i64, Outcome)>,
    /// Journal rows unconfirmed for longer than `older_than` that were found in Rally.
    pub journal_reconfirmed: Vec<i64>,
    /// Journal rows still not found in Rally (replay them with `journal replay`).
    pub journal_unresolved: Vec<i64>,
}

/// Gathers candidates, plans, and (with `apply`) changes what the plan says.
pub async fn run(
    cfg: std::sync::Arc<crate::config::Config>,
    journal: Option<&crate::journal::Journal>,
    api_key: &str,
    apply: bool,
    now: OffsetDateTime,
) -> Result<SweepReport, String> {
    use crate::confirm::{self, Expected};
    let sweep = &cfg.sweep;
    let operator = crate::rally::credential::Operator::ApiKey(api_key.to_string());
    // Fleet mode: the sweep's requests take the fleet's permits like any pod's (issue 15);
    // its registration lapses with its lease once the sweep is done.
    let session = match cfg.fleet.clone() {
        Some(fc) => {
            let fleet = crate::fleet::Fleet::connect(fc)
                .await
                .map_err(|e| format!("fleet: {e}"))?;
            crate::rally::Session::with_fleet(&cfg, &operator, &fleet)?
        }
        None => crate::rally::Session::new(&cfg, &operator)?,
    };
    let (lookups, cred) = (&session.lookups, &session.cred);
    let cutoff = now - sweep.older_than;

    // 1. Journal rows unconfirmed for too long: look for them in Rally first.
    let (mut reconfirmed, mut unresolved) = (Vec::new(), Vec::new());
    if let Some(j) = journal {
        let rows = j
            .list(Some(crate::journal::State::Unconfirmed), vec![], 10_000)
            .await
            .map_err(|e| e.to_string())?;
        for row in rows
            .into_iter()
            .filter(|r| parse(&r.received_at).is_some_and(|t| t < cutoff))
        {
            let body: Value = serde_json::from_str(&row.body).unwrap_or(Value::Null);
            let fields = body
                .as_object()
                .and_then(|m| m.values().next())
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let expected = Expected::from_fields(&fields);
            let found = match confirm::fingerprint_query(&expected) {
                Some(q) => lookups.find_results(cred, &q).await.unwrap_or_default(),
                None => vec![],
            };
            match found.iter().min() {
                Some(oid) => {
                    j.settle(
                        row.id,
                        crate::journal::State::Confirmed,
                        0,
                        Some("found in Rally by the sweep".into()),
                        Some(*oid),
                        None,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                    reconfirmed.push(row.id);
                }
                None => unresolved.push(row.id),
            }
        }
    }

    // 2. Stuck results in the scope, page by page.
    let mut candidates = Vec::new();
    if let Some(q) = stuck_query(&sweep.stuck_verdicts, cutoff) {
        let q = percent_encoding::utf8_percent_encode(&q, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
        let ws = match &cfg.scope.workspace {
            Some(w) => {
                let (_, v) = lookups
                    .get_json(
                        cred,
                        &crate::commands::check::lookup_path("workspace", w, None),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let oid = v["QueryResult"]["Results"][0]["ObjectID"].as_i64();
                Some(oid.ok_or_else(|| format!("workspace {w:?} not found"))?)
            }
            None => None,
        };
        let mut scopes: Vec<String> = Vec::new();
        for p in &cfg.scope.projects {
            let (_, v) = lookups
                .get_json(cred, &crate::commands::check::lookup_path("project", p, ws))
                .await
                .map_err(|e| e.to_string())?;
            let oid = v["QueryResult"]["Results"][0]["ObjectID"]
                .as_i64()
                .ok_or_else(|| format!("project {p:?} not found"))?;
            scopes.push(format!("&project=/project/{oid}&projectScopeDown=false"));
        }
        if scopes.is_empty() {
            scopes.push(String::new());
        }
        let ws_param = ws
            .map(|w| format!("&workspace=/workspace/{w}"))
            .unwrap_or_default();
        for scope in scopes {
            let mut start = 1;
            loop {
                let path = format!(
                    "testcaseresult?query={q}&fetch=ObjectID,TestCase,Build,Verdict,Date,Notes&order=ObjectID&pagesize=200&start={start}{ws_param}{scope}"
                );
                let (_, v) = lookups
                    .get_json(cred, &path)
                    .await
                    .map_err(|e| e.to_string())?;
                let r = &v["QueryResult"];
                if let Some(e) = r["Errors"].as_array().and_then(|a| a.first()) {
                    return Err(format!("Rally refused the stuck-results query: {e}"));
                }
                let page: Vec<Candidate> = r["Results"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(candidate_of)
                    .collect();
                let total = r["TotalResultCount"].as_u64().unwrap_or(0) as usize;
                let n = page.len();
                candidates.extend(page);
                start += n.max(1);
                if n == 0 || start > total {
                    break;
                }
            }
        }
    }
    let actions = plan(now, &candidates, sweep);

    // 3. Apply: re-read each result just before changing it, so two sweeps change it once.
    let mut outcomes = Vec::new();
    if apply {
        for a in &actions {
            let (_, v) = lookups
                .get_json(
                    cred,
                    &format!("testcaseresult/{}?fetch=Verdict,Notes,Date", a.object_id),
                )
                .await
                .map_err(|e| e.to_string())?;
            let current = &v["TestCaseResult"];
            let verdict = current["Verdict"].as_str().unwrap_or("");
            if !sweep.stuck_verdicts.iter().any(|s| s == verdict) {
                outcomes.push((
                    a.object_id,
                    Outcome::Skipped {
                        verdict: verdict.to_string(),
                    },
                ));
                continue;
            }
            let line = audit_line(now, verdict, &a.to, sweep.older_than, &a.date);
            let notes = match current["Notes"]
                .as_str()
                .map(str::trim)
                .filter(|n| !n.is_empty())
            {
                Some(n) => format!("{n}<br />{line}"),
                None => line,
            };
            let body = serde_json::json!({"TestCaseResult": {"Verdict": a.to, "Notes": notes}});
            let outcome = match session
                .call(
                    http::Method::POST,
                    &format!("testcaseresult/{}", a.object_id),
                    Some(&body),
                )
                .await
            {
                Ok((status, v)) => match crate::rally::lookups::first_error(&v) {
                    Some(e) => Outcome::Failed(e),
                    None if status.is_success() => Outcome::Applied,
                    None => Outcome::Failed(format!("Rally answered {status}")),
                },
                Err(e) => Outcome::Failed(e),
            };
            outcomes.push((a.object_id, outcome));
        }
    }
    Ok(SweepReport {
        dry_run: !apply,
        actions,
        outcomes,
        journal_reconfirmed: reconfirmed,
        journal_unresolved: unresolved,
    })
}

/// The report as a table.
pub fn render(r: &SweepReport) -> String {
    let mut s = format!(
        "{} — {} stuck result(s){}\n",
        if r.dry_run {
            "DRY RUN (nothing changed; --apply or sweep.apply = true to change)"
        } else {
            "APPLIED"
        },
        r.actions.len(),
        if r.actions.is_empty() { "" } else { ":" }
    );
    for a in &r.actions {
        let outcome = r
            .outcomes
            .iter()
            .find(|(o, _)| *o == a.object_id)
            .map(|(_, x)| x.to_string())
            .unwrap_or_else(|| "planned".into());
        // Values from Rally are escaped: a Build cannot write to the operator's terminal.
        use crate::telemetry::redact::escape_controls as esc;
        s.push_str(&format!(
            "  {:>12}  tc={:<8} build={:<16} {} -> {}  dated {}  {}\n",
            a.object_id,
            esc(a.test_case.as_deref().unwrap_or("-")),
            esc(a.build.as_deref().unwrap_or("-")),
            esc(&a.from),
            esc(&a.to),
            esc(&a.date),
            esc(&outcome)
        ));
    }
    if !r.journal_reconfirmed.is_empty() {
        s.push_str(&format!(
            "journal rows found in Rally and marked confirmed: {:?}\n",
            r.journal_reconfirmed
        ));
    }
    if !r.journal_unresolved.is_empty() {
        s.push_str(&format!(
            "journal rows still not in Rally (run `rally-sidecar journal replay`): {:?}\n",
            r.journal_unresolved
        ));
    }
    s
}
