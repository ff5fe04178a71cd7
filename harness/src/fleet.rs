//! The fleet run (issue 15, docs/fleet.md): several sidecar *processes* in fleet mode, one API
//! key, one simulator capped at Rally's 12 concurrent requests per user with latency and
//! faults, one real PostgreSQL ([`crate::pg`]). Clients write round-robin over the pods (a
//! client whose pod vanished retries the same write on the next one). Optionally one pod is
//! killed with SIGKILL mid-run and PostgreSQL is stopped for a while; then the live pods stop
//! (SIGTERM: drain, last rows shipped), the central replayer runs — several processes at once,
//! as overlapping CronJobs would — and every write is accounted for: stored exactly once, or
//! still unconfirmed in the ledger. The same writes through one sidecar alone with the same
//! budget give the time to compare with, and [`bench::permit_latency`] measures permits.

pub mod bench;
mod pods;
mod watch;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;

use rally_sidecar::sim::faults::FaultConfig;
use rally_sidecar::sim::{self, SimOptions, Stats};

use crate::account::{
    account, build_name, client, final_state, journal_view, one_write, open_journal,
    stored_per_build,
};
use crate::pg::PgServer;
use crate::run::{Final, Latency, Outcome, Tally, WS};
pub use pods::{Pod, PodConfig, replay_process};
use watch::{Ledger, Watch};

/// PostgreSQL stopped once `after` writes have been started, for `length`.
#[derive(Debug, Clone, Copy)]
pub struct PgOutage {
    pub after: usize,
    pub length: Duration,
}

/// One fleet run's settings.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// The `rally-sidecar` executable.
    pub binary: PathBuf,
    pub pods: usize,
    /// Clients per pod.
    pub concurrency: usize,
    /// Writes in all.
    pub writes: usize,
    pub budget: u32,
    pub lease: String,
    pub unavailable_timeout: String,
    /// The simulator's concurrent requests per user.
    pub sim_max_concurrency: usize,
    pub latency: String,
    /// Drops, conflicts and 5xx on.
    pub faults: bool,
    /// `false`: the same run through one sidecar alone (no PostgreSQL), `budget` its cap.
    pub fleet: bool,
    /// Pod 0 is killed with SIGKILL once this many writes have been started.
    pub kill_after: Option<usize>,
    pub pg_outage: Option<PgOutage>,
    /// Replayer processes run at once, per round.
    pub replayers: usize,
    pub replay_rounds: usize,
    pub dir: PathBuf,
    pub seed: u64,
    pub progress: bool,
}

impl FleetOptions {
    /// The run: 4 pods × 32, budget 10, simulator at 12 with 50 ms and faults.
    pub fn new(binary: PathBuf, writes: usize, dir: PathBuf) -> FleetOptions {
        FleetOptions {
            binary,
            pods: 4,
            concurrency: 32,
            writes,
            budget: 10,
            lease: "10s".into(),
            unavailable_timeout: "3s".into(),
            sim_max_concurrency: 12,
            latency: "50ms".into(),
            faults: true,
            fleet: true,
            kill_after: None,
            pg_outage: None,
            replayers: 2,
            replay_rounds: 3,
            dir,
            seed: 15,
            progress: false,
        }
    }
}

/// The kill of pod 0.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KillReport {
    pub at_s: f64,
    /// Its permits alive in PostgreSQL just before the kill.
    pub permits_held: i64,
    /// Seconds from the kill until none of its permits counted any more.
    pub permits_back_after_s: Option<f64>,
    /// Its ledger rows still pending after the kill (the replayer's to land).
    pub pending_rows: i64,
    pub lease_s: f64,
}

/// PostgreSQL's stop.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OutageReport {
    pub down_at_s: f64,
    pub up_at_s: f64,
    /// Answers received while it was down, by status and whether confirmed.
    pub answers_during: usize,
    pub unconfirmed_during: usize,
    /// An error text a client got while it was down.
    pub example_error: Option<String>,
    /// `/readyz`'s `fleet` line while it was down.
    pub readyz: Option<String>,
    /// Local journal rows the pods shipped after it came back (written while it was down).
    pub shipped_after: i64,
}

/// One round of replayers at once.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayRound {
    /// Rows each replayer replayed.
    pub per_replayer: Vec<usize>,
    /// Rows replayed by more than one replayer of the round (must be 0).
    pub replayed_twice: usize,
    pub confirmed: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct FleetReport {
    pub fleet: bool,
    pub pods: usize,
    pub concurrency: usize,
    /// Clients in all (the same alone as in the fleet).
    pub clients: usize,
    pub writes: usize,
    pub budget: u32,
    pub elapsed_s: f64,
    pub writes_per_s: f64,
    pub latency_ms: Latency,
    /// The most requests alice had open at the simulator at once (must be ≤ budget).
    pub max_open_at_upstream: usize,
    pub simulator: Stats,
    /// Answers as the clients saw them (before the replay).
    pub tally: Tally,
    pub confirmed_answers: usize,
    /// Writes a client sent again to another pod after its pod vanished.
    pub retried_on_another_pod: usize,
    /// Answers given from the ledger (a retry of a write already recorded).
    pub answered_from_ledger: usize,
    pub kill: Option<KillReport>,
    pub pg_outage: Option<OutageReport>,
    /// Ledger rows per state once the pods stopped, before the replay.
    pub ledger_before_replay: BTreeMap<String, i64>,
    pub replay: Vec<ReplayRound>,
    pub ledger_after_replay: BTreeMap<String, i64>,
    /// Where every write ended: stored once, twice, nowhere, or still in the ledger.
    pub after_replay: Final,
}

impl FleetReport {
    /// The budget held, nothing stored twice, nothing lost, no row replayed twice at once.
    pub fn is_clean(&self) -> bool {
        self.max_open_at_upstream <= self.budget as usize
            && self.after_replay.duplicates == 0
            && self.after_replay.missing == 0
            && self.replay.iter().all(|r| r.replayed_twice == 0)
    }
}

/// The faults of the run.
pub fn fleet_faults(latency: &str, faults: bool) -> FaultConfig {
    let on = |p: f64| if faults { p } else { 0.0 };
    FaultConfig {
        latency: Some(latency.into()),
        drop_writes: on(0.10),
        conflict_rate: on(0.05),
        error_rate: on(0.05),
        ..FaultConfig::default()
    }
}

/// The whole run.
pub async fn fleet_run(opts: FleetOptions) -> Result<FleetReport, String> {
    let pg = match opts.fleet {
        true => Some(Arc::new(
            tokio::task::spawn_blocking(PgServer::start)
                .await
                .map_err(|e| e.to_string())?,
        )),
        false => None,
    };
    let url = match &pg {
        Some(pg) => Some(pg.fresh_db().await),
        None => None,
    };
    let faults = fleet_faults(&opts.latency, opts.faults);
    faults.validate()?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let sim_handle = sim::start(
        listener,
        None,
        SimOptions {
            seed: opts.seed,
            max_concurrency_per_user: opts.sim_max_concurrency,
            faults,
            ..SimOptions::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let sim = sim_handle.sim.clone();
    let dir = opts.dir.join(format!(
        "fleet-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let pod_cfg = PodConfig {
        upstream: sim_handle.base_url.clone(),
        fleet_url: url.clone(),
        budget: opts.budget,
        lease: opts.lease.clone(),
        unavailable_timeout: opts.unavailable_timeout.clone(),
    };
    let n = if opts.fleet { opts.pods } else { 1 };
    let mut pods = Vec::new();
    for i in 0..n {
        let pod = Pod::start(&opts.binary, i, &pod_cfg, &dir).await?;
        if opts.fleet && pod.pod_id.is_none() {
            return Err(format!(
                "{} started without fleet mode: is it a build of this tree?",
                opts.binary.display()
            ));
        }
        pods.push(pod);
    }
    let ledger = match &url {
        Some(u) => Some(Ledger::connect(u).await?),
        None => None,
    };
    if opts.progress {
        eprintln!("fleet: {n} sidecar(s) up; {} writes", opts.writes);
    }

    let began = Instant::now();
    let bases: Vec<String> = pods.iter().map(Pod::base).collect();
    let dead: Arc<Vec<AtomicBool>> = Arc::new((0..n).map(|_| AtomicBool::new(false)).collect());
    let watch = Watch::new(
        &opts,
        pg.clone(),
        ledger.clone(),
        pods.iter()
            .map(|p| (p.admin, p.pod_id.clone(), p.journal.clone()))
            .collect(),
        began,
    );
    let started = Arc::new(AtomicUsize::new(0));
    let mut pods: Vec<Option<Pod>> = pods.into_iter().map(Some).collect();
    let events = watch.clone();
    let (kill_tx, mut kill_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    // As many clients alone as in the fleet: the comparison is of the sidecars, not the load.
    let driver = tokio::spawn(drive(
        bases,
        opts.writes,
        opts.concurrency * opts.pods,
        opts.seed,
        began,
        dead.clone(),
        started.clone(),
        move |k| {
            if Some(k) == events.kill_after() {
                let _ = kill_tx.send(());
            }
            events.started(k);
        },
    ));
    // The kill happens here, where the pods are owned.
    let mut driver = driver;
    let outcomes = loop {
        tokio::select! {
            r = &mut driver => break r.map_err(|e| e.to_string())?,
            Some(()) = kill_rx.recv() => {
                if let Some(pod) = pods[0].take() {
                    let before = watch.before_kill().await;
                    dead[0].store(true, Ordering::SeqCst);
                    pod.kill().await;
                    watch.killed(before);
                    if opts.progress {
                        eprintln!("fleet: pod 0 killed with SIGKILL after {:.1} s", began.elapsed().as_secs_f64());
                    }
                }
            }
        }
    };
    let elapsed = began.elapsed().as_secs_f64();
    if opts.progress {
        eprintln!(
            "fleet: {} answers after {elapsed:.1} s; stopping the pods",
            outcomes.len()
        );
    }
    let first_journal = pods.iter().flatten().next().map(|p| p.journal.clone());
    for pod in pods.into_iter().flatten() {
        pod.stop().await;
    }
    let (kill, pg_outage) = watch.finish(&outcomes).await;
    let stats = sim.stats();
    let builds: Vec<String> = (0..opts.writes).map(|i| build_name(opts.seed, i)).collect();
    let mut report = FleetReport {
        fleet: opts.fleet,
        pods: n,
        concurrency: opts.concurrency,
        clients: opts.concurrency * opts.pods,
        writes: opts.writes,
        budget: opts.budget,
        elapsed_s: elapsed,
        writes_per_s: opts.writes as f64 / elapsed.max(1e-9),
        latency_ms: Latency::of(&outcomes.iter().map(|o| o.0.latency).collect::<Vec<_>>()),
        max_open_at_upstream: stats
            .max_open_per_user
            .get("alice@example.com")
            .copied()
            .unwrap_or(0),
        simulator: stats,
        confirmed_answers: outcomes
            .iter()
            .filter(|o| o.0.confirmed == Some(true))
            .count(),
        retried_on_another_pod: outcomes.iter().filter(|o| o.1.retried).count(),
        answered_from_ledger: outcomes.iter().filter(|o| o.1.from_ledger).count(),
        kill,
        pg_outage,
        ..FleetReport::default()
    };
    let plain: Vec<Outcome> = outcomes.into_iter().map(|o| o.0).collect();
    report.tally = account(&plain, &stored_per_build(&sim), None);
    let Some(ledger) = ledger else {
        // One sidecar alone: its own journal replayed, as `journal replay` does without a fleet.
        let journal = first_journal.ok_or("no sidecar")?;
        for _ in 0..opts.replay_rounds {
            let rows = replay_process(&opts.binary, &pod_cfg, &journal).await?;
            if rows.is_empty() {
                break;
            }
        }
        let (_, open) = journal_view(&open_journal(&journal)?).await?;
        report.after_replay = final_state(&builds, &stored_per_build(&sim), &open);
        sim_handle.stop().await;
        return Ok(report);
    };
    report.ledger_before_replay = ledger.counts().await?;
    for _ in 0..opts.replay_rounds {
        if ledger.open_rows().await? == 0 {
            break;
        }
        let round = replay_round(&opts, &pod_cfg, &dir).await?;
        if opts.progress {
            eprintln!("fleet: replay round {round:?}");
        }
        report.replay.push(round);
    }
    report.ledger_after_replay = ledger.counts().await?;
    let open = ledger.open_builds().await?;
    report.after_replay = final_state(&builds, &stored_per_build(&sim), &open);
    sim_handle.stop().await;
    Ok(report)
}

/// `replayers` replay processes at once over the same ledger.
async fn replay_round(
    opts: &FleetOptions,
    cfg: &PodConfig,
    dir: &std::path::Path,
) -> Result<ReplayRound, String> {
    let runs: Vec<_> = (0..opts.replayers)
        .map(|i| {
            let (binary, cfg, dir) = (opts.binary.clone(), cfg.clone(), dir.to_path_buf());
            let journal = dir.join(format!("replayer-{i}.sqlite"));
            tokio::spawn(async move { replay_process(&binary, &cfg, &journal).await })
        })
        .collect();
    let mut seen: HashMap<i64, usize> = HashMap::new();
    let mut round = ReplayRound::default();
    for r in runs {
        let rows = r.await.map_err(|e| e.to_string())??;
        round.per_replayer.push(rows.len());
        for (id, state) in rows {
            *seen.entry(id).or_default() += 1;
            if state == "confirmed" {
                round.confirmed += 1;
            }
        }
    }
    round.replayed_twice = seen.values().filter(|n| **n > 1).count();
    Ok(round)
}

/// What else the client saw of one write.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen {
    pub retried: bool,
    pub from_ledger: bool,
}

/// Sends one create per build, `concurrency` at a time, round-robin over `bases`; a write
/// whose pod gave no answer (killed) is sent again, the same body, to the next live pod.
#[allow(clippy::too_many_arguments)]
async fn drive(
    bases: Vec<String>,
    writes: usize,
    concurrency: usize,
    seed: u64,
    began: Instant,
    dead: Arc<Vec<AtomicBool>>,
    started: Arc<AtomicUsize>,
    on_start: impl Fn(usize) + Send + Sync + 'static,
) -> Vec<(Outcome, Seen)> {
    let client = client(concurrency);
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let on_start = Arc::new(on_start);
    let bases = Arc::new(bases);
    let mut tasks = Vec::with_capacity(writes);
    for i in 0..writes {
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let k = started.fetch_add(1, Ordering::SeqCst) + 1;
        on_start(k);
        let (client, bases, dead) = (client.clone(), bases.clone(), dead.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let build = build_name(seed, i);
            let body = json!({"TestCaseResult": {
                "TestCase": format!("/testcase/{}", 1001 + i % 50),
                "Verdict": if i % 7 == 0 { "Fail" } else { "Pass" },
                "Build": build,
                "Date": "2026-11-24T12:00:00.000Z",
                "Tester": "/user/400",
            }});
            let mut seen = Seen::default();
            let mut o = None;
            for step in 0..bases.len() {
                let p = (i + step) % bases.len();
                if dead[p].load(Ordering::SeqCst) {
                    continue;
                }
                let url = format!("{}{WS}/testcaseresult/create", bases[p]);
                let got = one_write(&client, &url, build.clone(), body.clone(), began).await;
                let failed = got.transport_error.is_some();
                seen.from_ledger |= got.ledger_id.is_some();
                o = Some(got);
                if !failed {
                    break;
                }
                seen.retried = true;
            }
            (
                o.unwrap_or_else(|| Outcome {
                    build,
                    status: 0,
                    confirmed: None,
                    journal_id: None,
                    ledger_id: None,
                    acknowledged_only: false,
                    error: None,
                    transport_error: Some("no live pod".into()),
                    latency: Duration::ZERO,
                    at: began.elapsed().as_secs_f64(),
                }),
                seen,
            )
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

/// The report as a short Markdown summary.
pub fn fleet_summary(r: &FleetReport) -> String {
    let t = &r.tally;
    let mut out = format!(
        "| mode | sidecars | clients | writes | budget | elapsed | writes/s | p50 ms | p99 ms | most open at Rally |\n\
         |---|---|---|---|---|---|---|---|---|---|\n\
         | {} | {} | {} | {} | {} | {:.1} s | {:.0} | {:.0} | {:.0} | **{}** |\n\n",
        if r.fleet { "fleet" } else { "one sidecar" },
        r.pods,
        r.clients,
        r.writes,
        r.budget,
        r.elapsed_s,
        r.writes_per_s,
        r.latency_ms.p50,
        r.latency_ms.p99,
        r.max_open_at_upstream,
    );
    out += &format!(
        "answers: {:?}; confirmed {}; retried on another pod {}; answered from the ledger {}\n\n",
        t.statuses, r.confirmed_answers, r.retried_on_another_pod, r.answered_from_ledger
    );
    if let Some(k) = &r.kill {
        out += &format!(
            "SIGKILL of pod 0 at {:.1} s with {} permits held: they stopped counting after {} (lease {:.0} s); {} of its rows were pending\n\n",
            k.at_s,
            k.permits_held,
            k.permits_back_after_s
                .map(|s| format!("{s:.1} s"))
                .unwrap_or_else(|| "never".into()),
            k.lease_s,
            k.pending_rows
        );
    }
    if let Some(o) = &r.pg_outage {
        out += &format!(
            "PostgreSQL stopped {:.1} s → {:.1} s: {} answers meanwhile, {} not confirmed (e.g. {:?}); /readyz: {:?}; {} rows shipped to the ledger afterwards\n\n",
            o.down_at_s,
            o.up_at_s,
            o.answers_during,
            o.unconfirmed_during,
            o.example_error,
            o.readyz,
            o.shipped_after
        );
    }
    if r.fleet {
        out += &format!(
            "ledger before the replay {:?}; replay rounds {:?}; after {:?}\n\n",
            r.ledger_before_replay,
            r.replay
                .iter()
                .map(|x| (x.per_replayer.clone(), x.replayed_twice))
                .collect::<Vec<_>>(),
            r.ledger_after_replay
        );
    }
    let f = &r.after_replay;
    out += &format!(
        "in the end: stored once {}, **duplicates {}**, **missing {}**, still in the ledger {}\n",
        f.stored_once, f.duplicates, f.missing, f.still_journaled
    );
    out
}
