//! The SIGTERM (drain) run: the sidecar as its own process, writes held, a real SIGTERM, then
//! every write accounted for and the process's memory read from /proc.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpListener;

use rally_sidecar::journal::State;
use rally_sidecar::sim::faults::FaultConfig;
use rally_sidecar::sim::{self, SimOptions};

use crate::{account::*, report::*, run::*};

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

pub(crate) fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The sum of one counter's series in a Prometheus text answer.
pub(crate) fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

pub(crate) async fn get_text(
    client: &Client,
    url: String,
    key: Option<&str>,
) -> Option<(u16, String)> {
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
        // Every idle connection comes from 127.0.0.1: lift the per-address cap (1,000 by
        // default) so that the idle-connections run measures 10,000 of them.
        .env("RALLY_SIDECAR_LISTEN_MAX_CONNECTIONS_PER_PEER", "30000")
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
