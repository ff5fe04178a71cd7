//! Writes sent, and every one of them accounted for: stored once and confirmed, or journaled
//! as unconfirmed; then the journal replayed and counted again.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use rally_sidecar::config::{Config, Overrides, RawConfig};
use rally_sidecar::journal::{Journal, State};
use rally_sidecar::sim::Simulator;
use rally_sidecar::sim::model::Type;

use crate::run::*;

pub(crate) fn client(concurrency: usize) -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build_http()
}

/// The Build that names write `i` of run `seed`.
pub fn build_name(seed: u64, i: usize) -> String {
    format!("soak-{seed}-{i}")
}

/// Sends one create per build to `base` (`http://host:port`), `concurrency` at a time.
/// `started` is called with the number started so far, before each one is sent.
pub async fn drive(
    base: &str,
    builds: Vec<String>,
    concurrency: usize,
    began: Instant,
    started: impl Fn(usize) + Send + Sync + 'static,
) -> Vec<Outcome> {
    drive_paths(base, builds, concurrency, 0, began, started).await
}

/// [`drive`], with every `v2x_every`-th write (0: none) sent to the `v2.x` path Rally also
/// serves, so that path's interception is soaked too.
pub async fn drive_paths(
    base: &str,
    builds: Vec<String>,
    concurrency: usize,
    v2x_every: usize,
    began: Instant,
    started: impl Fn(usize) + Send + Sync + 'static,
) -> Vec<Outcome> {
    let client = client(concurrency);
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let started = Arc::new(started);
    let mut tasks = Vec::with_capacity(builds.len());
    for (i, build) in builds.into_iter().enumerate() {
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        started(i + 1);
        let client = client.clone();
        let root = if v2x_every > 0 && i % v2x_every == v2x_every - 1 {
            "/slm/webservice/v2.x"
        } else {
            WS
        };
        let url = format!("{base}{root}/testcaseresult/create");
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let body = json!({"TestCaseResult": {
                "TestCase": format!("/testcase/{}", 1001 + i % 50),
                "Verdict": if i % 7 == 0 { "Fail" } else { "Pass" },
                "Build": build,
                "Date": "2026-11-24T12:00:00.000Z",
                "Tester": "/user/400",
            }});
            one_write(&client, &url, build, body, began).await
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(o) = t.await {
            out.push(o);
        }
    }
    out
}

pub(crate) async fn one_write(
    client: &Client,
    url: &str,
    build: String,
    body: Value,
    began: Instant,
) -> Outcome {
    let t0 = Instant::now();
    let mut o = Outcome {
        build,
        status: 0,
        confirmed: None,
        acknowledged_only: false,
        journal_id: None,
        ledger_id: None,
        error: None,
        transport_error: None,
        latency: Duration::ZERO,
        at: 0.0,
    };
    let req = Request::builder()
        .method(Method::PUT)
        .uri(url)
        .header("zsessionid", API_KEY)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())));
    let answer = match req {
        Ok(req) => client.request(req).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match answer {
        Err(e) => o.transport_error = Some(e),
        Ok(resp) => {
            o.status = resp.status().as_u16();
            let h = resp.headers();
            let text = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
            // `pending`: answered at Rally's acknowledgement (confirm.hold = ambiguous); the
            // journal says later whether it was read back.
            let confirmed = text("x-rally-sidecar-confirmed");
            o.acknowledged_only = confirmed.as_deref() == Some("pending");
            o.confirmed = confirmed.map(|v| v == "true" || v == "pending");
            o.journal_id = text("x-rally-sidecar-journal-id").and_then(|v| v.parse().ok());
            o.ledger_id = text("x-rally-sidecar-ledger-id").and_then(|v| v.parse().ok());
            o.error = text("x-rally-sidecar-error");
            match resp.into_body().collect().await {
                Ok(b) => {
                    let v: Value = serde_json::from_slice(&b.to_bytes()).unwrap_or(Value::Null);
                    // Rally's first error says more than the sidecar's one-word header.
                    let first = v
                        .as_object()
                        .and_then(|m| m.values().next())
                        .and_then(|r| r["Errors"].get(0))
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    if first.is_some() {
                        o.error = first;
                    }
                }
                Err(e) => o.transport_error = Some(format!("body: {e}")),
            }
        }
    }
    o.latency = t0.elapsed();
    o.at = began.elapsed().as_secs_f64();
    o
}

/// How many stored TestCaseResults carry each Build.
pub fn stored_per_build(sim: &Simulator) -> HashMap<String, usize> {
    let mut per = HashMap::new();
    for o in sim.objects(Type::TestCaseResult, "") {
        if let Some(b) = o["Build"].as_str() {
            *per.entry(b.to_string()).or_default() += 1;
        }
    }
    per
}

/// Puts every outcome in one box, from what the client saw, the journal and the store.
/// Without a journal (writes sent straight to the simulator) only answers and duplicates are
/// counted.
pub fn account(
    outcomes: &[Outcome],
    stored: &HashMap<String, usize>,
    journal: Option<&HashMap<i64, State>>,
) -> Tally {
    let mut t = Tally {
        writes: outcomes.len(),
        ..Tally::default()
    };
    for o in outcomes {
        *t.statuses.entry(o.status).or_default() += 1;
        if let Some(e) = o.error.as_ref().or(o.transport_error.as_ref()) {
            // Numbers (ids, counts) vary; the kind of error does not.
            let kind: String = e
                .chars()
                .take(120)
                .map(|c| if c.is_ascii_digit() { '#' } else { c })
                .collect();
            if t.errors.len() < 10 || t.errors.contains_key(&kind) {
                *t.errors.entry(kind).or_default() += 1;
            }
        }
        let n = stored.get(&o.build).copied().unwrap_or(0);
        if n > 1 {
            t.duplicates += 1;
        }
        let Some(journal) = journal else {
            continue;
        };
        let state = o.journal_id.and_then(|id| journal.get(&id)).copied();
        match (o.confirmed, state) {
            (Some(true), Some(State::Confirmed)) if n == 1 => t.confirmed += 1,
            (Some(true), Some(State::Unconfirmed)) if o.acknowledged_only && n <= 1 => {
                t.acknowledged_unconfirmed += 1;
            }
            (Some(false), Some(State::Unconfirmed)) if n <= 1 => {
                t.unconfirmed_journaled += 1;
                if n == 1 {
                    t.unconfirmed_but_stored += 1;
                }
            }
            (_, Some(State::Rejected)) if n == 0 => t.rejected += 1,
            _ => {
                t.lost += 1;
                if t.lost_examples.len() < 10 {
                    t.lost_examples.push(format!(
                        "{}: status {} confirmed {:?} journal {:?} stored {n} {}",
                        o.build,
                        o.status,
                        o.confirmed,
                        state,
                        o.transport_error.as_deref().unwrap_or("")
                    ));
                }
            }
        }
    }
    t
}

/// The journal as the accounting needs it, read once: every row's state by id, and the
/// Builds of the rows still unconfirmed.
pub async fn journal_view(j: &Journal) -> Result<(HashMap<i64, State>, HashSet<String>), String> {
    let rows = j
        .list(None, vec![], usize::MAX >> 1)
        .await
        .map_err(|e| e.to_string())?;
    let states = rows.iter().map(|r| (r.id, r.state)).collect();
    let unconfirmed = rows
        .into_iter()
        .filter(|r| r.state == State::Unconfirmed)
        .filter_map(|r| r.build)
        .collect();
    Ok((states, unconfirmed))
}

pub fn open_journal(path: &Path) -> Result<Journal, String> {
    Journal::open(path).map_err(|e| e.to_string())
}

/// Replays the journal's unconfirmed rows up to `passes` times (until none is left).
pub async fn replay_all(
    cfg: Arc<Config>,
    j: &Journal,
    passes: usize,
) -> Result<Vec<ReplayPass>, String> {
    let mut out = Vec::new();
    for _ in 0..passes {
        let rows = j
            .list(Some(State::Unconfirmed), vec![], usize::MAX >> 1)
            .await
            .map_err(|e| e.to_string())?;
        if rows.is_empty() {
            break;
        }
        let n = rows.len();
        let began = Instant::now();
        let done = rally_sidecar::commands::journal::replay(cfg.clone(), j, rows, API_KEY).await?;
        let elapsed_s = began.elapsed().as_secs_f64();
        let confirmed = done.iter().filter(|r| r.state == State::Confirmed).count();
        out.push(ReplayPass {
            rows: n,
            confirmed,
            adopted: done.iter().filter(|r| r.adopted).count(),
            still_unconfirmed: n - confirmed,
            elapsed_s,
        });
    }
    Ok(out)
}

/// Replays the journal, then finds where each of `builds` ended.
pub async fn replay_and_count(
    cfg: Arc<Config>,
    j: &Journal,
    passes: usize,
    sim: &Simulator,
    builds: &[String],
) -> Result<(Vec<ReplayPass>, Final), String> {
    let passes = replay_all(cfg, j, passes).await?;
    let (_, left) = journal_view(j).await?;
    Ok((passes, final_state(builds, &stored_per_build(sim), &left)))
}

/// Where each write ended after the replay.
pub fn final_state(
    builds: &[String],
    stored: &HashMap<String, usize>,
    unconfirmed_builds: &HashSet<String>,
) -> Final {
    let mut f = Final::default();
    for b in builds {
        match stored.get(b).copied().unwrap_or(0) {
            1 => f.stored_once += 1,
            0 if unconfirmed_builds.contains(b) => f.still_journaled += 1,
            0 => f.missing += 1,
            _ => f.duplicates += 1,
        }
    }
    f
}

/// The sidecar configuration the runs use: in front of `upstream`, journal at `journal`.
pub fn sidecar_config(
    upstream: &str,
    journal: &Path,
    readback_window: &str,
) -> Result<Config, String> {
    let mut raw = RawConfig::default();
    raw.journal.path = Some(journal.to_path_buf());
    raw.confirm.readback_window = Some(readback_window.into());
    raw.context.build_env = Some(rally_sidecar::config::List::Items(vec![]));
    raw.log.level = Some("warn".into());
    let ov = Overrides {
        listen: Some("127.0.0.1:0".into()),
        upstream: Some(upstream.into()),
        admin_listen: Some("127.0.0.1:0".into()),
        ..Overrides::default()
    };
    Config::validate(&raw, &ov).map_err(|e| e.to_string())
}

/// A fresh journal path inside `dir`.
pub fn fresh_journal(dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let d = dir.join(format!("{name}-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d.join("journal.sqlite"))
}
