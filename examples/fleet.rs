//! The fleet run (issue 15, docs/benchmarks.md "Fleet mode"): `--pods` sidecar processes in
//! fleet mode × `--concurrency` clients each, one API key, the simulator capped at
//! `--sim-max-concurrency` per user with `--latency` and drops, conflicts and 5xx; optionally
//! one pod killed with SIGKILL and PostgreSQL stopped mid-run; then two central replayers at
//! once. Then, side by side and with neither failure, the fleet and one sidecar alone with the
//! same budget, writes and clients; and the permit latency with `--pods` pods. PostgreSQL is
//! started in a temporary directory (harness/src/pg.rs).
//!
//!     cargo build --release && cargo run --release --example fleet -- --writes 4000 \
//!         --kill-after 1000 --pg-outage-after 2500 --pg-outage 10s
//!
//! Exits 1 when the budget was passed, a write was lost or stored twice, or a row was
//! replayed twice at once.

use std::time::Duration;

use clap::Parser;
use rally_sidecar_harness::fleet::{self, FleetOptions, PgOutage, bench};

#[derive(Parser)]
#[command(about = "Many sidecars, one Rally user: the fleet's budget and ledger under load")]
struct Args {
    #[arg(long, default_value_t = 4000)]
    writes: usize,
    #[arg(long, default_value_t = 4)]
    pods: usize,
    /// Clients per pod.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    #[arg(long, default_value_t = 10)]
    budget: u32,
    #[arg(long, default_value_t = 12)]
    sim_max_concurrency: usize,
    #[arg(long, default_value = "50ms")]
    latency: String,
    #[arg(long, default_value = "10s")]
    lease: String,
    /// Kill pod 0 with SIGKILL once this many writes have been started.
    #[arg(long)]
    kill_after: Option<usize>,
    /// Stop PostgreSQL once this many writes have been started ...
    #[arg(long)]
    pg_outage_after: Option<usize>,
    /// ... for this long.
    #[arg(long, default_value = "10s")]
    pg_outage: humantime::Duration,
    /// Writes of the side-by-side runs [default: --writes].
    #[arg(long)]
    compare_writes: Option<usize>,
    /// Skip the side-by-side runs (the fleet without failures, and one sidecar alone).
    #[arg(long)]
    no_compare: bool,
    /// The rally-sidecar executable.
    #[arg(long, default_value = "target/release/rally-sidecar")]
    binary: std::path::PathBuf,
    #[arg(long)]
    json: bool,
}

async fn main_async(a: Args) -> Result<bool, String> {
    let mut o = FleetOptions::new(a.binary.clone(), a.writes, std::env::temp_dir());
    o.pods = a.pods;
    o.concurrency = a.concurrency;
    o.budget = a.budget;
    o.sim_max_concurrency = a.sim_max_concurrency;
    o.latency = a.latency.clone();
    o.lease = a.lease.clone();
    o.kill_after = a.kill_after;
    o.pg_outage = a.pg_outage_after.map(|after| PgOutage {
        after,
        length: *a.pg_outage,
    });
    o.progress = true;
    let r = fleet::fleet_run(o.clone()).await?;
    println!("{}", fleet::fleet_summary(&r));
    let mut clean = r.is_clean();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
    }
    if !a.no_compare {
        // Side by side, with neither a kill nor an outage: the fleet, then one sidecar with the
        // same budget, the same writes and the same number of clients.
        let mut calm = o.clone();
        calm.writes = a.compare_writes.unwrap_or(a.writes);
        calm.kill_after = None;
        calm.pg_outage = None;
        let f = fleet::fleet_run(calm.clone()).await?;
        println!("{}", fleet::fleet_summary(&f));
        calm.fleet = false;
        let s = fleet::fleet_run(calm).await?;
        println!("{}", fleet::fleet_summary(&s));
        clean &= f.is_clean() && s.after_replay.duplicates == 0 && s.after_replay.missing == 0;
        println!(
            "side by side ({} writes, {} clients, budget {}): {} pods {:.1} s ({:.0} writes/s), one sidecar {:.1} s ({:.0} writes/s)\n",
            f.writes,
            f.clients,
            a.budget,
            f.pods,
            f.elapsed_s,
            f.writes_per_s,
            s.elapsed_s,
            s.writes_per_s
        );
    }
    let pg = tokio::task::spawn_blocking(rally_sidecar_harness::pg::PgServer::start)
        .await
        .map_err(|e| e.to_string())?;
    let url = pg.fresh_db().await;
    let hold = Duration::from_millis(50);
    let b = bench::permit_latency(&url, a.pods, a.concurrency, a.budget, hold, 10).await?;
    println!(
        "permit acquire with {} pods × {} tasks, budget {}, held {} ms: alone p50 {:.2} ms p99 {:.2} ms; contended p50 {:.0} ms p99 {:.0} ms; {:.0} grants/s of {:.0} possible",
        b.pods,
        b.tasks_per_pod,
        b.budget,
        b.hold_ms,
        b.alone_ms.p50,
        b.alone_ms.p99,
        b.contended_ms.p50,
        b.contended_ms.p99,
        b.grants_per_s,
        b.ideal_per_s
    );
    if a.json {
        println!("{}", serde_json::to_string_pretty(&b).unwrap_or_default());
    }
    Ok(clean)
}

fn main() -> std::process::ExitCode {
    let a = Args::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleet: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(main_async(a)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("fleet: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
