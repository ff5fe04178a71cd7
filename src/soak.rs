//! The reliability and scale runs behind docs/reliability.md and docs/benchmarks.md: many
//! TestCaseResult creates, each with its own Build, sent through a sidecar (or straight to the
//! simulator, for comparison) against a simulator with faults; then every write is accounted
//! for — stored once and confirmed, or journaled as unconfirmed — and the journal is replayed.
//!
//! [`run`] does it all in one process: the simulator, the sidecar (the same [`crate::run_with`]
//! that `serve` runs) and the clients, optionally with the simulator stopped for a while in the
//! middle (the outage run). [`drive`], [`account`] and [`replay_all`] are the pieces, used
//! also by the SIGTERM run, where the sidecar is a separate process.
//! `cargo run --release --example soak -- --help` lists the knobs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Overrides, RawConfig};
use crate::journal::{Journal, State};
use crate::sim::faults::FaultConfig;
use crate::sim::model::Type;
use crate::sim::{self, SimOptions, Simulator, Stats};
use crate::{Listeners, Shared};

/// The simulator's API key for alice (default fixtures), the credential every run writes with.
pub const API_KEY: &str = "_sim_alice_key";
const WS: &str = "/slm/webservice/v2.0";

/// The fault profile of the soak in issue 7: drop 15%, conflicts 5%, 5xx 5%, gateway timeouts
/// after persisting 2%, resets 1%, read lag up to 2 s, and 1–5 ms of latency.
pub fn soak_faults() -> FaultConfig {
    FaultConfig {
        latency: Some("1ms..5ms".into()),
        drop_writes: 0.15,
        conflict_rate: 0.05,
        error_rate: 0.05,
        gateway_timeout_rate: 0.02,
        reset_rate: 0.01,
        read_lag: Some("0ms..2s".into()),
        ..FaultConfig::default()
    }
}

/// The simulator stopped for `length` once `after` writes have been started.
#[derive(Debug, Clone, Copy)]
pub struct Outage {
    pub after: usize,
    pub length: Duration,
}

/// One run's settings.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub writes: usize,
    pub concurrency: usize,
    pub seed: u64,
    pub faults: FaultConfig,
    pub outage: Option<Outage>,
    /// Send straight to the simulator (no sidecar): the baseline for latency and scale.
    pub direct: bool,
    /// Replay passes over the journal after the run (0: no replay).
    pub replay_passes: usize,
    /// `confirm.readback_window` for the sidecar (must exceed the read lag).
    pub readback_window: String,
    /// Where the journal goes (a fresh file is made inside).
    pub dir: PathBuf,
    /// Prints progress to stderr.
    pub progress: bool,
}

impl SoakOptions {
    pub fn new(writes: usize, dir: &Path) -> SoakOptions {
        SoakOptions {
            writes,
            concurrency: 64,
            seed: 7,
            faults: soak_faults(),
            outage: None,
            direct: false,
            replay_passes: 3,
            readback_window: "10s".into(),
            dir: dir.to_path_buf(),
            progress: false,
        }
    }
}

/// What the client saw for one write.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub build: String,
    pub status: u16,
    /// `X-Rally-Sidecar-Confirmed`.
    pub confirmed: Option<bool>,
    /// `X-Rally-Sidecar-Journal-Id`.
    pub journal_id: Option<i64>,
    /// The first of the answer's `Errors`, or else `X-Rally-Sidecar-Error`.
    pub error: Option<String>,
    /// No HTTP answer at all (connection failed or cut).
    pub transport_error: Option<String>,
    pub latency: Duration,
    /// Seconds since the run began, when the answer came.
    pub at: f64,
}

/// Every write, put in exactly one box.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Tally {
    pub writes: usize,
    /// Answered as confirmed, journaled as confirmed, stored exactly once.
    pub confirmed: usize,
    /// Answered as unconfirmed (or with an error) and journaled as unconfirmed; stored at most
    /// once.
    pub unconfirmed_journaled: usize,
    /// Of those, how many Rally had stored anyway (replay adopts them).
    pub unconfirmed_but_stored: usize,
    /// Refused for good (journaled as rejected, not stored).
    pub rejected: usize,
    /// Stored more than once.
    pub duplicates: usize,
    /// Anything else: no answer, or an answer that the journal and the store contradict.
    pub lost: usize,
    /// Answers by HTTP status.
    pub statuses: BTreeMap<u16, usize>,
    /// Error texts clients received, with counts (the first 10 kinds).
    pub errors: BTreeMap<String, usize>,
    /// Examples of lost writes, for the report.
    pub lost_examples: Vec<String>,
}

/// Latency figures in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    pub fn of(samples: &[Duration]) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
        Latency {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: ms[ms.len() - 1],
            mean: ms.iter().sum::<f64>() / ms.len() as f64,
        }
    }
}

/// One replay pass over the journal's unconfirmed rows.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ReplayPass {
    pub rows: usize,
    pub confirmed: usize,
    /// Found already stored, by fingerprint (not written again).
    pub adopted: usize,
    pub still_unconfirmed: usize,
}

/// After the replay: where every write ended.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Final {
    pub stored_once: usize,
    pub duplicates: usize,
    /// Neither stored nor left unconfirmed in the journal.
    pub missing: usize,
    /// Not stored, still unconfirmed in the journal (replay can be run again).
    pub still_journaled: usize,
}

/// A change of `/readyz`, seconds since the run began.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReadyChange {
    pub at: f64,
    pub ready: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SoakReport {
    pub writes: usize,
    pub concurrency: usize,
    pub direct: bool,
    pub elapsed_s: f64,
    pub writes_per_s: f64,
    pub latency_ms: Latency,
    pub tally: Tally,
    /// The simulator's counters (after the run, before the replay).
    pub simulator: Stats,
    /// The most requests alice had open at the simulator at once.
    pub max_open_at_upstream: usize,
    /// (stopped at, restarted at), seconds since the run began.
    pub outage: Option<(f64, f64)>,
    /// Answers received while the simulator was down, and how many were errors.
    pub answers_during_outage: usize,
    pub readyz: Vec<ReadyChange>,
    pub replay: Vec<ReplayPass>,
    pub after_replay: Option<Final>,
    pub journal: PathBuf,
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

fn client(concurrency: usize) -> Client {
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
        let url = format!("{base}{WS}/testcaseresult/create");
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

async fn one_write(
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
        journal_id: None,
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
            o.confirmed = text("x-rally-sidecar-confirmed").map(|v| v == "true");
            o.journal_id = text("x-rally-sidecar-journal-id").and_then(|v| v.parse().ok());
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
    Journal::open(path)
        .map(|(j, _)| j)
        .map_err(|e| e.to_string())
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
        let done = crate::replay::replay(cfg.clone(), j, rows, API_KEY).await?;
        let confirmed = done.iter().filter(|r| r.state == State::Confirmed).count();
        out.push(ReplayPass {
            rows: n,
            confirmed,
            adopted: done.iter().filter(|r| r.adopted).count(),
            still_unconfirmed: n - confirmed,
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
    raw.context.build_env = Some(crate::config::List::Items(vec![]));
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

/// Polls `GET /readyz` on `admin` every 200 ms and records each change until `stop`.
async fn watch_readyz(
    admin: SocketAddr,
    began: Instant,
    stop: CancellationToken,
) -> Vec<ReadyChange> {
    let client = client(1);
    let mut seen: Vec<ReadyChange> = Vec::new();
    loop {
        let (ready, detail) = match get_text(&client, format!("http://{admin}/readyz"), None).await
        {
            Some((status, body)) => (
                status == 200,
                body.lines()
                    .find(|l| l.starts_with("FAIL"))
                    .unwrap_or("all ok")
                    .to_string(),
            ),
            None => (false, "admin unreachable".to_string()),
        };
        if seen.last().map(|c| c.ready) != Some(ready) {
            seen.push(ReadyChange {
                at: began.elapsed().as_secs_f64(),
                ready,
                detail,
            });
        }
        tokio::select! {
            _ = stop.cancelled() => return seen,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// The whole run in one process: simulator, sidecar, clients, accounting and replay.
pub async fn run(opts: SoakOptions) -> Result<SoakReport, String> {
    let sim_opts = SimOptions {
        seed: opts.seed,
        max_concurrency_per_user: 12,
        faults: opts.faults.clone(),
        ..SimOptions::default()
    };
    opts.faults.validate()?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let sim_handle = sim::start(listener, None, sim_opts).map_err(|e| e.to_string())?;
    let sim_addr = sim_handle.addr;
    let sim = sim_handle.sim.clone();
    let upstream = sim_handle.base_url.clone();
    let journal = fresh_journal(&opts.dir, "soak").map_err(|e| e.to_string())?;
    let cfg = sidecar_config(&upstream, &journal, &opts.readback_window)?;
    let replay_cfg = Arc::new(cfg.clone());

    let began = Instant::now();
    let (base, sidecar) = if opts.direct {
        (upstream.clone(), None)
    } else {
        let listeners = Listeners::bind(&cfg).await.map_err(|e| e.to_string())?;
        let addr = listeners.proxy.local_addr().map_err(|e| e.to_string())?;
        let admin = listeners.admin.local_addr().map_err(|e| e.to_string())?;
        let token = CancellationToken::new();
        let shared = Shared::default();
        let task = tokio::spawn(crate::run_with(
            cfg,
            listeners,
            token.clone(),
            shared.clone(),
        ));
        for _ in 0..400 {
            if shared.readiness.is_ready() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (format!("http://{addr}"), Some((token, task, admin)))
    };
    let stop_watch = CancellationToken::new();
    let watcher = sidecar
        .as_ref()
        .map(|(_, _, admin)| tokio::spawn(watch_readyz(*admin, began, stop_watch.clone())));

    // The outage: a task that stops the simulator when told, waits, and serves the same
    // simulator (everything it stored) on the same port again.
    let (outage_tx, outage_rx) = tokio::sync::oneshot::channel::<()>();
    let mut keep_sim = None;
    let outage_task = match opts.outage {
        None => {
            keep_sim = Some(sim_handle);
            None
        }
        Some(o) => {
            let sim = sim.clone();
            Some(tokio::spawn(async move {
                let mut handle = Some(sim_handle);
                if outage_rx.await.is_err() {
                    return (None, handle);
                }
                let down = began.elapsed().as_secs_f64();
                if let Some(h) = handle.take() {
                    h.stop().await;
                }
                tokio::time::sleep(o.length).await;
                let mut again = None;
                for _ in 0..100 {
                    match TcpListener::bind(sim_addr).await {
                        Ok(l) => {
                            again = sim::start_shared(l, None, sim.clone()).ok();
                            break;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
                (Some((down, began.elapsed().as_secs_f64())), again)
            }))
        }
    };

    let builds: Vec<String> = (0..opts.writes).map(|i| build_name(opts.seed, i)).collect();
    let outage_after = opts.outage.map(|o| o.after);
    let trigger = std::sync::Mutex::new(Some(outage_tx));
    let progress = opts.progress;
    let total = opts.writes;
    let outcomes = drive(&base, builds.clone(), opts.concurrency, began, move |n| {
        if Some(n) == outage_after
            && let Ok(mut t) = trigger.lock()
            && let Some(tx) = t.take()
        {
            let _ = tx.send(());
        }
        if progress && n % 1000 == 0 {
            eprintln!(
                "soak: {n}/{total} started after {:.1} s",
                began.elapsed().as_secs_f64()
            );
        }
    })
    .await;
    let elapsed = began.elapsed().as_secs_f64();

    let mut outage = None;
    if let Some(t) = outage_task {
        let (window, handle) = t.await.map_err(|e| e.to_string())?;
        outage = window;
        keep_sim = handle;
    }
    // Stop the sidecar (graceful) so the journal is settled, then count.
    if let Some((token, task, _)) = sidecar {
        // Give /readyz a moment to see a restarted upstream.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        token.cancel();
        let _ = task.await;
    }
    stop_watch.cancel();
    let readyz = match watcher {
        Some(w) => w.await.unwrap_or_default(),
        None => vec![],
    };
    let stats = sim.stats();
    let stored = stored_per_build(&sim);
    let j = if opts.direct {
        None
    } else {
        Some(open_journal(&journal)?)
    };
    let states = match &j {
        Some(j) => Some(journal_view(j).await?.0),
        None => None,
    };
    let tally = account(&outcomes, &stored, states.as_ref());
    let answers_during_outage = outage
        .map(|(a, b)| outcomes.iter().filter(|o| o.at >= a && o.at <= b).count())
        .unwrap_or(0);

    let mut replay = Vec::new();
    let mut after_replay = None;
    if let Some(j) = j.as_ref().filter(|_| opts.replay_passes > 0) {
        if progress {
            eprintln!("soak: replaying the journal");
        }
        let (passes, end) =
            replay_and_count(replay_cfg, j, opts.replay_passes, &sim, &builds).await?;
        replay = passes;
        after_replay = Some(end);
    }
    let latencies: Vec<Duration> = outcomes.iter().map(|o| o.latency).collect();
    let report = SoakReport {
        writes: opts.writes,
        concurrency: opts.concurrency,
        direct: opts.direct,
        elapsed_s: elapsed,
        writes_per_s: opts.writes as f64 / elapsed.max(1e-9),
        latency_ms: Latency::of(&latencies),
        tally,
        max_open_at_upstream: stats
            .max_open_per_user
            .get("alice@example.com")
            .copied()
            .unwrap_or(0),
        simulator: stats,
        outage,
        answers_during_outage,
        readyz,
        replay,
        after_replay,
        journal,
    };
    if let Some(h) = keep_sim {
        h.stop().await;
    }
    Ok(report)
}

impl Final {
    /// Replay left nothing stored twice and nothing missing.
    pub fn is_clean(&self) -> bool {
        self.duplicates == 0 && self.missing == 0
    }
}

impl SoakReport {
    /// No write lost or stored twice, before or after the replay.
    pub fn is_clean(&self) -> bool {
        self.tally.lost == 0
            && self.tally.duplicates == 0
            && self.after_replay.as_ref().is_none_or(Final::is_clean)
    }
}

impl DrainReport {
    /// No write lost, stored twice or left pending, before or after the replay.
    pub fn is_clean(&self) -> bool {
        self.tally.lost == 0
            && self.tally.duplicates == 0
            && self.pending_after_exit == 0
            && self.after_replay.as_ref().is_none_or(Final::is_clean)
    }
}

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
            "confirmed {}, unconfirmed and journaled {} (of which stored anyway {}), rejected {}, **duplicates {}**, **lost {}**\n\n",
            t.confirmed,
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
fn replay_lines(passes: &[ReplayPass], end: Option<&Final>) -> String {
    let mut out = String::new();
    for (i, p) in passes.iter().enumerate() {
        out += &format!(
            "replay pass {}: {} rows, {} confirmed ({} found already stored), {} still unconfirmed\n",
            i + 1,
            p.rows,
            p.confirmed,
            p.adopted,
            p.still_unconfirmed
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
fn error_lines(t: &Tally) -> String {
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

/// Settings of the SIGTERM (drain) run.
#[derive(Debug, Clone)]
pub struct DrainOptions {
    /// The `rally-sidecar` executable.
    pub binary: PathBuf,
    pub writes: usize,
    /// Simulator latency per request: long enough that the writes are still held at SIGTERM.
    pub latency: String,
    /// The sidecar's `shutdown_grace`.
    pub grace: String,
    /// Idle TCP connections opened (and checked) before the writes; 0 for none.
    pub idle_connections: usize,
    pub dir: PathBuf,
    pub replay_passes: usize,
    pub progress: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DrainReport {
    pub writes: usize,
    pub rss_idle_kib: u64,
    pub idle_connections: usize,
    /// With the idle connections open: RSS, and whether `/healthz` and a proxied read answered.
    pub rss_with_idle_kib: u64,
    pub healthy_with_idle: bool,
    /// Writes past the guard (in the sidecar's hands) when SIGTERM was sent.
    pub held_at_sigterm: usize,
    pub rss_held_kib: u64,
    pub peak_rss_kib: u64,
    /// Seconds from SIGTERM to the process's exit, and its exit code.
    pub exit_after_s: f64,
    pub exit_code: Option<i32>,
    pub tally: Tally,
    /// Rows still `pending` in the journal after exit (must be 0).
    pub pending_after_exit: usize,
    pub replay: Vec<ReplayPass>,
    pub after_replay: Option<Final>,
    pub journal: PathBuf,
}

/// The proxy and admin addresses from the "rally-sidecar ready" line of a JSON log, for
/// harnesses that start the sidecar as a process on port 0.
pub fn ready_addrs(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let v: Value = serde_json::from_str(line).ok()?;
    let addr = |name: &str| v["fields"][name].as_str()?.parse().ok();
    Some((addr("proxy_addr")?, addr("admin_addr")?))
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The sum of one counter's series in a Prometheus text answer.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

async fn get_text(client: &Client, url: String, key: Option<&str>) -> Option<(u16, String)> {
    let mut req = Request::get(url);
    if let Some(k) = key {
        req = req.header("zsessionid", k);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::new())).ok()?)
        .await
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Starts the sidecar process, holds `writes` writes, sends SIGTERM and accounts for each.
pub async fn drain_run(opts: DrainOptions) -> Result<DrainReport, String> {
    use tokio::io::AsyncBufReadExt;
    let faults = FaultConfig {
        latency: Some(opts.latency.clone()),
        ..FaultConfig::default()
    };
    faults.validate()?;
    // The simulator starts fast for the warm-up and is slowed down for the held writes.
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let sim_handle =
        sim::start(listener, None, SimOptions::default()).map_err(|e| e.to_string())?;
    let sim = sim_handle.sim.clone();
    let journal = fresh_journal(&opts.dir, "drain").map_err(|e| e.to_string())?;
    let mut child = tokio::process::Command::new(&opts.binary)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--upstream",
            &sim_handle.base_url,
        ])
        .env("RALLY_SIDECAR_JOURNAL_PATH", &journal)
        .env("RALLY_SIDECAR_SHUTDOWN_GRACE", &opts.grace)
        .env("RALLY_SIDECAR_LOG_FORMAT", "json")
        .env("RALLY_SIDECAR_LOG_LEVEL", "info")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", opts.binary.display()))?;
    let pid = child.id().ok_or("the sidecar exited at once")?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (proxy, admin) = loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .map_err(|_| "the sidecar did not start in 30 s")?
            .map_err(|e| e.to_string())?
            .ok_or("the sidecar exited before it was ready")?;
        if let Some(addrs) = ready_addrs(&line) {
            break addrs;
        }
    };
    // Keep reading its logs so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let probe = client(4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut report = DrainReport {
        writes: opts.writes,
        rss_idle_kib: proc_status_kib(pid, "VmRSS:"),
        idle_connections: opts.idle_connections,
        journal: journal.clone(),
        ..DrainReport::default()
    };

    if opts.idle_connections > 0 {
        let mut idle = Vec::with_capacity(opts.idle_connections);
        for _ in 0..opts.idle_connections {
            match tokio::net::TcpStream::connect(proxy).await {
                Ok(s) => idle.push(s),
                Err(e) => return Err(format!("idle connection {}: {e}", idle.len() + 1)),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let health = get_text(&probe, format!("http://{admin}/healthz"), None).await;
        let read = get_text(
            &probe,
            format!("http://{proxy}{WS}/subscription?fetch=Name"),
            Some(API_KEY),
        )
        .await;
        report.healthy_with_idle = health.is_some_and(|(s, _)| s == 200)
            && read.is_some_and(|(s, b)| s == 200 && b.contains("Subscription"));
        report.rss_with_idle_kib = proc_status_kib(pid, "VmRSS:");
        if opts.progress {
            eprintln!(
                "drain: {} idle connections open, RSS {} KiB, healthy {}",
                idle.len(),
                report.rss_with_idle_kib,
                report.healthy_with_idle
            );
        }
        drop(idle);
    }

    // One write per test case first, as a running test suite would have made: the guard's
    // cache is warm, so the held writes wait on Rally, not on lookups.
    let warm: Vec<String> = (0..50).map(|i| format!("warm-up-{i}")).collect();
    drive(&format!("http://{proxy}"), warm, 12, Instant::now(), |_| {}).await;
    let intercepted = async || {
        get_text(&probe, format!("http://{admin}/metrics"), None)
            .await
            .map(|(_, t)| metric_sum(&t, "rally_sidecar_intercepted_writes_total") as usize)
            .unwrap_or(0)
    };
    let before = intercepted().await;
    sim.set_faults(faults)?;
    let began = Instant::now();
    let builds: Vec<String> = (0..opts.writes).map(|i| build_name(99, i)).collect();
    let base = format!("http://{proxy}");
    let writes = opts.writes;
    let driver = tokio::spawn({
        let builds = builds.clone();
        async move { drive(&base, builds, writes, began, |_| {}).await }
    });
    // Wait until every write is past the guard (in the sidecar's hands), at most a minute.
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let held = intercepted().await.saturating_sub(before);
        report.held_at_sigterm = held;
        if held >= opts.writes || Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report.rss_held_kib = proc_status_kib(pid, "VmRSS:");
    report.peak_rss_kib = proc_status_kib(pid, "VmHWM:");
    if opts.progress {
        eprintln!(
            "drain: {} writes held, RSS {} KiB; SIGTERM",
            report.held_at_sigterm, report.rss_held_kib
        );
    }
    let term = Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .map_err(|e| e.to_string())?;
    if !killed.success() {
        return Err("kill -TERM failed".into());
    }
    let status = tokio::time::timeout(Duration::from_secs(600), child.wait())
        .await
        .map_err(|_| "the sidecar did not exit in 10 minutes")?
        .map_err(|e| e.to_string())?;
    report.exit_after_s = term.elapsed().as_secs_f64();
    report.exit_code = status.code();
    let outcomes = driver.await.map_err(|e| e.to_string())?;
    let j = open_journal(&journal)?;
    let (states, _) = journal_view(&j).await?;
    report.pending_after_exit = states.values().filter(|s| **s == State::Pending).count();
    report.tally = account(&outcomes, &stored_per_build(&sim), Some(&states));
    if opts.replay_passes > 0 {
        // The replay runs later, against a Rally no longer slowed down for the run.
        sim.set_faults(FaultConfig::default())?;
        let cfg = Arc::new(sidecar_config(&sim_handle.base_url, &journal, "10s")?);
        let (passes, end) = replay_and_count(cfg, &j, opts.replay_passes, &sim, &builds).await?;
        report.replay = passes;
        report.after_replay = Some(end);
    }
    sim_handle.stop().await;
    Ok(report)
}

/// The drain report as a short Markdown summary.
pub fn drain_summary(r: &DrainReport) -> String {
    let t = &r.tally;
    let mut out = format!(
        "RSS idle {} KiB; {} writes held at SIGTERM, RSS {} KiB (peak {} KiB)\n\n",
        r.rss_idle_kib, r.held_at_sigterm, r.rss_held_kib, r.peak_rss_kib
    );
    if r.idle_connections > 0 {
        out += &format!(
            "{} idle connections: RSS {} KiB, /healthz and a proxied read answered: {}\n\n",
            r.idle_connections, r.rss_with_idle_kib, r.healthy_with_idle
        );
    }
    out += &format!(
        "exit code {:?} {:.1} s after SIGTERM; answered: {:?}; confirmed {}, unconfirmed and journaled {}, **duplicates {}**, **lost {}**; journal rows still pending: {}\n\n",
        r.exit_code,
        r.exit_after_s,
        t.statuses,
        t.confirmed,
        t.unconfirmed_journaled,
        t.duplicates,
        t.lost,
        r.pending_after_exit
    );
    out += &error_lines(t);
    out += &replay_lines(&r.replay, r.after_replay.as_ref());
    out
}
