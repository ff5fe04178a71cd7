//! The soak, outage and scale runs: options, reports, and [`run`], which drives the simulator,
//! the sidecar and the clients in one process.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use rally_sidecar::sim::faults::FaultConfig;
use rally_sidecar::sim::{self, SimOptions, Stats};
use rally_sidecar::{Listeners, Shared};

use crate::{account::*, drain::*};

/// The simulator's API key for alice (default fixtures), the credential every run writes with.
pub const API_KEY: &str = "_sim_alice_key";
pub(crate) const WS: &str = "/slm/webservice/v2.0";

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
    /// Every `v2x_every`-th write goes to `/slm/webservice/v2.x` (0: none).
    pub v2x_every: usize,
    /// `confirm.hold` for the sidecar: "readback" or "ambiguous".
    pub hold: String,
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
            v2x_every: 3,
            hold: "readback".into(),
        }
    }
}

/// What the client saw for one write.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub build: String,
    pub status: u16,
    /// `X-Rally-Sidecar-Confirmed` (`pending` counts as told "stored").
    pub confirmed: Option<bool>,
    /// Answered `pending`: at Rally's acknowledgement, before the read-back.
    pub acknowledged_only: bool,
    /// `X-Rally-Sidecar-Journal-Id`.
    pub journal_id: Option<i64>,
    /// `X-Rally-Sidecar-Ledger-Id`: fleet mode answered a retry from the ledger.
    pub ledger_id: Option<i64>,
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
    /// Answered at Rally's acknowledgement (`confirm.hold = ambiguous`), then not read back:
    /// journaled unconfirmed although the client was told it was stored.
    pub acknowledged_unconfirmed: usize,
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
    /// Seconds the pass took.
    pub elapsed_s: f64,
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

pub(crate) type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// Polls `GET /readyz` on `admin` every 200 ms and records each change until `stop`.
pub(crate) async fn watch_readyz(
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
    let mut cfg = sidecar_config(&upstream, &journal, &opts.readback_window)?;
    cfg.confirm.hold = match opts.hold.as_str() {
        "ambiguous" => rally_sidecar::config::Hold::Ambiguous,
        "readback" => rally_sidecar::config::Hold::Readback,
        // A typo must not measure the other mode.
        other => {
            return Err(format!(
                "hold {other:?} is not \"readback\" or \"ambiguous\""
            ));
        }
    };
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
        let task = tokio::spawn(rally_sidecar::run_with(
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
    let outcomes = drive_paths(
        &base,
        builds.clone(),
        opts.concurrency,
        opts.v2x_every,
        began,
        move |n| {
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
        },
    )
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
