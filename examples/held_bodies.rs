//! The memory run behind docs/reliability.md ("Memory under held writes"): the sidecar as its
//! own process in front of a slow simulator, `--writes` result creates of `--body` bytes each
//! sent at once, so that they are all held together. The budget (`intercept.max_buffered`)
//! admits what fits and answers the rest 503 with `Retry-After`, forwarding nothing of them;
//! the process's peak RSS is read from /proc when every write has been answered.
//!
//!     cargo build --release
//!     cargo run --release --example held_bodies -- --writes 60 --body 1048000 --latency 2s
//!
//! Exits 1 when a refused write reached the simulator or an answer was neither 200 nor 503.

use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use rally_sidecar::sim::faults::FaultConfig;
use rally_sidecar::sim::{self, SimOptions};
use tokio::io::AsyncBufReadExt;

#[derive(Parser)]
#[command(about = "Many large result writes held at once: the memory budget and peak RSS")]
struct Args {
    /// Writes sent at once.
    #[arg(long, default_value_t = 60)]
    writes: usize,
    /// Bytes of each request body (at most intercept.max_body, 1 MiB by default).
    #[arg(long, default_value_t = 1_048_000)]
    body: usize,
    /// Simulator latency per request: each write is held for several of these.
    #[arg(long, default_value = "2s")]
    latency: String,
    /// intercept.max_buffered for the sidecar (its default when not given).
    #[arg(long)]
    max_buffered: Option<u64>,
    /// The rally-sidecar executable.
    #[arg(long, default_value = "target/release/rally-sidecar")]
    binary: std::path::PathBuf,
}

fn vm_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn run(a: Args) -> Result<bool, Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim = sim::start(
        listener,
        None,
        SimOptions {
            faults: FaultConfig {
                latency: Some(a.latency.clone()),
                ..FaultConfig::default()
            },
            ..SimOptions::default()
        },
    )?;
    let journal = std::env::temp_dir().join(format!("held-bodies-{}.sqlite", std::process::id()));
    let mut cmd = tokio::process::Command::new(&a.binary);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ])
    .args(["--upstream", &sim.base_url])
    .env("RALLY_SIDECAR_LOG_FORMAT", "json")
    .env("RALLY_SIDECAR_LOG_LEVEL", "warn,rally_sidecar::serve=info")
    .env("RALLY_SIDECAR_BUILD", "held-bodies")
    .env("RALLY_SIDECAR_JOURNAL_PATH", &journal)
    .env_remove("RUST_LOG")
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    if let Some(b) = a.max_buffered {
        cmd.env("RALLY_SIDECAR_INTERCEPT_MAX_BUFFERED", b.to_string());
    }
    let mut child = cmd.spawn()?;
    let pid = child.id().ok_or("no pid")?;
    let mut lines = tokio::io::BufReader::new(child.stderr.take().ok_or("no stderr")?).lines();
    let addr = loop {
        let line = lines.next_line().await?.ok_or("the sidecar exited")?;
        if let Some((proxy, _)) = rally_sidecar_harness::soak::ready_addrs(&line) {
            break proxy;
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let idle_kib = vm_kib(pid, "VmRSS:");

    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http();
    let url = format!("http://{addr}/slm/webservice/v2.0/testcaseresult/create");
    let notes = "n".repeat(a.body.saturating_sub(100));
    let started = Instant::now();
    let sends = (0..a.writes).map(|i| {
        let (client, url) = (client.clone(), url.clone());
        let body = format!(
            r#"{{"TestCaseResult": {{"TestCase": "/testcase/1001", "Verdict": "Pass", "Notes": "{i} {notes}"}}}}"#
        );
        async move {
            let req = http::Request::post(url)
                .header("zsessionid", "_sim_alice_key")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))?;
            let resp = client.request(req).await?;
            let status = resp.status().as_u16();
            let retry_after = resp.headers().contains_key("retry-after");
            let _ = resp.into_body().collect().await;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, retry_after))
        }
    });
    let answers = futures_util::future::join_all(sends).await;
    let elapsed = started.elapsed();
    let peak_kib = vm_kib(pid, "VmHWM:");
    let count = |s: u16| {
        answers
            .iter()
            .filter(|a| matches!(a, Ok((x, _)) if *x == s))
            .count()
    };
    let (held, refused) = (count(200), count(503));
    let refused_with_retry = answers
        .iter()
        .filter(|a| matches!(a, Ok((503, true))))
        .count();
    let received = sim.sim.stats().writes_received;
    println!(
        "{} writes of {} bytes against a simulator answering in {}: {held} held and answered 200, \
         {refused} refused 503 ({refused_with_retry} with Retry-After), {} other; the simulator \
         received {received} writes; RSS idle {} MiB, peak {} MiB; {:.1} s",
        a.writes,
        a.body,
        a.latency,
        a.writes - held - refused,
        idle_kib / 1024,
        peak_kib / 1024,
        elapsed.as_secs_f64()
    );
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(40), child.wait()).await;
    sim.shutdown.cancel();
    let _ = std::fs::remove_file(&journal);
    Ok(held + refused == a.writes && received as usize == held && refused_with_retry == refused)
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("held_bodies: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("held_bodies: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
