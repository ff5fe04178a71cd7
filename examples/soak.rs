//! The soak, outage and scale runs (docs/reliability.md, docs/benchmarks.md): a simulator with
//! faults, a sidecar in front of it and many TestCaseResult creates, all in this process; then
//! every write is accounted for and the journal replayed. Bounded by `--writes`; the outage by
//! `--outage`.
//!
//!     cargo run --release --example soak -- --writes 10000 --concurrency 64 --profile realistic
//!     cargo run --release --example soak -- --writes 3000 --outage-after 1000 --outage 30s
//!     cargo run --release --example soak -- --writes 1000 --no-faults --latency 50ms [--direct]
//!
//! Exits 1 when a write was lost or stored twice.

use std::time::Duration;

use clap::Parser;
use rally_sidecar::sim::faults::FaultConfig;
use rally_sidecar_harness::soak::{self, Outage, SoakOptions};

#[derive(Parser)]
#[command(about = "Soak, outage and scale runs against the built-in simulator")]
struct Args {
    /// TestCaseResult creates to send.
    #[arg(long, default_value_t = 10_000)]
    writes: usize,
    /// Writes in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seed of the simulator's faults.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// A named fault profile of the simulator instead of the soak's own ("realistic": the
    /// soak's fault rates with read lag drawn in 0..8 s).
    #[arg(long)]
    profile: Option<String>,
    /// The sidecar's confirm.hold: "readback" or "ambiguous".
    #[arg(long, default_value = "readback")]
    hold: String,
    /// Every Nth write goes to the /slm/webservice/v2.x path (0: none).
    #[arg(long, default_value_t = 3)]
    v2x_every: usize,
    /// No faults at all (for scale and latency runs); --latency still applies.
    #[arg(long)]
    no_faults: bool,
    /// Simulator latency per request, e.g. "50ms" or "1ms..5ms".
    #[arg(long)]
    latency: Option<String>,
    /// Read lag, e.g. "0ms..2s".
    #[arg(long)]
    read_lag: Option<String>,
    /// Stop the simulator once this many writes have started...
    #[arg(long)]
    outage_after: Option<usize>,
    /// ...for this long, then serve it again with everything it stored.
    #[arg(long, default_value = "30s")]
    outage: humantime::Duration,
    /// Send straight to the simulator, without the sidecar (the baseline).
    #[arg(long)]
    direct: bool,
    /// Replay passes over the journal afterwards.
    #[arg(long, default_value_t = 3)]
    replay_passes: usize,
    /// The sidecar's confirm.readback_window.
    #[arg(long, default_value = "10s")]
    readback_window: String,
    /// Print the whole report as JSON too.
    #[arg(long)]
    json: bool,
}

fn main() -> std::process::ExitCode {
    let a = Args::parse();
    let mut opts = SoakOptions::new(a.writes, &std::env::temp_dir());
    opts.concurrency = a.concurrency;
    opts.seed = a.seed;
    if let Some(p) = &a.profile {
        match FaultConfig::profile(p) {
            Ok(f) => opts.faults = f,
            Err(e) => {
                eprintln!("soak: --profile: {e}");
                return std::process::ExitCode::from(64);
            }
        }
    }
    if a.no_faults {
        opts.faults = FaultConfig::default();
    }
    opts.v2x_every = a.v2x_every;
    opts.hold = a.hold.clone();
    if a.latency.is_some() {
        opts.faults.latency = a.latency;
    }
    if a.read_lag.is_some() {
        opts.faults.read_lag = a.read_lag;
    }
    opts.outage = a.outage_after.map(|after| Outage {
        after,
        length: Duration::from(a.outage),
    });
    opts.direct = a.direct;
    opts.replay_passes = a.replay_passes;
    opts.readback_window = a.readback_window;
    opts.progress = true;
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("soak: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(soak::run(opts)) {
        Ok(r) => {
            println!("{}", soak::summary(&r));
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            }
            if r.is_clean() {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
