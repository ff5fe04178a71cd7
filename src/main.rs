//! The `rally-sidecar` binary: turns argv into a subcommand and its arguments, and calls into
//! the library, where each command lives (`rally_sidecar::commands`, `rally_sidecar::serve`).
//! Exit codes: 0 ok, 1 runtime failure, 64 bad configuration or usage; some commands have more
//! (`--help` lists them).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rally_sidecar::commands::journal::JournalCommand;
use rally_sidecar::commands::simulate::SimulateArgs;
use rally_sidecar::commands::{self, ConfigArgs};

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

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar in front of Rally.
    Serve(ConfigArgs),
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
        serve: ConfigArgs,
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
        serve: ConfigArgs,
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
        serve: ConfigArgs,
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
        /// Days the server certificate is valid (at most 825, which Apple platforms require).
        #[arg(long, default_value_t = rally_sidecar::commands::cert::MAX_SERVER_DAYS)]
        days: u32,
    },
}

fn main() -> ExitCode {
    let code = match Cli::parse().command {
        Some(Command::Serve(args)) => rally_sidecar::serve::cli(args),
        None => {
            // No subcommand: serve when a Rally is configured, else the demo on the simulator.
            let configured = std::env::vars()
                .any(|(k, _)| k == "RALLY_SIDECAR_CONFIG" || k == "RALLY_SIDECAR_UPSTREAM_URL");
            if configured {
                rally_sidecar::serve::cli(ConfigArgs {
                    config: std::env::var_os("RALLY_SIDECAR_CONFIG").map(PathBuf::from),
                    ..ConfigArgs::default()
                })
            } else {
                commands::demo::cli(None, None, None)
            }
        }
        Some(Command::Simulate(args)) => commands::simulate::cli(args),
        Some(Command::Journal { action }) => commands::journal::cli(action),
        Some(Command::Summary {
            serve,
            build,
            wait,
            format,
        }) => match serve.load() {
            Ok(cfg) => commands::summary::cli(&cfg, build, wait, format),
            Err(code) => code,
        },
        Some(Command::Sweep {
            serve,
            once: _,
            apply,
            dry_run,
            json,
        }) => commands::sweep::cli(serve, apply, dry_run, json),
        Some(Command::Check {
            serve,
            workspace,
            projects,
            json,
        }) => commands::check::cli(serve, workspace, projects, json),
        Some(Command::Demo {
            listen,
            admin_listen,
            dir,
        }) => commands::demo::cli(Some(listen), Some(admin_listen), dir),
        Some(Command::Cert { out, sans, days }) => commands::cert::cli(&out, &sans, days),
    };
    ExitCode::from(code)
}
