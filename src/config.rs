//! Configuration: a TOML file read into a raw shape, overlaid with `RALLY_SIDECAR_<SECTION>_<KEY>`
//! environment variables and command-line flags, then validated into a typed [`Config`].
//!
//! Validation never stops at the first problem: every error is collected, each naming its key,
//! so an operator fixes a bad file in one round. `main` exits with code 64 (EX_USAGE) on any.
//! `config.example.toml` documents every key; a test parses it and checks that the defaults it
//! states are the defaults this module applies.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

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

// ---------------------------------------------------------------------------------------------
// Raw shape: exactly what the file may contain. Every field optional so defaults live in one
// place (`Config::validate`) and the example file can be checked against them.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawTop {
    pub shutdown_grace: Option<String>,
    pub rewrite_refs: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    pub addr: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub header_read_timeout: Option<String>,
    pub http2: Option<bool>,
    pub max_connections: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub insecure_skip_verify: Option<bool>,
    pub proxy: Option<String>,
    pub connect_timeout: Option<String>,
    pub response_timeout: Option<String>,
    pub pool_idle_timeout: Option<String>,
    pub forwarded_headers: Option<bool>,
    pub max_concurrency_per_credential: Option<u64>,
    pub max_queue_per_credential: Option<u64>,
    pub queue_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub enable_shutdown: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
}

/// A value written as a string or a number (`RALLY_SIDECAR_BUILD=1234` arrives as a number).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Text {
    Str(String),
    Int(i64),
    Float(f64),
}

impl Text {
    pub fn into_string(self) -> String {
        match self {
            Text::Str(s) => s,
            Text::Int(i) => i.to_string(),
            Text::Float(f) => f.to_string(),
        }
    }
}

/// A list written as a TOML array or, from the environment, as a comma-separated string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum List {
    Items(Vec<String>),
    Comma(String),
}

impl List {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            List::Items(v) => v,
            List::Comma(s) => s
                .split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect(),
        }
    }
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawIntercept {
    pub mode: Option<String>,
    pub max_body: Option<u64>,
    pub enrich_updates: Option<bool>,
    pub block_status: Option<u16>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawContext {
    pub build: Option<Text>,
    pub tester: Option<String>,
    pub build_env: Option<List>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawConfirm {
    pub enabled: Option<bool>,
    pub initial_backoff: Option<String>,
    pub max_backoff: Option<String>,
    pub max_attempts: Option<u32>,
    pub timeout: Option<String>,
    pub readback_window: Option<String>,
    pub unconfirmed_status: Option<u16>,
    pub check_rollup: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawSweep {
    pub stuck_verdicts: Option<List>,
    pub older_than: Option<String>,
    pub set_verdict: Option<String>,
    pub apply: Option<bool>,
    pub interval: Option<String>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawScope {
    pub workspace: Option<String>,
    pub projects: Option<List>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawJournal {
    pub path: Option<PathBuf>,
    pub retention: Option<String>,
    pub max_confirmed: Option<i64>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub field: String,
    pub values: Vec<String>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawGuard {
    pub enabled: Option<bool>,
    pub cache_ttl: Option<String>,
    pub block_closed_projects: Option<bool>,
    pub on_lookup_error: Option<String>,
    pub rule: Option<Vec<RawRule>>,
}

/// The raw file, section by section. Sections are parsed one by one so that a mistake in one
/// does not hide the mistakes in the others.
#[derive(Debug, Default, Clone)]
pub struct RawConfig {
    pub top: RawTop,
    pub listen: RawListen,
    pub upstream: RawUpstream,
    pub admin: RawAdmin,
    pub log: RawLog,
    pub intercept: RawIntercept,
    pub context: RawContext,
    pub guard: RawGuard,
    pub confirm: RawConfirm,
    pub journal: RawJournal,
    pub scope: RawScope,
    pub sweep: RawSweep,
    pub fleet: crate::fleet::config::RawFleet,
}

/// Sections the file may hold; anything else is an error naming the key.
const SECTIONS: &[&str] = &[
    "listen",
    "upstream",
    "admin",
    "log",
    "intercept",
    "context",
    "guard",
    "confirm",
    "journal",
    "scope",
    "sweep",
    "fleet",
];

/// Values given on the command line; they win over the environment and the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub admin_listen: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

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

    pub fn is_tls(&self) -> bool {
        self.origin.scheme_str() == Some("https")
    }
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub enable_shutdown: bool,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
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
    pub rules: Vec<GuardRule>,
}

#[derive(Debug, Clone)]
pub struct ConfirmConfig {
    pub enabled: bool,
    pub policy: crate::confirm::Policy,
    /// Status of the "not confirmed" answer.
    pub unconfirmed_status: http::StatusCode,
    /// Also check the TestCase's LastVerdict/LastBuild after confirming; warn if stale.
    pub check_rollup: bool,
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
    pub sweep: crate::sweep::SweepConfig,
    /// Fleet mode (`[fleet]`), off without a database URL.
    pub fleet: Option<crate::fleet::FleetConfig>,
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
    pub const INSECURE_SKIP_VERIFY: bool = false;
    pub const CONNECT_TIMEOUT: &str = "10s";
    /// Rally itself stops a request at 5 minutes; give it a little more.
    pub const RESPONSE_TIMEOUT: &str = "5m 30s";
    pub const POOL_IDLE_TIMEOUT: &str = "90s";
    pub const FORWARDED_HEADERS: bool = true;
    pub const ENABLE_SHUTDOWN: bool = false;
    pub const LOG_FORMAT: &str = "human";
    pub const LOG_LEVEL: &str = "info";
    pub const MODE: &str = "enforce";
    pub const MAX_BODY: u64 = 1024 * 1024;
    pub const ENRICH_UPDATES: bool = false;
    pub const BLOCK_STATUS: u16 = 200;
    pub const GUARD_ENABLED: bool = true;
    pub const GUARD_CACHE_TTL: &str = "30s";
    pub const BLOCK_CLOSED_PROJECTS: bool = true;
    pub const ON_LOOKUP_ERROR: &str = "forward";
    pub const MAX_CONCURRENCY_PER_CREDENTIAL: u64 = 12;
    pub const MAX_QUEUE_PER_CREDENTIAL: u64 = 20_000;
    pub const QUEUE_TIMEOUT: &str = "5m";
    pub const CONFIRM_ENABLED: bool = true;
    pub const INITIAL_BACKOFF: &str = "200ms";
    pub const MAX_BACKOFF: &str = "10s";
    pub const MAX_ATTEMPTS: u32 = 3;
    pub const CONFIRM_TIMEOUT: &str = "2m";
    pub const READBACK_WINDOW: &str = "10s";
    pub const UNCONFIRMED_STATUS: u16 = 200;
    pub const JOURNAL_PATH: &str = "rally-sidecar-journal.sqlite";
    pub const RETENTION: &str = "7days";
    pub const MAX_CONFIRMED: i64 = 100_000;
}

impl RawConfig {
    /// Parses TOML text. Each section is decoded on its own so all mistakes are reported.
    pub fn from_toml(text: &str) -> Result<Self, ConfigErrors> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigErrors(vec![ConfigError {
                key: "(file)".into(),
                message: e.to_string().trim().to_string(),
            }])
        })?;
        Self::from_table(table)
    }

    /// Decodes an already parsed table (file plus environment overlay).
    pub fn from_table(table: toml::Table) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let mut raw = RawConfig::default();
        let mut top = toml::Table::new();
        for (key, value) in table {
            if SECTIONS.contains(&key.as_str()) {
                let toml::Value::Table(section) = value else {
                    errors.push(ConfigError {
                        key: key.clone(),
                        message: "must be a table ([section])".into(),
                    });
                    continue;
                };
                let res = match key.as_str() {
                    "listen" => decode(section).map(|v| raw.listen = v),
                    "upstream" => decode(section).map(|v| raw.upstream = v),
                    "admin" => decode(section).map(|v| raw.admin = v),
                    "log" => decode(section).map(|v| raw.log = v),
                    "intercept" => decode(section).map(|v| raw.intercept = v),
                    "context" => decode(section).map(|v| raw.context = v),
                    "guard" => decode(section).map(|v| raw.guard = v),
                    "confirm" => decode(section).map(|v| raw.confirm = v),
                    "journal" => decode(section).map(|v| raw.journal = v),
                    "scope" => decode(section).map(|v| raw.scope = v),
                    "sweep" => decode(section).map(|v| raw.sweep = v),
                    "fleet" => decode(section).map(|v| raw.fleet = v),
                    _ => Ok(()),
                };
                if let Err(e) = res {
                    errors.push(ConfigError { key, message: e });
                }
            } else {
                top.insert(key, value);
            }
        }
        match decode::<RawTop>(top) {
            Ok(t) => raw.top = t,
            Err(e) => errors.push(ConfigError {
                key: "(top level)".into(),
                message: e,
            }),
        }
        if errors.is_empty() {
            Ok(raw)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

fn decode<T: for<'de> Deserialize<'de>>(table: toml::Table) -> Result<T, String> {
    T::deserialize(toml::Value::Table(table)).map_err(|e| e.message().trim().to_string())
}

/// Overlays `RALLY_SIDECAR_<SECTION>_<KEY>` (or `RALLY_SIDECAR_<KEY>` for top-level keys) on a
/// parsed file. `true`/`false` become booleans and all-digit values integers; everything else is a
/// string. Variables naming no known key are reported, since a typo would otherwise be silent.
pub fn apply_env(
    table: &mut toml::Table,
    vars: impl IntoIterator<Item = (String, String)>,
    known_extra: &[&str],
) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let mut rest = rest.to_ascii_lowercase();
        if known_extra.contains(&rest.as_str()) {
            continue;
        }
        if rest == "build" {
            // The documented short form of RALLY_SIDECAR_CONTEXT_BUILD.
            rest = "context_build".into();
        }
        let parsed = if value == "true" || value == "false" {
            toml::Value::Boolean(value == "true")
        } else if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
            value
                .parse::<i64>()
                .map(toml::Value::Integer)
                .unwrap_or(toml::Value::String(value.clone()))
        } else {
            toml::Value::String(value.clone())
        };
        let section = SECTIONS
            .iter()
            .find(|s| rest.starts_with(&format!("{s}_")))
            .copied();
        match section {
            Some(section) => {
                let key = rest[section.len() + 1..].to_string();
                let entry = table
                    .entry(section.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let toml::Value::Table(t) = entry {
                    t.insert(key, parsed);
                } else {
                    errors.push(ConfigError {
                        key: name.clone(),
                        message: format!("[{section}] in the file is not a table"),
                    });
                }
            }
            None => {
                table.insert(rest, parsed);
            }
        }
    }
    errors
}

fn duration(
    key: &str,
    raw: Option<&str>,
    default: &str,
    errors: &mut Vec<ConfigError>,
) -> Duration {
    let text = raw.unwrap_or(default);
    match humantime::parse_duration(text) {
        Ok(d) => d,
        Err(e) => {
            errors.push(ConfigError {
                key: key.into(),
                message: format!("{text:?} is not a duration ({e}); write e.g. \"30s\" or \"5m\""),
            });
            humantime::parse_duration(default).unwrap_or(Duration::from_secs(30))
        }
    }
}

fn socket_addr(key: &str, text: &str, errors: &mut Vec<ConfigError>) -> SocketAddr {
    match text.parse() {
        Ok(a) => a,
        Err(_) => {
            errors.push(ConfigError {
                key: key.into(),
                message: format!("{text:?} is not an address like 127.0.0.1:8080"),
            });
            SocketAddr::from(([127, 0, 0, 1], 0))
        }
    }
}

fn existing_file(key: &str, path: &Option<PathBuf>, errors: &mut Vec<ConfigError>) {
    if let Some(p) = path
        && !p.is_file()
    {
        errors.push(ConfigError {
            key: key.into(),
            message: format!("{} is not a readable file", p.display()),
        });
    }
}

/// Parses an origin (`scheme://host[:port]`, no path beyond `/`).
pub fn parse_origin(text: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = text
        .trim_end_matches('/')
        .parse()
        .map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("{text:?} must start with https:// or http://")),
    }
    if uri.host().is_none() {
        return Err(format!("{text:?} has no host"));
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!(
            "{text:?} must be an origin only (no path); the sidecar forwards the client's path"
        ));
    }
    Ok(uri)
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

    /// Turns the raw shape into a `Config`, applying defaults and collecting every error.
    pub fn validate(raw: &RawConfig, ov: &Overrides) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let e = &mut errors;

        let tls_cert = ov.tls_cert.clone().or_else(|| raw.listen.tls_cert.clone());
        let tls_key = ov.tls_key.clone().or_else(|| raw.listen.tls_key.clone());
        existing_file("listen.tls_cert", &tls_cert, e);
        existing_file("listen.tls_key", &tls_key, e);
        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                e.push(ConfigError {
                    key: "listen.tls_key".into(),
                    message: "listen.tls_cert is set but listen.tls_key is not".into(),
                });
                None
            }
            (None, Some(_)) => {
                e.push(ConfigError {
                    key: "listen.tls_cert".into(),
                    message: "listen.tls_key is set but listen.tls_cert is not".into(),
                });
                None
            }
        };
        let default_listen = if tls.is_some() {
            DEFAULT_LISTEN_TLS
        } else {
            DEFAULT_LISTEN_PLAIN
        };
        let listen_text = ov
            .listen
            .clone()
            .or_else(|| raw.listen.addr.clone())
            .unwrap_or_else(|| default_listen.into());
        let listen = ListenConfig {
            addr: socket_addr("listen.addr", &listen_text, e),
            tls,
            header_read_timeout: duration(
                "listen.header_read_timeout",
                raw.listen.header_read_timeout.as_deref(),
                defaults::HEADER_READ_TIMEOUT,
                e,
            ),
            http2: raw.listen.http2.unwrap_or(defaults::HTTP2),
            max_connections: raw
                .listen
                .max_connections
                .unwrap_or(defaults::MAX_CONNECTIONS) as usize,
        };
        if listen.max_connections == 0 {
            e.push(ConfigError {
                key: "listen.max_connections".into(),
                message: "must be at least 1".into(),
            });
        }

        let upstream_text = ov
            .upstream
            .clone()
            .or_else(|| raw.upstream.url.clone())
            .unwrap_or_else(|| DEFAULT_UPSTREAM.into());
        let origin = parse_origin(&upstream_text).unwrap_or_else(|m| {
            e.push(ConfigError {
                key: "upstream.url".into(),
                message: m,
            });
            http::Uri::from_static(DEFAULT_UPSTREAM)
        });
        existing_file("upstream.ca_file", &raw.upstream.ca_file, e);
        let proxy = match raw.upstream.proxy.as_deref() {
            None | Some("") | Some("env") => ProxySetting::FromEnv,
            Some("none") => ProxySetting::Disabled,
            Some(text) => match text.parse::<http::Uri>() {
                Ok(uri) if uri.host().is_some() => ProxySetting::Explicit(uri),
                _ => {
                    e.push(ConfigError {
                        key: "upstream.proxy".into(),
                        message: format!(
                            "{text:?} is not a proxy URL like http://user:pass@proxy:3128 (or \"env\", \"none\")"
                        ),
                    });
                    ProxySetting::FromEnv
                }
            },
        };
        let upstream = UpstreamConfig {
            origin,
            ca_file: raw.upstream.ca_file.clone(),
            insecure_skip_verify: raw
                .upstream
                .insecure_skip_verify
                .unwrap_or(defaults::INSECURE_SKIP_VERIFY),
            proxy,
            connect_timeout: duration(
                "upstream.connect_timeout",
                raw.upstream.connect_timeout.as_deref(),
                defaults::CONNECT_TIMEOUT,
                e,
            ),
            response_timeout: duration(
                "upstream.response_timeout",
                raw.upstream.response_timeout.as_deref(),
                defaults::RESPONSE_TIMEOUT,
                e,
            ),
            pool_idle_timeout: duration(
                "upstream.pool_idle_timeout",
                raw.upstream.pool_idle_timeout.as_deref(),
                defaults::POOL_IDLE_TIMEOUT,
                e,
            ),
            forwarded_headers: raw
                .upstream
                .forwarded_headers
                .unwrap_or(defaults::FORWARDED_HEADERS),
            max_concurrency_per_credential: raw
                .upstream
                .max_concurrency_per_credential
                .unwrap_or(defaults::MAX_CONCURRENCY_PER_CREDENTIAL)
                .max(1) as usize,
            max_queue_per_credential: raw
                .upstream
                .max_queue_per_credential
                .unwrap_or(defaults::MAX_QUEUE_PER_CREDENTIAL)
                as usize,
            queue_timeout: duration(
                "upstream.queue_timeout",
                raw.upstream.queue_timeout.as_deref(),
                defaults::QUEUE_TIMEOUT,
                e,
            ),
        };

        let admin_text = ov
            .admin_listen
            .clone()
            .or_else(|| raw.admin.listen.clone())
            .unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.into());
        let admin = AdminConfig {
            listen: socket_addr("admin.listen", &admin_text, e),
            enable_shutdown: raw
                .admin
                .enable_shutdown
                .unwrap_or(defaults::ENABLE_SHUTDOWN),
        };

        let format = match raw.log.format.as_deref().unwrap_or(defaults::LOG_FORMAT) {
            "human" => LogFormat::Human,
            "json" => LogFormat::Json,
            other => {
                e.push(ConfigError {
                    key: "log.format".into(),
                    message: format!("{other:?} is not one of \"human\", \"json\""),
                });
                LogFormat::Human
            }
        };
        let level = raw
            .log
            .level
            .clone()
            .unwrap_or_else(|| defaults::LOG_LEVEL.into());
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            e.push(ConfigError {
                key: "log.level".into(),
                message: format!(
                    "{level:?} is not a level or filter (e.g. \"info\", \"rally_sidecar=debug\")"
                ),
            });
        }

        let shutdown_grace = duration(
            "shutdown_grace",
            raw.top.shutdown_grace.as_deref(),
            defaults::SHUTDOWN_GRACE,
            e,
        );

        let (intercept, context, guard) = validate_interception(raw, e);
        let (confirm, journal) = validate_confirmation(raw, e);
        let sweep = crate::sweep::SweepConfig {
            stuck_verdicts: raw
                .sweep
                .stuck_verdicts
                .clone()
                .map(List::into_vec)
                .unwrap_or_default(),
            older_than: duration("sweep.older_than", raw.sweep.older_than.as_deref(), "2h", e),
            set_verdict: raw
                .sweep
                .set_verdict
                .clone()
                .unwrap_or_else(|| "Blocked".into()),
            apply: raw.sweep.apply.unwrap_or(false),
            interval: raw
                .sweep
                .interval
                .as_deref()
                .filter(|i| !i.is_empty() && *i != "off")
                .map(|i| duration("sweep.interval", Some(i), "1h", e)),
        };

        let fleet = crate::fleet::config::validate(&raw.fleet, upstream.queue_timeout, e);

        if errors.is_empty() {
            Ok(Config {
                listen,
                upstream,
                admin,
                log: LogConfig { format, level },
                shutdown_grace,
                rewrite_refs: raw.top.rewrite_refs.unwrap_or(defaults::REWRITE_REFS),
                intercept,
                context,
                guard,
                confirm,
                journal,
                scope: ScopeConfig {
                    workspace: raw.scope.workspace.clone().filter(|w| !w.trim().is_empty()),
                    projects: raw
                        .scope
                        .projects
                        .clone()
                        .map(List::into_vec)
                        .unwrap_or_default(),
                },
                sweep,
                fleet,
            })
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// A configuration for tests and the demo: plain listener on an ephemeral port.
    pub fn for_upstream(origin: &str) -> Result<Config, ConfigErrors> {
        let ov = Overrides {
            listen: Some("127.0.0.1:0".into()),
            upstream: Some(origin.into()),
            admin_listen: Some("127.0.0.1:0".into()),
            ..Overrides::default()
        };
        Config::validate(&RawConfig::default(), &ov)
    }
}

fn validate_confirmation(
    raw: &RawConfig,
    e: &mut Vec<ConfigError>,
) -> (ConfirmConfig, JournalConfig) {
    let c = &raw.confirm;
    let policy = crate::confirm::Policy {
        initial_backoff: duration(
            "confirm.initial_backoff",
            c.initial_backoff.as_deref(),
            defaults::INITIAL_BACKOFF,
            e,
        ),
        max_backoff: duration(
            "confirm.max_backoff",
            c.max_backoff.as_deref(),
            defaults::MAX_BACKOFF,
            e,
        ),
        max_attempts: c.max_attempts.unwrap_or(defaults::MAX_ATTEMPTS),
        timeout: duration(
            "confirm.timeout",
            c.timeout.as_deref(),
            defaults::CONFIRM_TIMEOUT,
            e,
        ),
        readback_window: duration(
            "confirm.readback_window",
            c.readback_window.as_deref(),
            defaults::READBACK_WINDOW,
            e,
        ),
    };
    if policy.max_backoff < policy.initial_backoff {
        e.push(ConfigError {
            key: "confirm.max_backoff".into(),
            message: "must not be shorter than confirm.initial_backoff".into(),
        });
    }
    let status = c.unconfirmed_status.unwrap_or(defaults::UNCONFIRMED_STATUS);
    let unconfirmed_status = match http::StatusCode::from_u16(status) {
        Ok(s) if !s.is_informational() => s,
        _ => {
            e.push(ConfigError {
                key: "confirm.unconfirmed_status".into(),
                message: format!("{status} is not a usable HTTP status (e.g. 200, 503, 504)"),
            });
            http::StatusCode::OK
        }
    };
    let confirm = ConfirmConfig {
        enabled: c.enabled.unwrap_or(defaults::CONFIRM_ENABLED),
        policy,
        unconfirmed_status,
        check_rollup: c.check_rollup.unwrap_or(false),
    };
    let journal = JournalConfig {
        path: raw
            .journal
            .path
            .clone()
            .unwrap_or_else(|| PathBuf::from(defaults::JOURNAL_PATH)),
        retention: duration(
            "journal.retention",
            raw.journal.retention.as_deref(),
            defaults::RETENTION,
            e,
        ),
        max_confirmed: raw.journal.max_confirmed.unwrap_or(defaults::MAX_CONFIRMED),
    };
    (confirm, journal)
}

fn validate_interception(
    raw: &RawConfig,
    e: &mut Vec<ConfigError>,
) -> (InterceptConfig, ContextConfig, GuardConfig) {
    let mode = match raw.intercept.mode.as_deref().unwrap_or(defaults::MODE) {
        "enforce" => Mode::Enforce,
        "shadow" => Mode::Shadow,
        other => {
            e.push(ConfigError {
                key: "intercept.mode".into(),
                message: format!("{other:?} is not one of \"enforce\", \"shadow\""),
            });
            Mode::Enforce
        }
    };
    let max_body = raw.intercept.max_body.unwrap_or(defaults::MAX_BODY);
    if max_body < 1024 {
        e.push(ConfigError {
            key: "intercept.max_body".into(),
            message: format!(
                "{max_body} bytes is too small for a TestCaseResult; use at least 1024"
            ),
        });
    }
    let status = raw.intercept.block_status.unwrap_or(defaults::BLOCK_STATUS);
    let block_status = match http::StatusCode::from_u16(status) {
        Ok(s) if s.is_success() || s.is_client_error() => s,
        _ => {
            e.push(ConfigError {
                key: "intercept.block_status".into(),
                message: format!("{status} must be a 2xx or 4xx status (e.g. 200, 409, 422)"),
            });
            http::StatusCode::OK
        }
    };
    let intercept = InterceptConfig {
        mode,
        max_body: max_body as usize,
        enrich_updates: raw
            .intercept
            .enrich_updates
            .unwrap_or(defaults::ENRICH_UPDATES),
        block_status,
    };
    let build = raw
        .context
        .build
        .clone()
        .map(Text::into_string)
        .filter(|b| !b.trim().is_empty());
    let tester = raw.context.tester.clone().filter(|t| !t.trim().is_empty());
    if let Some(t) = &tester {
        let ok = t
            .split('/')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .windows(2)
            .any(|w| w[0].eq_ignore_ascii_case("user") && !w[1].is_empty());
        if !ok {
            e.push(ConfigError {
                key: "context.tester".into(),
                message: format!("{t:?} is not a user reference like \"/user/12345\""),
            });
        }
    }
    let context = ContextConfig {
        build,
        tester,
        build_env: raw
            .context
            .build_env
            .clone()
            .map(List::into_vec)
            .unwrap_or_else(|| DEFAULT_BUILD_ENV.iter().map(|s| s.to_string()).collect()),
        build_from_env: None,
    };
    let on_lookup_error = match raw
        .guard
        .on_lookup_error
        .as_deref()
        .unwrap_or(defaults::ON_LOOKUP_ERROR)
    {
        "forward" => OnLookupError::Forward,
        "block" => OnLookupError::Block,
        other => {
            e.push(ConfigError {
                key: "guard.on_lookup_error".into(),
                message: format!("{other:?} is not one of \"forward\", \"block\""),
            });
            OnLookupError::Forward
        }
    };
    let mut rules = Vec::new();
    for (i, r) in raw
        .guard
        .rule
        .clone()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        if r.field.trim().is_empty() || r.values.is_empty() {
            e.push(ConfigError {
                key: format!("guard.rule[{i}]"),
                message: "needs a field and at least one value".into(),
            });
            continue;
        }
        rules.push(GuardRule {
            field: r.field,
            values: r.values,
        });
    }
    let guard = GuardConfig {
        enabled: raw.guard.enabled.unwrap_or(defaults::GUARD_ENABLED),
        cache_ttl: duration(
            "guard.cache_ttl",
            raw.guard.cache_ttl.as_deref(),
            defaults::GUARD_CACHE_TTL,
            e,
        ),
        block_closed_projects: raw
            .guard
            .block_closed_projects
            .unwrap_or(defaults::BLOCK_CLOSED_PROJECTS),
        on_lookup_error,
        rules,
    };
    (intercept, context, guard)
}

/// Sorted view of which keys each section accepts (used by docs and tests).
pub fn known_keys() -> BTreeMap<&'static str, Vec<&'static str>> {
    let mut m = BTreeMap::new();
    m.insert("(top)", vec!["shutdown_grace", "rewrite_refs"]);
    m.insert(
        "listen",
        vec![
            "addr",
            "tls_cert",
            "tls_key",
            "header_read_timeout",
            "http2",
            "max_connections",
        ],
    );
    m.insert(
        "upstream",
        vec![
            "url",
            "ca_file",
            "insecure_skip_verify",
            "proxy",
            "connect_timeout",
            "response_timeout",
            "pool_idle_timeout",
            "forwarded_headers",
            "max_concurrency_per_credential",
            "max_queue_per_credential",
            "queue_timeout",
        ],
    );
    m.insert("admin", vec!["listen", "enable_shutdown"]);
    m.insert(
        "confirm",
        vec![
            "enabled",
            "initial_backoff",
            "max_backoff",
            "max_attempts",
            "timeout",
            "readback_window",
            "unconfirmed_status",
            "check_rollup",
        ],
    );
    m.insert("journal", vec!["path", "retention", "max_confirmed"]);
    m.insert("scope", vec!["workspace", "projects"]);
    m.insert(
        "sweep",
        vec![
            "stuck_verdicts",
            "older_than",
            "set_verdict",
            "apply",
            "interval",
        ],
    );
    m.insert("log", vec!["format", "level"]);
    m.insert("fleet", crate::fleet::config::KEYS.to_vec());
    m.insert(
        "intercept",
        vec!["mode", "max_body", "enrich_updates", "block_status"],
    );
    m.insert("context", vec!["build", "tester", "build_env"]);
    m.insert(
        "guard",
        vec![
            "enabled",
            "cache_ttl",
            "block_closed_projects",
            "on_lookup_error",
            "field",
            "values",
        ],
    );
    m
}

#[cfg(test)]
mod tests {
    use super::*;

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
