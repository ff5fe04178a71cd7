//! The operator's commands beside `serve`: `check` (can this credential write results, and
//! where), `sweep` (close results stuck in a custom verdict), `journal` (list and replay the
//! journal of intercepted writes), `summary` (did every result of a build land: a
//! verdict CI can gate on), `demo` (the simulator and the sidecar together) and `cert`
//! (a local CA and server certificate). Each is a library function that returns a report; the
//! binary prints it and turns it into an exit code.

use std::path::PathBuf;

use crate::config::{Config, Overrides};

pub mod cert;
pub mod check;
pub mod demo;
pub mod journal;
pub mod simulate;
pub mod summary;
pub mod sweep;

/// Exit code for a bad configuration or usage (EX_USAGE).
pub const EX_USAGE: u8 = 64;

/// The arguments every command that reads the configuration takes.
#[derive(clap::Args, Clone, Default)]
pub struct ConfigArgs {
    /// TOML configuration file (see config.example.toml).
    #[arg(long, env = "RALLY_SIDECAR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen address [default: 127.0.0.1:8443 with TLS, 127.0.0.1:8080 without].
    #[arg(long)]
    pub listen: Option<String>,
    /// Rally origin [default: https://rally1.rallydev.com].
    #[arg(long)]
    pub upstream: Option<String>,
    /// Admin listen address [default: 127.0.0.1:9464].
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// PEM certificate for the HTTPS listener.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for the HTTPS listener.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
}

impl ConfigArgs {
    /// The file, the environment and these flags, validated; every problem printed at once.
    pub fn load(&self) -> Result<Config, u8> {
        let ov = Overrides {
            listen: self.listen.clone(),
            upstream: self.upstream.clone(),
            admin_listen: self.admin_listen.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
        };
        Config::load(self.config.as_deref(), std::env::vars(), &ov).map_err(|e| {
            eprint!("rally-sidecar: {e}");
            EX_USAGE
        })
    }
}

/// Runs a command's future on a multi-threaded runtime; its exit code.
pub fn block_on(f: impl std::future::Future<Output = u8>) -> u8 {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("rally-sidecar: cannot start the runtime: {e}");
            1
        }
    }
}

/// The human log format at `info`, for the commands that run servers without a config. Hold
/// the guard until the command ends (see [`crate::telemetry::logging::LogGuard`]).
pub fn human_logs() -> crate::telemetry::logging::LogGuard {
    crate::telemetry::logging::init(&crate::config::LogConfig {
        format: crate::config::LogFormat::Human,
        level: "info".into(),
        color: crate::config::LogColor::Auto,
    })
}
