//! `rally-sidecar journal list` and `journal replay`. Listing never changes a row. Replay
//! re-sends writes the journal holds as unconfirmed with the operator's credential
//! (`RALLY_API_KEY`), and only rows written by the same Rally user: the same credential (its
//! digest under the journal's secret), or a credential Rally said belongs to that user. Other
//! rows are skipped with the reason — a write is never stored under another user's name. Each
//! row is first looked for by its fingerprint — it may have landed after all — and only
//! written again if absent; then read back. It ends confirmed, rejected (Rally refused it for
//! good), or stays unconfirmed with the new cause. While a live sidecar owns the journal its
//! pending rows are writes it is holding: replay leaves them alone and says so; once no sidecar
//! owns the journal, rows a stopped one left pending are recovered (made unconfirmed) first.

// Fleet mode: the central replayer over the fleet's ledger (issue 15).
mod ledger;
pub use ledger::replay_with as replay_fleet_with;

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method};
use serde_json::Value;

use crate::config::Config;
use crate::confirm::{self, Expected, Fate, Kind, rally::RallyWrite};
use crate::journal::{Journal, Recovery, Row, State};
use crate::rally::Session;
use crate::rally::credential::Operator;
use crate::rally::lookups::User;

/// What happened to one row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Replayed {
    pub id: i64,
    pub state: State,
    pub object_id: Option<i64>,
    pub adopted: bool,
    pub detail: String,
    /// Why the row was not replayed (another writer), if it was not.
    pub skipped: Option<String>,
}

/// What `journal replay` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplayReport {
    /// The live sidecar that owns the journal, whose pending rows were left alone.
    pub owner: Option<crate::journal::owner::Owner>,
    /// Pending rows it held that a live owner was holding (not touched).
    pub held_by_owner: usize,
    /// Rows a stopped sidecar left pending, made unconfirmed before replaying.
    pub recovered: usize,
    pub rows: Vec<Replayed>,
}

/// One row as `journal list` prints it: state, time, writer, the result and its fate.
pub fn render_row(r: &Row) -> String {
    let writer = r
        .rally_user_name
        .as_deref()
        .or(r.rally_user.as_deref())
        .unwrap_or("unknown writer");
    let tc = r
        .formatted_id
        .as_deref()
        .or(r.test_case.as_deref())
        .unwrap_or("-");
    let line = format!(
        "{:>6}  {:<11}  {}  {:<11}  {:<20} tc={:<10} build={:<16} verdict={:<8} attempts={} oid={} {}",
        r.id,
        r.state.as_str(),
        r.received_at,
        r.operation,
        writer,
        tc,
        r.build.as_deref().unwrap_or("-"),
        r.verdict.as_deref().unwrap_or("-"),
        r.attempts,
        r.object_id
            .map(|o| o.to_string())
            .unwrap_or_else(|| "-".into()),
        r.last_error.as_deref().unwrap_or("")
    );
    crate::telemetry::redact::escape_controls(&line).into_owned()
}

/// `journal replay`'s report for a person: one line per row, then a summary.
pub fn render_replay(r: &ReplayReport) -> (String, String) {
    let mut lines = String::new();
    for d in &r.rows {
        let line = format!(
            "{:>6}  {:<11}  oid={}  {}{}",
            d.id,
            if d.skipped.is_some() {
                "skipped"
            } else {
                d.state.as_str()
            },
            d.object_id
                .map(|o| o.to_string())
                .unwrap_or_else(|| "-".into()),
            d.detail,
            if d.adopted { " (adopted)" } else { "" }
        );
        lines.push_str(&crate::telemetry::redact::escape_controls(&line));
        lines.push('\n');
    }
    let count = |s: State| {
        r.rows
            .iter()
            .filter(|d| d.skipped.is_none() && d.state == s)
            .count()
    };
    let skipped = r.rows.iter().filter(|d| d.skipped.is_some()).count();
    let mut summary = format!(
        "replayed {}: {} confirmed, {} rejected, {} still unconfirmed, {skipped} skipped (another writer)",
        r.rows.len() - skipped,
        count(State::Confirmed),
        count(State::Rejected),
        count(State::Unconfirmed),
    );
    if r.recovered > 0 {
        summary.push_str(&format!(
            "; {} row(s) a stopped sidecar left pending were recovered first",
            r.recovered
        ));
    }
    if let Some(o) = &r.owner {
        summary.push_str(&format!(
            "; {} pending row(s) left alone: they are held right now by a live {o}",
            r.held_by_owner
        ));
    }
    (lines, summary)
}

/// `journal replay`: recovery when no live sidecar owns the journal, then every unconfirmed
/// row (or those in `ids`) replayed.
pub async fn replay_journal(
    cfg: Arc<Config>,
    journal: &Journal,
    ids: Vec<i64>,
    api_key: &str,
) -> Result<ReplayReport, String> {
    // Fleet mode: the ledger holds every pod's writes; this journal is only a pod's copy.
    if let Some(fleet) = cfg.fleet.clone() {
        if !ids.is_empty() {
            return Err("in fleet mode replay takes the ledger's rows as it claims them; --ids names journal rows".into());
        }
        return ledger::replay_fleet(cfg, fleet, api_key).await;
    }
    let (owner, recovered) = match journal.recover_unowned().await.map_err(|e| e.to_string())? {
        Recovery::Owned(o) => (Some(o), 0),
        Recovery::Recovered(n) => (None, n),
    };
    let held_by_owner = match &owner {
        Some(_) => journal
            .counts()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .find_map(|(state, n)| (state == State::Pending).then_some(n as usize))
            .unwrap_or(0),
        None => 0,
    };
    let rows = journal
        .list(Some(State::Unconfirmed), ids, 1_000_000)
        .await
        .map_err(|e| e.to_string())?;
    let rows = replay(cfg, journal, rows, api_key).await?;
    Ok(ReplayReport {
        owner,
        held_by_owner,
        recovered,
        rows,
    })
}

/// Removes the `key=` security token (basic-auth sessions do not survive; API keys need none).
fn without_key(path: &str) -> String {
    let Some((p, q)) = path.split_once('?') else {
        return path.to_string();
    };
    let kept: Vec<&str> = q
        .split('&')
        .filter(|kv| !kv.to_ascii_lowercase().starts_with("key="))
        .collect();
    if kept.is_empty() {
        p.to_string()
    } else {
        format!("{p}?{}", kept.join("&"))
    }
}

/// Replays `rows` (only unconfirmed ones are touched), as many at once as the credential's
/// upstream slots (`upstream.max_concurrency_per_credential`); results come newest first,
/// as `journal list` shows rows.
pub async fn replay(
    cfg: Arc<Config>,
    journal: &Journal,
    rows: Vec<Row>,
    api_key: &str,
) -> Result<Vec<Replayed>, String> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    let ctx = Session::with_writer_key(
        &cfg,
        &Operator::ApiKey(api_key.to_string()),
        journal.writer_secret(),
    )?;
    let me = ctx
        .lookups
        .owner(&ctx.cred)
        .await
        .map_err(|e| format!("Rally did not say whose key RALLY_API_KEY is ({e})"))?;
    // Rows in flight: most of a row's time is spent waiting (backoff, read lag, the read-back
    // window), holding no slot, so many rows per slot keep the user's budget busy (measured:
    // 8 per slot 11.6 rows/s, 32 35.6, 64 66.2 with the soak's faults at 5 ms; docs/benchmarks.md);
    // the governor still never lets more than the budget's requests reach Rally at once.
    let at_once = cfg.upstream.max_concurrency_per_credential.max(1) * 64;
    let ctx = &ctx;
    let cfg = &cfg;
    // Rows for the same result (same fingerprint: the client sent it twice) go in separate
    // rounds, so the second finds what the first wrote instead of racing it.
    let mut out = Vec::new();
    let mut left: Vec<Row> = Vec::new();
    for row in rows.into_iter().filter(|r| r.state == State::Unconfirmed) {
        match other_writer(&row, ctx.cred.fingerprint(), &me) {
            None => left.push(row),
            Some(why) => out.push(Replayed {
                id: row.id,
                state: row.state,
                object_id: row.object_id,
                adopted: false,
                detail: why.clone(),
                skipped: Some(why),
            }),
        }
    }
    while !left.is_empty() {
        let mut seen = std::collections::HashSet::new();
        let (now, later): (Vec<Row>, Vec<Row>) = left
            .into_iter()
            .partition(|r| seen.insert(fingerprint_of(r).unwrap_or_else(|| r.id.to_string())));
        let done: Vec<Replayed> = stream::iter(now)
            .map(|row| replay_row(cfg, ctx, journal, row))
            .buffered(at_once)
            .try_collect()
            .await?;
        out.extend(done);
        left = later;
    }
    out.sort_by_key(|r| std::cmp::Reverse(r.id));
    Ok(out)
}

/// Why the operator may not replay `row`, if they may not: it was written by another Rally
/// user, or by a credential Rally never said belonged to anyone.
fn other_writer(row: &Row, operator_digest: &str, me: &User) -> Option<String> {
    if row.credential == operator_digest || row.rally_user.as_deref() == Some(me.reference.as_str())
    {
        return None;
    }
    let me_name = me.name.as_deref().unwrap_or(&me.reference);
    Some(match (&row.rally_user, &row.rally_user_name) {
        (Some(_), Some(name)) => format!(
            "written by {name}, not {me_name}: replay it with a key of {name} so it is stored under the writer's name"
        ),
        (Some(user), None) => format!(
            "written by {user}, not {me_name}: replay it with a key of that user so it is stored under the writer's name"
        ),
        (None, _) => "its writer is unknown (Rally never accepted the credential it was sent with): replay it with the writer's own key".to_string(),
    })
}

/// How long a result the row's last attempt stored may still be invisible (reads lag writes):
/// the replay looks for it that long before writing it again, or once if that time has passed.
pub(crate) fn still_invisible(updated_at: &str, policy: &confirm::Policy) -> std::time::Duration {
    let since =
        time::OffsetDateTime::parse(updated_at, &time::format_description::well_known::Rfc3339)
            .map(|t| time::OffsetDateTime::now_utc() - t)
            .ok()
            .and_then(|d| std::time::Duration::try_from(d).ok())
            // A time that cannot be read: assume the attempt was just now.
            .unwrap_or(std::time::Duration::ZERO);
    policy.readback_window.saturating_sub(since)
}

/// The `workspace=` a stored path names, if any.
fn workspace_of(path: &str) -> Option<String> {
    let (_, q) = path.split_once('?')?;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        k.eq_ignore_ascii_case("workspace")
            .then(|| {
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .and_then(|v| crate::wsapi::scope_id(&v))
    })
}

/// The fingerprint query of a row's result, if it can be built.
fn fingerprint_of(row: &Row) -> Option<String> {
    let body: Value = serde_json::from_str(&row.body).ok()?;
    let fields = body.as_object()?.values().next()?.as_object()?;
    confirm::fingerprint_query(&Expected::from_fields(fields))
}

/// Looks for one row's result, writes it again only if absent, reads it back, settles the row.
async fn replay_row(
    cfg: &Arc<Config>,
    ctx: &Session,
    journal: &Journal,
    row: Row,
) -> Result<Replayed, String> {
    let body: Value = serde_json::from_str(&row.body).unwrap_or(Value::Null);
    let fields = body
        .as_object()
        .and_then(|m| m.values().next())
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let expected = Expected::from_fields(&fields);
    let uri = format!("{}{}", cfg.upstream.origin_string(), without_key(&row.path));
    let Ok(uri) = uri.parse() else {
        return Ok(Replayed {
            id: row.id,
            state: State::Unconfirmed,
            object_id: None,
            adopted: false,
            skipped: None,
            detail: format!("bad stored path {}", row.path),
        });
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    ctx.cred.apply(&mut headers);
    let up = RallyWrite {
        lookups: ctx.lookups.clone(),
        cred: ctx.cred.clone(),
        conn: None,
        method: if row.operation == "update" {
            Method::POST
        } else {
            Method::PUT
        },
        uri,
        headers,
        body: bytes::Bytes::from(row.body.clone()),
        workspace: workspace_of(&row.path),
        ctx: None,
    };
    let kind = if row.operation == "update" {
        Kind::Update
    } else {
        Kind::Create
    };
    let fate = confirm::confirm(
        &up,
        kind,
        (kind == Kind::Create).then(|| still_invisible(&row.updated_at, &cfg.confirm.policy)),
        &expected,
        &cfg.confirm.policy,
        rand::random::<f64>,
        std::future::pending(),
    )
    .await;
    let r = match fate {
        Fate::Confirmed {
            object_id,
            attempts,
            adopted,
            ..
        } => {
            let detail = if adopted {
                "found in Rally by its fingerprint"
            } else {
                "written and read back"
            };
            journal
                .settle(
                    row.id,
                    State::Confirmed,
                    attempts,
                    Some(format!("replayed: {detail}")),
                    Some(object_id),
                    None,
                )
                .await
                .map_err(|e| e.to_string())?;
            Replayed {
                id: row.id,
                state: State::Confirmed,
                object_id: Some(object_id),
                adopted,
                detail: detail.into(),
                skipped: None,
            }
        }
        Fate::Rejected {
            attempts, cause, ..
        } => {
            // Rally refused it for good (validation, authorization): no replay will change
            // that, so the row says so instead of waiting for another replay.
            journal
                .settle(
                    row.id,
                    State::Rejected,
                    attempts,
                    Some(format!("replay: Rally refused it: {cause}")),
                    None,
                    None,
                )
                .await
                .map_err(|e| e.to_string())?;
            Replayed {
                id: row.id,
                state: State::Rejected,
                object_id: None,
                adopted: false,
                detail: cause,
                skipped: None,
            }
        }
        Fate::Unconfirmed {
            attempts, cause, ..
        } => {
            journal
                .settle(
                    row.id,
                    State::Unconfirmed,
                    attempts,
                    Some(format!("replay: {cause}")),
                    None,
                    None,
                )
                .await
                .map_err(|e| e.to_string())?;
            Replayed {
                id: row.id,
                state: State::Unconfirmed,
                object_id: None,
                adopted: false,
                detail: cause,
                skipped: None,
            }
        }
    };
    Ok(r)
}

/// `journal`'s subcommands.
#[derive(clap::Subcommand)]
pub enum JournalCommand {
    /// List writes, newest first.
    List {
        #[command(flatten)]
        serve: super::ConfigArgs,
        /// Only writes in this state: pending, confirmed, rejected, unconfirmed.
        #[arg(long)]
        state: Option<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-send unconfirmed writes with RALLY_API_KEY, each after a fingerprint check.
    Replay {
        #[command(flatten)]
        serve: super::ConfigArgs,
        /// Only these journal ids (default: every unconfirmed write).
        #[arg(long = "id")]
        ids: Vec<i64>,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `rally-sidecar journal list|replay`.
pub fn cli(action: JournalCommand) -> u8 {
    use crate::journal::{Journal, State};
    let (serve, state, limit, ids, json, replay) = match action {
        JournalCommand::List {
            serve,
            state,
            limit,
            json,
        } => (serve, state, limit, vec![], json, false),
        JournalCommand::Replay { serve, ids, json } => (serve, None, 0, ids, json, true),
    };
    let cfg = match serve.load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let state = match state.as_deref().map(|s| (s, State::parse(s))) {
        None => None,
        Some((_, Some(s))) => Some(s),
        Some((s, None)) => {
            eprintln!(
                "rally-sidecar journal: --state {s:?} is not one of pending, confirmed, rejected, unconfirmed, refused"
            );
            return super::EX_USAGE;
        }
    };
    let operator = crate::rally::credential::Operator::from_env();
    let api_key = operator
        .as_ref()
        .and_then(|o| o.api_key())
        .map(str::to_string);
    if replay && api_key.is_none() {
        eprintln!(
            "rally-sidecar journal replay: set RALLY_API_KEY to a full-access API key of the user the results belong to"
        );
        return super::EX_USAGE;
    }
    super::block_on(async move {
        // Opening to inspect or replay never changes a row by itself.
        let j = match Journal::open(&cfg.journal.path) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("rally-sidecar journal: {e}");
                return 1;
            }
        };
        if !replay {
            let rows = match j.list(state, ids, limit).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("rally-sidecar journal: {e}");
                    return 1;
                }
            };
            for r in &rows {
                if json {
                    println!("{}", serde_json::to_string(r).unwrap_or_default());
                } else {
                    println!("{}", render_row(r));
                }
            }
            if !json {
                eprintln!("{} row(s) from {}", rows.len(), cfg.journal.path.display());
            }
            return 0;
        }
        let key = api_key.unwrap_or_default();
        match replay_journal(std::sync::Arc::new(cfg), &j, ids, &key).await {
            Ok(report) => {
                let (lines, summary) = render_replay(&report);
                if json {
                    for d in &report.rows {
                        println!("{}", serde_json::to_string(d).unwrap_or_default());
                    }
                } else {
                    print!("{lines}");
                }
                eprintln!("{summary}");
                let done = report
                    .rows
                    .iter()
                    .all(|d| d.skipped.is_none() && d.state == State::Confirmed);
                if done { 0 } else { 2 }
            }
            Err(e) => {
                eprintln!("rally-sidecar journal replay: {e}");
                1
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_stored_token_is_not_replayed() {
        assert_eq!(
            super::without_key("/x/create?key=[redacted]&workspace=/workspace/1"),
            "/x/create?workspace=/workspace/1"
        );
        assert_eq!(super::without_key("/x/create?key=None"), "/x/create");
        assert_eq!(super::without_key("/x/create"), "/x/create");
    }
}
