//! `rally-sidecar simulate`: the Rally WSAPI simulator on its own, with its fixtures and fault
//! knobs from the command line (docs/simulator.md).

use std::path::PathBuf;

use super::{EX_USAGE, block_on};

/// The simulator's command line.
#[derive(clap::Args)]
pub struct SimulateArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:8900")]
    pub listen: std::net::SocketAddr,
    /// PEM certificate (serve HTTPS; pyral needs it).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// JSON fixtures replacing the defaults (see docs/fixtures.example.json).
    #[arg(long)]
    pub fixtures: Option<PathBuf>,
    /// Seed for every fault decision.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Latency added to every request: "50ms" or "10ms..200ms".
    #[arg(long)]
    pub latency: Option<String>,
    /// Probability a TestCaseResult create is acknowledged but never stored.
    #[arg(long, default_value_t = 0.0)]
    pub drop_writes: f64,
    /// Probability of HTTP 200 + "Concurrency conflict" (nothing stored).
    #[arg(long, default_value_t = 0.0)]
    pub conflict_rate: f64,
    /// Probability of HTTP 500/503 (nothing stored).
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Probability of storing, then answering 502/524.
    #[arg(long, default_value_t = 0.0)]
    pub gateway_timeout_rate: f64,
    /// Probability of dropping the connection, before or after storing.
    #[arg(long, default_value_t = 0.0)]
    pub reset_rate: f64,
    /// New results become readable only after this long: "2s", or a range drawn per write, "0s..2s".
    #[arg(long)]
    pub read_lag: Option<String>,
    /// Probability of HTTP 200 + "Not authorized to perform action: Invalid key" for a valid key.
    #[arg(long, default_value_t = 0.0)]
    pub invalid_key_rate: f64,
    /// A named fault profile the flags above refine: "realistic" (the soak's fault rates and
    /// reads lagging writes by 0..8 s) or "none".
    #[arg(long)]
    pub profile: Option<String>,
    /// Concurrent requests per user before queueing.
    #[arg(long, default_value_t = 12)]
    pub max_concurrency: usize,
    /// Do not serve the /__sim/ control API.
    #[arg(long)]
    pub no_control_api: bool,
    /// Print the default fixtures as JSON (a starting point for --fixtures) and exit.
    #[arg(long)]
    pub print_fixtures: bool,
}

/// `rally-sidecar simulate`.
pub fn cli(args: SimulateArgs) -> u8 {
    use crate::sim::{self, SimOptions, faults::FaultConfig, model::Fixtures};
    if args.print_fixtures {
        return match serde_json::to_string_pretty(&Fixtures::default()) {
            Ok(s) => {
                println!("{s}");
                0
            }
            Err(e) => {
                eprintln!("rally-sidecar simulate: {e}");
                1
            }
        };
    }
    let _logs = super::human_logs();
    let fixtures = match &args.fixtures {
        Some(p) => match Fixtures::from_file(p) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("rally-sidecar simulate: --fixtures: {e}");
                return EX_USAGE;
            }
        },
        None => Fixtures::default(),
    };
    let flags = FaultConfig {
        latency: args.latency.clone(),
        drop_writes: args.drop_writes,
        conflict_rate: args.conflict_rate,
        error_rate: args.error_rate,
        gateway_timeout_rate: args.gateway_timeout_rate,
        reset_rate: args.reset_rate,
        invalid_key_rate: args.invalid_key_rate,
        read_lag: args.read_lag.clone(),
        ..FaultConfig::default()
    };
    let faults = match FaultConfig::profile(args.profile.as_deref().unwrap_or("none")) {
        Ok(base) => base.overridden_by(&flags),
        Err(e) => {
            eprintln!("rally-sidecar simulate: --profile: {e}");
            return EX_USAGE;
        }
    };
    if let Err(e) = faults.validate() {
        eprintln!("rally-sidecar simulate: {e}");
        return EX_USAGE;
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => match crate::tls::server_config(c, k, true) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("rally-sidecar simulate: {e}");
                return EX_USAGE;
            }
        },
        _ => None,
    };
    let opts = SimOptions {
        fixtures,
        seed: args.seed,
        faults,
        max_concurrency_per_user: args.max_concurrency,
        control_api: !args.no_control_api,
        ..SimOptions::default()
    };
    block_on(async move {
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "rally-sidecar simulate: cannot listen on {}: {e}",
                    args.listen
                );
                return 1;
            }
        };
        let handle = match sim::start(listener, tls, opts) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("rally-sidecar simulate: {e}");
                return 1;
            }
        };
        println!(
            "Rally WSAPI simulator at {base}/slm/webservice/v2.0
  API keys: alice _sim_alice_key (Editor on Sim Project), bob _sim_bob_key (Viewer),
            dave _sim_dave_readonly (read-only key)
  basic:    carol@example.com / carol-pass (Editor)
  control:  {base}/__sim/stats  /__sim/objects/<type>  POST /__sim/faults  POST /__sim/reset",
            base = handle.base_url
        );
        let token = handle.shutdown.clone();
        crate::cancel_on_signals(token);
        let _ = handle.task.await;
        0
    })
}
