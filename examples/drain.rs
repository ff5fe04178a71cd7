//! The SIGTERM run and the memory figures (docs/reliability.md, docs/benchmarks.md): the
//! sidecar as its own process in front of a slow simulator, optionally 10,000 idle connections
//! first, then `--writes` writes held at once, then SIGTERM. Each write must be answered and
//! confirmed or journaled before the process exits; the journal is replayed afterwards.
//!
//!     cargo build --release && cargo run --release --example drain -- --writes 500
//!     cargo run --release --example drain -- --writes 10000 --latency 30s --idle-connections 10000
//!
//! Exits 1 when a write was lost, stored twice or left pending.

use clap::Parser;
use rally_sidecar_harness::soak::{self, DrainOptions};

#[derive(Parser)]
#[command(about = "SIGTERM with many writes held, and memory figures")]
struct Args {
    /// Writes held at once when SIGTERM is sent.
    #[arg(long, default_value_t = 500)]
    writes: usize,
    /// Simulator latency per request (long enough that writes are still held).
    #[arg(long, default_value = "5s")]
    latency: String,
    /// The sidecar's shutdown_grace.
    #[arg(long, default_value = "10s")]
    grace: String,
    /// Idle connections opened before the writes.
    #[arg(long, default_value_t = 0)]
    idle_connections: usize,
    /// The rally-sidecar executable.
    #[arg(long, default_value = "target/release/rally-sidecar")]
    binary: std::path::PathBuf,
    /// Replay passes afterwards.
    #[arg(long, default_value_t = 3)]
    replay_passes: usize,
    #[arg(long)]
    json: bool,
}

fn main() -> std::process::ExitCode {
    let a = Args::parse();
    let opts = DrainOptions {
        binary: a.binary,
        writes: a.writes,
        latency: a.latency,
        grace: a.grace,
        idle_connections: a.idle_connections,
        dir: std::env::temp_dir(),
        replay_passes: a.replay_passes,
        progress: true,
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drain: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(soak::drain_run(opts)) {
        Ok(r) => {
            println!("{}", soak::drain_summary(&r));
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
            eprintln!("drain: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
