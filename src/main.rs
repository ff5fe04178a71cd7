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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Serve(args)) => serve(args),
        None => serve(ServeArgs::default()),
        Some(Command::Cert { out, sans }) => match rally_sidecar::cert::generate(&out, &sans) {
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
        },
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
    rally_sidecar::logging::init(&cfg.log);
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
