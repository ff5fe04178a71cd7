//! Configuration: a TOML file read into a raw shape, overlaid with `RALLY_SIDECAR_<SECTION>_<KEY>`
//! environment variables and command-line flags, then validated into a typed [`Config`].
//!
//! Validation never stops at the first problem: every error is collected, each naming its key,
//! so an operator fixes a bad file in one round. `main` exits with code 64 (EX_USAGE) on any.
//! `config.example.toml` documents every key; a test parses it and checks that the defaults it
//! states are the defaults this module applies.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default upstream: Rally's US SaaS host.
pub const DEFAULT_UPSTREAM: &str = "https://rally1.rallydev.com";
/// Default listener when TLS is configured.
pub const DEFAULT_LISTEN_TLS: &str = "127.0.0.1:8443";
/// Default listener without TLS.
pub const DEFAULT_LISTEN_PLAIN: &str = "127.0.0.1:8080";
/// Default admin listener (loopback only).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";
/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "RALLY_SIDECAR_";

/// One configuration problem, naming the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

mod admin;
pub mod context;
mod env;
pub mod fleet;
mod listen;
mod raw;
mod validate;

pub use env::{apply_env, known_keys};
pub use raw::*;
pub use validate::parse_origin;

// ---------------------------------------------------------------------------------------------
// Validated shape.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// Outbound proxy policy for the upstream connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxySetting {
    /// Use HTTPS_PROXY / HTTP_PROXY / ALL_PROXY / NO_PROXY from the environment.
    FromEnv,
    /// Never use a proxy, whatever the environment says.
    Disabled,
    /// Use this proxy URL (it may carry `user:password@`).
    Explicit(http::Uri),
}

#[derive(Debug, Clone)]
pub struct ListenConfig {
    pub addr: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub header_read_timeout: Duration,
    pub http2: bool,
    pub max_connections: usize,
    /// Connections one client IP address may hold at once.
    pub max_connections_per_peer: usize,
    /// The whole body of an intercepted (buffered) write must arrive within this; a streamed
    /// body may not pause longer than this between two chunks.
    pub body_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2 with GOAWAY).
    pub idle_timeout: Duration,
    pub http2_keep_alive_interval: Duration,
    pub http2_keep_alive_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Scheme + authority of Rally, e.g. `https://rally1.rallydev.com`.
    pub origin: http::Uri,
    pub ca_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
    pub proxy: ProxySetting,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub forwarded_headers: bool,
    pub max_concurrency_per_credential: usize,
    pub max_queue_per_credential: usize,
    pub queue_timeout: Duration,
}

impl UpstreamConfig {
    /// `https://host[:port]` without a trailing slash, as it appears in Rally's `_ref`s.
    pub fn origin_string(&self) -> String {
        let scheme = self.origin.scheme_str().unwrap_or("https");
        let authority = self.origin.authority().map(|a| a.as_str()).unwrap_or("");
        format!("{scheme}://{authority}")
    }
}

pub use admin::{AdminConfig, AdminToken};

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    /// Whether the human format uses ANSI colours.
    pub color: LogColor,
}

/// `log.color`: colours in the human format only on a terminal (`auto`), or always, or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogColor {
    #[default]
    Auto,
    Always,
    Never,
}

/// Whether interception acts or only reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Fill, block, and forward the enriched write.
    Enforce,
    /// Log and count what would be filled or blocked; forward the original unchanged.
    Shadow,
}

#[derive(Debug, Clone)]
pub struct InterceptConfig {
    pub mode: Mode,
    pub max_body: usize,
    pub enrich_updates: bool,
    /// Status of the sidecar's own refusals (blocked writes, missing build); Rally uses 200.
    pub block_status: http::StatusCode,
    /// Bytes of intercepted bodies held in memory at once, across all requests.
    pub max_buffered: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextConfig {
    pub build: Option<String>,
    /// A user ref (`/user/123`) used as Tester instead of the credential's owner.
    pub tester: Option<String>,
    pub build_env: Vec<String>,
    /// The first variable of `build_env` set in the sidecar's environment at start, and its value.
    pub build_from_env: Option<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardRule {
    pub field: String,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLookupError {
    /// Forward the write; Rally validates it anyway.
    Forward,
    /// Refuse the write.
    Block,
}

#[derive(Debug, Clone)]
pub struct GuardConfig {
    pub enabled: bool,
    pub cache_ttl: Duration,
    pub block_closed_projects: bool,
    pub on_lookup_error: OnLookupError,
    /// How long a failed lookup is remembered for its credential.
    pub failure_cache_ttl: Duration,
    pub rules: Vec<GuardRule>,
}

#[derive(Debug, Clone)]
pub struct ConfirmConfig {
    pub enabled: bool,
    pub policy: ConfirmPolicy,
    /// Status of the "not confirmed" answer.
    pub unconfirmed_status: http::StatusCode,
    /// Also check the TestCase's LastVerdict/LastBuild after confirming; warn if stale.
    pub check_rollup: bool,
    /// What the client waits for (`confirm.hold`).
    pub hold: Hold,
}

/// `confirm.hold`: how long a client's answer is held (docs/confirmation.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Until the result has been read back from Rally (or its fate is otherwise known).
    Readback,
    /// A clean acknowledgement (an ObjectID, no Errors) is answered at once and read back in
    /// the background; only ambiguous outcomes hold the client.
    Ambiguous,
}

/// The Rally workspace and projects `check` and `sweep` work in (names, refs or ObjectIDs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeConfig {
    pub workspace: Option<String>,
    pub projects: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct JournalConfig {
    pub path: PathBuf,
    pub retention: Duration,
    pub max_confirmed: i64,
    /// The journal file's size cap (bytes of pages in use).
    pub max_bytes: u64,
    /// Rejected and refused rows are deleted after this long...
    pub rejected_retention: Duration,
    /// ...and their bodies dropped after this long.
    pub rejected_body_retention: Duration,
}

/// Retry and confirmation policy (`[confirm]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfirmPolicy {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Re-submissions after the first attempt.
    pub max_attempts: u32,
    /// Overall budget from the first attempt to the answer.
    pub timeout: Duration,
    /// How long an accepted result may take to become readable before it is presumed lost.
    pub readback_window: Duration,
}

/// `[sweep]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepConfig {
    pub stuck_verdicts: Vec<String>,
    pub older_than: Duration,
    pub set_verdict: String,
    pub apply: bool,
    /// Run inside `serve` this often (None: off).
    pub interval: Option<Duration>,
}

/// The validated configuration every other module reads.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: ListenConfig,
    pub upstream: UpstreamConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub shutdown_grace: Duration,
    pub rewrite_refs: bool,
    pub intercept: InterceptConfig,
    pub context: ContextConfig,
    pub guard: GuardConfig,
    pub confirm: ConfirmConfig,
    pub journal: JournalConfig,
    pub scope: ScopeConfig,
    pub sweep: SweepConfig,
    /// Fleet mode (`[fleet]`), off without a database URL.
    pub fleet: Option<fleet::FleetConfig>,
}

/// CI variables that name a build, first found wins: Jenkins, GitHub Actions, GitLab,
/// Azure DevOps, CircleCI, Buildkite, TeamCity (which also sets BUILD_NUMBER, after Jenkins' tag).
pub const DEFAULT_BUILD_ENV: &[&str] = &[
    "BUILD_TAG",
    "GITHUB_RUN_ID",
    "CI_PIPELINE_ID",
    "BUILD_BUILDNUMBER",
    "CIRCLE_BUILD_NUM",
    "BUILDKITE_BUILD_NUMBER",
    "BUILD_NUMBER",
];

/// Documented defaults, in one place (the example file is checked against these).
pub mod defaults {
    pub const SHUTDOWN_GRACE: &str = "30s";
    pub const REWRITE_REFS: bool = true;
    pub const HEADER_READ_TIMEOUT: &str = "30s";
    pub const HTTP2: bool = true;
    pub const MAX_CONNECTIONS: u64 = 20_000;
    pub const MAX_CONNECTIONS_PER_PEER: u64 = 1_000;
    pub const BODY_READ_TIMEOUT: &str = "60s";
    pub const IDLE_TIMEOUT: &str = "60s";
    pub const HTTP2_KEEP_ALIVE_INTERVAL: &str = "20s";
    pub const HTTP2_KEEP_ALIVE_TIMEOUT: &str = "20s";
    pub const REQUIRE_TOKEN: bool = false;
    pub const INSECURE_SKIP_VERIFY: bool = false;
    pub const CONNECT_TIMEOUT: &str = "10s";
    /// Rally itself stops a request at 5 minutes; give it a little more.
    pub const RESPONSE_TIMEOUT: &str = "5m 30s";
    pub const POOL_IDLE_TIMEOUT: &str = "90s";
    pub const FORWARDED_HEADERS: bool = true;
    pub const ENABLE_SHUTDOWN: bool = false;
    pub const LOG_FORMAT: &str = "human";
    pub const LOG_LEVEL: &str = "info";
    pub const LOG_COLOR: &str = "auto";
    pub const MODE: &str = "enforce";
    pub const MAX_BODY: u64 = 1024 * 1024;
    pub const ENRICH_UPDATES: bool = false;
    pub const BLOCK_STATUS: u16 = 200;
    pub const MAX_BUFFERED: u64 = 16 * 1024 * 1024;
    pub const GUARD_ENABLED: bool = true;
    pub const GUARD_CACHE_TTL: &str = "30s";
    pub const BLOCK_CLOSED_PROJECTS: bool = true;
    pub const ON_LOOKUP_ERROR: &str = "forward";
    pub const FAILURE_CACHE_TTL: &str = "5s";
    pub const MAX_CONCURRENCY_PER_CREDENTIAL: u64 = 12;
    pub const MAX_QUEUE_PER_CREDENTIAL: u64 = 20_000;
    pub const QUEUE_TIMEOUT: &str = "5m";
    pub const CONFIRM_ENABLED: bool = true;
    pub const INITIAL_BACKOFF: &str = "200ms";
    pub const MAX_BACKOFF: &str = "10s";
    pub const MAX_ATTEMPTS: u32 = 3;
    pub const CONFIRM_TIMEOUT: &str = "2m";
    pub const READBACK_WINDOW: &str = "10s";
    pub const HOLD: &str = "readback";
    pub const UNCONFIRMED_STATUS: u16 = 200;
    pub const JOURNAL_PATH: &str = "rally-sidecar-journal.sqlite";
    pub const RETENTION: &str = "7days";
    pub const MAX_CONFIRMED: i64 = 100_000;
    pub const JOURNAL_MAX_BYTES: u64 = 512 * 1024 * 1024;
    pub const REJECTED_RETENTION: &str = "3days";
    pub const REJECTED_BODY_RETENTION: &str = "1day";
}

impl Config {
    /// Reads the file (if any), the environment and the flags, and validates the result.
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigErrors> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let raw = Self::load_raw(file, env.clone(), overrides)?;
        let mut cfg = Config::validate(&raw, overrides)?;
        cfg.context.build_from_env = cfg.context.build_env.iter().find_map(|var| {
            env.iter()
                .find(|(k, v)| k == var && !v.trim().is_empty())
                .map(|(k, v)| (k.clone(), v.trim().to_string()))
        });
        Ok(cfg)
    }

    /// The raw stage of [`Config::load`]: file and environment merged, not yet validated.
    pub fn load_raw(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
        _overrides: &Overrides,
    ) -> Result<RawConfig, ConfigErrors> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigErrors(vec![ConfigError {
                        key: "--config".into(),
                        message: format!("cannot read {}: {e}", path.display()),
                    }])
                })?;
                text.parse::<toml::Table>().map_err(|e| {
                    ConfigErrors(vec![ConfigError {
                        key: path.display().to_string(),
                        message: e.to_string().trim().to_string(),
                    }])
                })?
            }
            None => toml::Table::new(),
        };
        // Variables read by other parts of the program, not config keys.
        let extra = ["config", "demo"];
        let env_errors = apply_env(&mut table, env, &extra);
        let raw = RawConfig::from_table(table);
        match (raw, env_errors.is_empty()) {
            (Ok(raw), true) => Ok(raw),
            (Ok(_), false) => Err(ConfigErrors(env_errors)),
            (Err(mut e), _) => {
                e.0.extend(env_errors);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_ids_from_the_environment_are_accepted_where_names_are() {
        let env = [
            (
                "RALLY_SIDECAR_SCOPE_WORKSPACE".to_string(),
                "12345".to_string(),
            ),
            (
                "RALLY_SIDECAR_SCOPE_PROJECTS".to_string(),
                "301".to_string(),
            ),
            ("RALLY_SIDECAR_CONTEXT_BUILD".to_string(), "42".to_string()),
        ];
        let cfg = Config::load(None, env, &Overrides::default()).expect("digits are valid");
        assert_eq!(cfg.scope.workspace.as_deref(), Some("12345"));
        assert_eq!(cfg.scope.projects, ["301"]);
        assert_eq!(cfg.context.build.as_deref(), Some("42"));
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let raw = RawConfig::from_toml(
            r#"
            shutdown_grace = "soon"
            [listen]
            addr = "nowhere"
            [upstream]
            url = "ftp://x"
            [log]
            format = "xml"
            "#,
        )
        .expect("raw parses");
        let err = Config::validate(&raw, &Overrides::default()).expect_err("invalid");
        let keys: Vec<_> = err.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "listen.addr",
                "upstream.url",
                "log.format",
                "shutdown_grace"
            ]
        );
    }

    #[test]
    fn log_color_is_auto_unless_said_otherwise() {
        let cfg = Config::validate(&RawConfig::default(), &Overrides::default()).expect("valid");
        assert_eq!(cfg.log.color, LogColor::Auto);
        let raw = RawConfig::from_toml("[log]\ncolor = \"never\"\n").expect("raw");
        let cfg = Config::validate(&raw, &Overrides::default()).expect("valid");
        assert_eq!(cfg.log.color, LogColor::Never);
        let raw = RawConfig::from_toml("[log]\ncolor = \"rainbow\"\n").expect("raw");
        let err = Config::validate(&raw, &Overrides::default()).expect_err("invalid");
        assert_eq!(err.0[0].key, "log.color", "{err}");
    }

    #[test]
    fn unknown_keys_in_several_sections_are_all_named() {
        let err = RawConfig::from_toml("bogus = 1\n[listen]\nadr = \"x\"\n[admin]\nlissen = 1\n")
            .expect_err("unknown keys");
        assert_eq!(err.0.len(), 3, "{err}");
        assert!(err.to_string().contains("adr"));
        assert!(err.to_string().contains("lissen"));
        assert!(err.to_string().contains("bogus"));
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let mut table: toml::Table = "[upstream]\nurl = \"https://a.example\"\n"
            .parse()
            .expect("toml");
        let errs = apply_env(
            &mut table,
            vec![
                (
                    "RALLY_SIDECAR_UPSTREAM_URL".to_string(),
                    "https://b.example".to_string(),
                ),
                (
                    "RALLY_SIDECAR_ADMIN_ENABLE_SHUTDOWN".to_string(),
                    "true".to_string(),
                ),
                ("RALLY_SIDECAR_SHUTDOWN_GRACE".to_string(), "5s".to_string()),
                ("UNRELATED".to_string(), "x".to_string()),
            ],
            &[],
        );
        assert!(errs.is_empty());
        let raw = RawConfig::from_table(table).expect("raw");
        let cfg = Config::validate(&raw, &Overrides::default()).expect("valid");
        assert_eq!(cfg.upstream.origin_string(), "https://b.example");
        assert!(cfg.admin.enable_shutdown);
        assert_eq!(cfg.shutdown_grace, Duration::from_secs(5));

        let ov = Overrides {
            upstream: Some("http://c.example:8080".into()),
            ..Overrides::default()
        };
        let cfg = Config::validate(&raw, &ov).expect("valid");
        assert_eq!(cfg.upstream.origin_string(), "http://c.example:8080");
    }

    #[test]
    fn listen_default_depends_on_tls() {
        let cfg = Config::validate(&RawConfig::default(), &Overrides::default()).expect("valid");
        assert_eq!(cfg.listen.addr.to_string(), DEFAULT_LISTEN_PLAIN);
        assert_eq!(cfg.upstream.origin_string(), DEFAULT_UPSTREAM);
        assert_eq!(cfg.admin.listen.to_string(), DEFAULT_ADMIN_LISTEN);
    }

    #[test]
    fn upstream_with_a_path_is_refused() {
        assert!(parse_origin("https://rally1.rallydev.com/slm").is_err());
        assert!(parse_origin("https://rally1.rallydev.com/").is_ok());
        assert!(parse_origin("rally1.rallydev.com").is_err());
    }
}
