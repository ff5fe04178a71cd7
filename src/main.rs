//! The `rally-sidecar` binary: parses argv, environment and config into a subcommand and calls
//! into the library. Exit codes: 0 ok, 1 runtime failure, 64 bad configuration or usage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rally_sidecar::config::{Config, Overrides};

const EX_USAGE: u8 = 64;

#[derive(Parser)]
#[command(
    name = "rally-sidecar",
    version,
    about = "A proxy that makes every Rally TestCaseResult land complete, confirmed, exactly once"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Args, Clone, Default)]
struct ServeArgs {
    /// TOML configuration file (see config.example.toml).
    #[arg(long, env = "RALLY_SIDECAR_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address [default: 127.0.0.1:8443 with TLS, 127.0.0.1:8080 without].
    #[arg(long)]
    listen: Option<String>,
    /// Rally origin [default: https://rally1.rallydev.com].
    #[arg(long)]
    upstream: Option<String>,
    /// Admin listen address [default: 127.0.0.1:9464].
    #[arg(long)]
    admin_listen: Option<String>,
    /// PEM certificate for the HTTPS listener.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key for the HTTPS listener.
    #[arg(long)]
    tls_key: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar in front of Rally.
    Serve(ServeArgs),
    /// Run the Rally WSAPI simulator (a local stand-in for Rally).
    Simulate(SimulateArgs),
    /// Start the simulator and the sidecar together, over TLS, and print how to use them.
    Demo {
        /// Sidecar listen address.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: std::net::SocketAddr,
        /// Admin listen address.
        #[arg(long, default_value = "127.0.0.1:9464")]
        admin_listen: std::net::SocketAddr,
        /// Directory for the demo CA and certificates [default: <tmp>/rally-sidecar-demo].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Can this credential (RALLY_API_KEY, or RALLY_USERNAME/RALLY_PASSWORD) write TestCaseResults?
    /// Without --project (or scope.projects) every project the user has a permission in is
    /// checked. Exit codes: 0 yes (every named project; or at least one discovered), 1 no,
    /// 2 unreachable, 3 credential refused, 4 read-only key, 5 workspace not found, 6 no project
    /// to check, 64 usage.
    Check {
        #[command(flatten)]
        serve: ServeArgs,
        /// Workspace (name, ref or ObjectID) [default: scope.workspace, else the user's default].
        #[arg(long)]
        workspace: Option<String>,
        /// Project (name, ref or ObjectID); repeat for several [default: scope.projects, else
        /// every project the user has a permission in].
        #[arg(long = "project")]
        projects: Vec<String>,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Set stuck results (Verdict in sweep.stuck_verdicts, older than sweep.older_than) to
    /// sweep.set_verdict, with a Notes line. Dry-run unless --apply or sweep.apply = true.
    /// Uses RALLY_API_KEY.
    Sweep {
        #[command(flatten)]
        serve: ServeArgs,
        /// Run once and exit (the only mode of this command; for a Kubernetes CronJob).
        #[arg(long)]
        once: bool,
        /// Change what the plan says.
        #[arg(long, conflicts_with = "dry_run")]
        apply: bool,
        /// Only print the plan (the default unless sweep.apply = true).
        #[arg(long)]
        dry_run: bool,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Did every result of a build land? Reads the journal; changes nothing.
    /// Exit codes: 0 all confirmed, 1 journal unreadable, 2 refused or rejected, 3 unconfirmed,
    /// 4 still pending, 5 nothing journaled for the build, 64 usage.
    Summary {
        #[command(flatten)]
        serve: ServeArgs,
        /// The build [default: context.build, else the first CI variable of context.build_env].
        #[arg(long)]
        build: Option<String>,
        /// Wait up to this long ("2m") for pending writes to settle first.
        #[arg(long, value_parser = humantime::parse_duration)]
        wait: Option<std::time::Duration>,
        /// text, json, markdown (a CI job summary) or junit (JUnit XML).
        #[arg(long, value_enum, default_value_t)]
        format: rally_sidecar::commands::summary::Format,
    },
    /// Inspect and replay the journal of intercepted writes.
    Journal {
        #[command(subcommand)]
        action: JournalCommand,
    },
    /// Create a local CA and a server certificate (ca.pem, cert.pem, key.pem).
    Cert {
        /// Directory to write into; an existing CA there is reused.
        #[arg(long)]
        out: PathBuf,
        /// Extra DNS names or IP addresses for the server certificate.
        #[arg(long = "san")]
        sans: Vec<String>,
    },
}

#[derive(Subcommand)]
enum JournalCommand {
    /// List writes, newest first.
    List {
        #[command(flatten)]
        serve: ServeArgs,
        /// Only writes in this state: pending, confirmed, rejected, unconfirmed.
        #[arg(long)]
        state: Option<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-send unconfirmed writes with RALLY_API_KEY, each after a fingerprint check.
    Replay {
        #[command(flatten)]
        serve: ServeArgs,
        /// Only these journal ids (default: every unconfirmed write).
        #[arg(long = "id")]
        ids: Vec<i64>,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:8900")]
    listen: std::net::SocketAddr,
    /// PEM certificate (serve HTTPS; pyral needs it).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// JSON fixtures replacing the defaults (see docs/fixtures.example.json).
    #[arg(long)]
    fixtures: Option<PathBuf>,
    /// Seed for every fault decision.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Latency added to every request: "50ms" or "10ms..200ms".
    #[arg(long)]
    latency: Option<String>,
    /// Probability a TestCaseResult create is acknowledged but never stored.
    #[arg(long, default_value_t = 0.0)]
    drop_writes: f64,
    /// Probability of HTTP 200 + "Concurrency conflict" (nothing stored).
    #[arg(long, default_value_t = 0.0)]
    conflict_rate: f64,
    /// Probability of HTTP 500/503 (nothing stored).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Probability of storing, then answering 502/524.
    #[arg(long, default_value_t = 0.0)]
    gateway_timeout_rate: f64,
    /// Probability of dropping the connection, before or after storing.
    #[arg(long, default_value_t = 0.0)]
    reset_rate: f64,
    /// New results become readable only after this long: "2s", or a range drawn per write, "0s..2s".
    #[arg(long)]
    read_lag: Option<String>,
    /// Probability of HTTP 200 + "Not authorized to perform action: Invalid key" for a valid key.
    #[arg(long, default_value_t = 0.0)]
    invalid_key_rate: f64,
    /// A named fault profile the flags above refine: "realistic" (the soak's fault rates and
    /// reads lagging writes by 0..8 s) or "none".
    #[arg(long)]
    profile: Option<String>,
    /// Concurrent requests per user before queueing.
    #[arg(long, default_value_t = 12)]
    max_concurrency: usize,
    /// Do not serve the /__sim/ control API.
    #[arg(long)]
    no_control_api: bool,
    /// Print the default fixtures as JSON (a starting point for --fixtures) and exit.
    #[arg(long)]
    print_fixtures: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Serve(args)) => serve(args),
        None => {
            // No subcommand: serve when a Rally is configured, else the demo on the simulator.
            let configured = std::env::vars()
                .any(|(k, _)| k == "RALLY_SIDECAR_CONFIG" || k == "RALLY_SIDECAR_UPSTREAM_URL");
            if configured {
                serve(ServeArgs {
                    config: std::env::var_os("RALLY_SIDECAR_CONFIG").map(PathBuf::from),
                    ..ServeArgs::default()
                })
            } else {
                demo(None, None, None)
            }
        }
        Some(Command::Simulate(args)) => simulate(args),
        Some(Command::Journal { action }) => journal(action),
        Some(Command::Summary {
            serve,
            build,
            wait,
            format,
        }) => match load_config(&serve) {
            Ok(cfg) => ExitCode::from(rally_sidecar::commands::summary::cli(
                &cfg, build, wait, format,
            )),
            Err(code) => code,
        },
        Some(Command::Sweep {
            serve,
            once: _,
            apply,
            dry_run,
            json,
        }) => sweep(serve, apply, dry_run, json),
        Some(Command::Check {
            serve,
            workspace,
            projects,
            json,
        }) => check(serve, workspace, projects, json),
        Some(Command::Demo {
            listen,
            admin_listen,
            dir,
        }) => demo(Some(listen), Some(admin_listen), dir),
        Some(Command::Cert { out, sans }) => {
            match rally_sidecar::commands::cert::generate(&out, &sans) {
                Ok(paths) => {
                    println!(
                        "{} {}\nserver certificate: {}\nprivate key:        {}\ntrust it with:      REQUESTS_CA_BUNDLE={} (pyral), NODE_EXTRA_CA_CERTS={} (Node)",
                        if paths.reused_ca {
                            "reused CA:"
                        } else {
                            "created CA:"
                        },
                        paths.ca_cert.display(),
                        paths.cert.display(),
                        paths.key.display(),
                        paths.ca_cert.display(),
                        paths.ca_cert.display(),
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("rally-sidecar cert: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn load_config(args: &ServeArgs) -> Result<Config, ExitCode> {
    let ov = Overrides {
        listen: args.listen.clone(),
        upstream: args.upstream.clone(),
        admin_listen: args.admin_listen.clone(),
        tls_cert: args.tls_cert.clone(),
        tls_key: args.tls_key.clone(),
    };
    Config::load(args.config.as_deref(), std::env::vars(), &ov).map_err(|e| {
        eprint!("rally-sidecar: {e}");
        ExitCode::from(EX_USAGE)
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("rally-sidecar: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}

fn serve(args: ServeArgs) -> ExitCode {
    let cfg = match load_config(&args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let _log = rally_sidecar::telemetry::logging::init(&cfg.log);
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let listeners = match rally_sidecar::Listeners::bind(&cfg).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("rally-sidecar: {e}");
                return ExitCode::FAILURE;
            }
        };
        let token = tokio_util::sync::CancellationToken::new();
        rally_sidecar::cancel_on_signals(token.clone());
        match rally_sidecar::run(cfg, listeners, token).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rally-sidecar: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn simulate(args: SimulateArgs) -> ExitCode {
    use rally_sidecar::sim::{self, SimOptions, faults::FaultConfig, model::Fixtures};
    if args.print_fixtures {
        return match serde_json::to_string_pretty(&Fixtures::default()) {
            Ok(s) => {
                println!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("rally-sidecar simulate: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let _log = rally_sidecar::telemetry::logging::init(&rally_sidecar::config::LogConfig {
        format: rally_sidecar::config::LogFormat::Human,
        level: "info".into(),
        color: rally_sidecar::config::LogColor::Auto,
    });
    let fixtures = match &args.fixtures {
        Some(p) => match Fixtures::from_file(p) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("rally-sidecar simulate: --fixtures: {e}");
                return ExitCode::from(EX_USAGE);
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
            return ExitCode::from(EX_USAGE);
        }
    };
    if let Err(e) = faults.validate() {
        eprintln!("rally-sidecar simulate: {e}");
        return ExitCode::from(EX_USAGE);
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => match rally_sidecar::tls::server_config(c, k, true) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("rally-sidecar simulate: {e}");
                return ExitCode::from(EX_USAGE);
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
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "rally-sidecar simulate: cannot listen on {}: {e}",
                    args.listen
                );
                return ExitCode::FAILURE;
            }
        };
        let handle = match sim::start(listener, tls, opts) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("rally-sidecar simulate: {e}");
                return ExitCode::FAILURE;
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
        rally_sidecar::cancel_on_signals(token);
        let _ = handle.task.await;
        ExitCode::SUCCESS
    })
}

fn demo(
    listen: Option<std::net::SocketAddr>,
    admin: Option<std::net::SocketAddr>,
    dir: Option<PathBuf>,
) -> ExitCode {
    let mut opts = rally_sidecar::commands::demo::DemoOptions::default();
    if let Some(l) = listen {
        opts.listen = l;
    }
    if let Some(a) = admin {
        opts.admin_listen = a;
    }
    if let Some(d) = dir {
        opts.dir = d;
    }
    let _log = rally_sidecar::telemetry::logging::init(&rally_sidecar::config::LogConfig {
        format: rally_sidecar::config::LogFormat::Human,
        level: "info".into(),
        color: rally_sidecar::config::LogColor::Auto,
    });
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let token = tokio_util::sync::CancellationToken::new();
        rally_sidecar::cancel_on_signals(token.clone());
        match rally_sidecar::commands::demo::run(opts, token).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rally-sidecar demo: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn journal(action: JournalCommand) -> ExitCode {
    use rally_sidecar::commands::journal as cmd;
    use rally_sidecar::journal::{Journal, State};
    let (serve, state, limit, ids, json, replay) = match action {
        JournalCommand::List {
            serve,
            state,
            limit,
            json,
        } => (serve, state, limit, vec![], json, false),
        JournalCommand::Replay { serve, ids, json } => (serve, None, 0, ids, json, true),
    };
    let cfg = match load_config(&serve) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let state = match state.as_deref().map(|s| (s, State::parse(s))) {
        None => None,
        Some((_, Some(s))) => Some(s),
        Some((s, None)) => {
            eprintln!(
                "rally-sidecar journal: --state {s:?} is not one of pending, confirmed, rejected, unconfirmed, refused"
            );
            return ExitCode::from(EX_USAGE);
        }
    };
    let operator = rally_sidecar::rally::credential::Operator::from_env();
    let api_key = operator
        .as_ref()
        .and_then(|o| o.api_key())
        .map(str::to_string);
    if replay && api_key.is_none() {
        eprintln!(
            "rally-sidecar journal replay: set RALLY_API_KEY to a full-access API key of the user the results belong to"
        );
        return ExitCode::from(EX_USAGE);
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        // Opening to inspect or replay never changes a row by itself.
        let j = match Journal::open(&cfg.journal.path) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("rally-sidecar journal: {e}");
                return ExitCode::FAILURE;
            }
        };
        if !replay {
            let rows = match j.list(state, ids, limit).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("rally-sidecar journal: {e}");
                    return ExitCode::FAILURE;
                }
            };
            for r in &rows {
                if json {
                    println!("{}", serde_json::to_string(r).unwrap_or_default());
                } else {
                    println!("{}", cmd::render_row(r));
                }
            }
            if !json {
                eprintln!("{} row(s) from {}", rows.len(), cfg.journal.path.display());
            }
            return ExitCode::SUCCESS;
        }
        let key = api_key.unwrap_or_default();
        match cmd::replay_journal(std::sync::Arc::new(cfg), &j, ids, &key).await {
            Ok(report) => {
                let (lines, summary) = cmd::render_replay(&report);
                if json {
                    for d in &report.rows {
                        println!("{}", serde_json::to_string(d).unwrap_or_default());
                    }
                } else {
                    print!("{lines}");
                }
                eprintln!("{summary}");
                let done = report
                    .rows
                    .iter()
                    .all(|d| d.skipped.is_none() && d.state == State::Confirmed);
                if done {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(2)
                }
            }
            Err(e) => {
                eprintln!("rally-sidecar journal replay: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn check(
    serve: ServeArgs,
    workspace: Option<String>,
    projects: Vec<String>,
    json: bool,
) -> ExitCode {
    let cfg = match load_config(&serve) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(cred) = rally_sidecar::commands::check::Credential::from_env() else {
        eprintln!("rally-sidecar check: set RALLY_API_KEY, or RALLY_USERNAME and RALLY_PASSWORD");
        return ExitCode::from(EX_USAGE);
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let report = rt.block_on(rally_sidecar::commands::check::run(
        &cfg, cred, workspace, projects,
    ));
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", rally_sidecar::commands::check::render(&report));
    }
    ExitCode::from(report.exit_code)
}

fn sweep(serve: ServeArgs, apply: bool, dry_run: bool, json: bool) -> ExitCode {
    let cfg = match load_config(&serve) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(key) = std::env::var("RALLY_API_KEY")
        .ok()
        .filter(|k| !k.is_empty())
    else {
        eprintln!(
            "rally-sidecar sweep: set RALLY_API_KEY to a full-access API key that may edit the results"
        );
        return ExitCode::from(EX_USAGE);
    };
    let apply = (apply || cfg.sweep.apply) && !dry_run;
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let journal = rally_sidecar::journal::Journal::open(&cfg.journal.path).ok();
        let cfg = std::sync::Arc::new(cfg);
        match rally_sidecar::commands::sweep::run(
            cfg,
            journal.as_ref(),
            &key,
            apply,
            time::OffsetDateTime::now_utc(),
        )
        .await
        {
            Ok(report) => {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&report).unwrap_or_default()
                    );
                } else {
                    print!("{}", rally_sidecar::commands::sweep::render(&report));
                }
                if report
                    .outcomes
                    .iter()
                    .any(|(_, o)| matches!(o, rally_sidecar::commands::sweep::Outcome::Failed(_)))
                {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => {
                eprintln!("rally-sidecar sweep: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
