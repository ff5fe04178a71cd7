//! The raw shape: exactly what the file (and the environment overlay) may contain. Every
//! field is optional so that defaults live in one place (validation) and the example file can
//! be checked against them; unknown keys are refused per section, each named.

use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, ConfigErrors};

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
    pub max_connections_per_peer: Option<u64>,
    pub body_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub http2_keep_alive_interval: Option<String>,
    pub http2_keep_alive_timeout: Option<String>,
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

/// The `[admin]` section as written. `Debug` hides the token.
#[derive(Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub enable_shutdown: Option<bool>,
    /// The token inline (meant for `RALLY_SIDECAR_ADMIN_TOKEN` from a Secret).
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub require_token: Option<bool>,
    pub allowed_hosts: Option<List>,
}

impl std::fmt::Debug for RawAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawAdmin")
            .field("listen", &self.listen)
            .field("enable_shutdown", &self.enable_shutdown)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("require_token", &self.require_token)
            .field("allowed_hosts", &self.allowed_hosts)
            .finish()
    }
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
    pub color: Option<String>,
}

/// A value written as a string or a number (`RALLY_SIDECAR_BUILD=1234` arrives as a number).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Text {
    Str(String),
    Int(i64),
    Float(f64),
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text::Str(s.to_string())
    }
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
    /// One ObjectID from the environment (digit-only values arrive as integers).
    One(i64),
}

impl List {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            List::Items(v) => v,
            List::One(i) => vec![i.to_string()],
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
    pub max_buffered: Option<u64>,
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
    pub hold: Option<String>,
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
    /// A name, a ref or an ObjectID (digit-only from the environment: an integer).
    pub workspace: Option<Text>,
    pub projects: Option<List>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawJournal {
    pub path: Option<PathBuf>,
    pub retention: Option<String>,
    pub max_confirmed: Option<i64>,
    pub max_bytes: Option<u64>,
    pub rejected_retention: Option<String>,
    pub rejected_body_retention: Option<String>,
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
    pub failure_cache_ttl: Option<String>,
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
    pub fleet: super::fleet::RawFleet,
}

/// Sections the file may hold; anything else is an error naming the key.
pub(super) const SECTIONS: &[&str] = &[
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
