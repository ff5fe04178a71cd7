//! `[fleet]`: the raw section as the file and the environment give it, and its validation into
//! a [`FleetConfig`]. Fleet mode is on exactly when a URL is given (`url`, `url_file` for a
//! mounted Secret, or `RALLY_SIDECAR_FLEET_URL`); without one the sidecar keeps its embedded
//! journal and local governor. The URL carries a password, so nothing here prints it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

/// Documented defaults of `[fleet]` (config.example.toml states the same).
pub mod defaults {
    /// Rally allows 12 concurrent requests per user; leave two for people and other tools.
    pub const BUDGET: u64 = 10;
    /// Rally's own ceiling: a budget above it would defeat the point.
    pub const RALLY_LIMIT: u64 = 12;
    pub const LEASE: &str = "30s";
    pub const UNAVAILABLE_TIMEOUT: &str = "10s";
    pub const CONTEXT_POLL: &str = "2s";
    pub const RETRY_WINDOW: &str = "15m";
}

/// The `[fleet]` section as written. `Debug` hides the URL.
#[derive(Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    pub url: Option<String>,
    pub url_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub budget: Option<u64>,
    pub pod_cap: Option<u64>,
    pub lease: Option<String>,
    pub unavailable_timeout: Option<String>,
    pub context_poll: Option<String>,
    pub retry_window: Option<String>,
}

impl fmt::Debug for RawFleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawFleet")
            .field("url", &self.url.as_ref().map(|_| "<redacted>"))
            .field("url_file", &self.url_file)
            .field("budget", &self.budget)
            .field("pod_cap", &self.pod_cap)
            .finish_non_exhaustive()
    }
}

/// Validated fleet settings. `Debug` hides the URL.
#[derive(Clone, PartialEq)]
pub struct FleetConfig {
    url: String,
    /// Extra CA for the database's TLS certificate (besides the system and Mozilla roots).
    pub ca_file: Option<PathBuf>,
    /// Concurrent Rally requests per Rally user across the whole fleet.
    pub budget: u32,
    /// Concurrent Rally requests per Rally user from this pod (at most `budget`).
    pub pod_cap: u32,
    /// Lease of a permit, a pod's ownership of its pending writes and a replay claim; renewed
    /// every third of it, so a dead holder's share comes back within one lease.
    pub lease: Duration,
    /// How long a request waits for a permit while PostgreSQL cannot be reached.
    pub unavailable_timeout: Duration,
    /// How long a request waits for a permit in all (`upstream.queue_timeout`).
    pub acquire_timeout: Duration,
    /// The longest delay before a context change on one pod is seen by every other.
    pub context_poll: Duration,
    /// A settled write sent again with the same key after this long is a new write, not a retry.
    pub retry_window: Duration,
}

impl fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetConfig")
            .field("url", &"<redacted>")
            .field("ca_file", &self.ca_file)
            .field("budget", &self.budget)
            .field("pod_cap", &self.pod_cap)
            .field("lease", &self.lease)
            .field("unavailable_timeout", &self.unavailable_timeout)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("context_poll", &self.context_poll)
            .field("retry_window", &self.retry_window)
            .finish()
    }
}

impl FleetConfig {
    /// Settings with the documented defaults for this database URL (tests and tools).
    pub fn new(url: impl Into<String>) -> FleetConfig {
        let d = |s: &str| humantime::parse_duration(s).unwrap_or(Duration::from_secs(30));
        FleetConfig {
            url: url.into(),
            ca_file: None,
            budget: defaults::BUDGET as u32,
            pod_cap: defaults::BUDGET as u32,
            lease: d(defaults::LEASE),
            unavailable_timeout: d(defaults::UNAVAILABLE_TIMEOUT),
            acquire_timeout: Duration::from_secs(300),
            context_poll: d(defaults::CONTEXT_POLL),
            retry_window: d(defaults::RETRY_WINDOW),
        }
    }

    /// The connection URL (or key=value string). Never log it: it may carry a password.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// Validates `[fleet]`; `None` when no URL is configured (fleet mode off). Problems are pushed
/// onto `errors`, each naming its key, like every other section.
pub fn validate(
    raw: &RawFleet,
    acquire_timeout: Duration,
    errors: &mut Vec<ConfigError>,
) -> Option<FleetConfig> {
    let mut err = |key: &str, message: String| {
        errors.push(ConfigError {
            key: format!("fleet.{key}"),
            message,
        })
    };
    let inline = raw.url.as_deref().map(str::trim).filter(|u| !u.is_empty());
    let url = match (inline, &raw.url_file) {
        (None, None) => return None,
        (Some(_), Some(_)) => {
            err(
                "url_file",
                "give fleet.url or fleet.url_file, not both".into(),
            );
            return None;
        }
        (Some(u), None) => u.to_string(),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(text) if !text.trim().is_empty() => text.trim().to_string(),
            Ok(_) => {
                err("url_file", format!("{} is empty", path.display()));
                return None;
            }
            Err(e) => {
                err("url_file", format!("cannot read {}: {e}", path.display()));
                return None;
            }
        },
    };
    // The parser's messages name the option at fault, never its value, so the password stays out.
    if let Err(e) = url.parse::<tokio_postgres::Config>() {
        err(
            "url",
            format!("not a PostgreSQL URL like postgres://user@host/db ({e})"),
        );
    }
    if let Some(p) = &raw.ca_file
        && !p.is_file()
    {
        err("ca_file", format!("{} is not a readable file", p.display()));
    }
    let budget = raw.budget.unwrap_or(defaults::BUDGET);
    if !(1..=defaults::RALLY_LIMIT).contains(&budget) {
        err(
            "budget",
            format!(
                "{budget} is outside 1..={} (Rally serves 12 concurrent requests per user)",
                defaults::RALLY_LIMIT
            ),
        );
    }
    let pod_cap = raw.pod_cap.unwrap_or(budget);
    if pod_cap == 0 || pod_cap > budget {
        err(
            "pod_cap",
            format!("{pod_cap} must be between 1 and fleet.budget ({budget})"),
        );
    }
    let mut duration = |key: &str, text: Option<&str>, default: &str| {
        let text = text.unwrap_or(default);
        match humantime::parse_duration(text) {
            Ok(d) if d >= Duration::from_millis(100) => d,
            Ok(_) => {
                err(key, format!("{text:?} is too short; use at least 100ms"));
                Duration::from_secs(1)
            }
            Err(e) => {
                err(key, format!("{text:?} is not a duration ({e})"));
                Duration::from_secs(1)
            }
        }
    };
    let lease = duration("lease", raw.lease.as_deref(), defaults::LEASE);
    let cfg = FleetConfig {
        url,
        ca_file: raw.ca_file.clone(),
        budget: budget.clamp(1, defaults::RALLY_LIMIT) as u32,
        pod_cap: pod_cap.clamp(1, budget.max(1)) as u32,
        lease,
        unavailable_timeout: duration(
            "unavailable_timeout",
            raw.unavailable_timeout.as_deref(),
            defaults::UNAVAILABLE_TIMEOUT,
        ),
        acquire_timeout,
        context_poll: duration(
            "context_poll",
            raw.context_poll.as_deref(),
            defaults::CONTEXT_POLL,
        ),
        retry_window: duration(
            "retry_window",
            raw.retry_window.as_deref(),
            defaults::RETRY_WINDOW,
        ),
    };
    if cfg.lease < Duration::from_secs(1) {
        err(
            "lease",
            "must be at least 1s: it is renewed every third of it".into(),
        );
    }
    Some(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: RawFleet) -> (Option<FleetConfig>, Vec<String>) {
        let mut e = Vec::new();
        let cfg = validate(&raw, Duration::from_secs(300), &mut e);
        (cfg, e.into_iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn off_without_a_url_and_defaults_with_one() {
        assert_eq!(check(RawFleet::default()), (None, vec![]));
        let (cfg, errors) = check(RawFleet {
            url: Some("postgres://sidecar:hunter2@db.example/fleet".into()),
            ..RawFleet::default()
        });
        assert!(errors.is_empty(), "{errors:?}");
        let cfg = cfg.expect("on");
        assert_eq!((cfg.budget, cfg.pod_cap), (10, 10));
        assert_eq!(cfg.lease, Duration::from_secs(30));
        assert!(
            !format!("{cfg:?}").contains("hunter2"),
            "Debug hides the password"
        );
    }

    #[test]
    fn the_example_states_the_defaults() {
        let text = include_str!("../../config.example.toml");
        let table: toml::Table = text.parse().expect("example parses");
        let section = table.get("fleet").cloned().expect("[fleet] documented");
        let mut raw: RawFleet = section.try_into().expect("[fleet] parses");
        assert!(raw.url.is_none(), "fleet mode is off in the example");
        raw.url = Some("postgres://db/fleet".into());
        let (from_example, errors) = check(raw);
        assert!(errors.is_empty(), "{errors:?}");
        let (defaults, _) = check(RawFleet {
            url: Some("postgres://db/fleet".into()),
            ..RawFleet::default()
        });
        assert_eq!(from_example, defaults);
        assert_eq!(from_example, Some(FleetConfig::new("postgres://db/fleet")));
    }

    #[test]
    fn url_from_a_file_and_every_error_named() {
        let path = std::env::temp_dir().join(format!("fleet-url-{}", uuid::Uuid::new_v4()));
        std::fs::write(&path, "postgres://u:secret@db/fleet\n").expect("write");
        let (cfg, errors) = check(RawFleet {
            url_file: Some(path.clone()),
            ..RawFleet::default()
        });
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(cfg.expect("on").url(), "postgres://u:secret@db/fleet");
        let _ = std::fs::remove_file(&path);

        let (_, errors) = check(RawFleet {
            url: Some("postgres://u:secret@db/fleet?sslmode=sometimes".into()),
            budget: Some(13),
            pod_cap: Some(0),
            lease: Some("soon".into()),
            ..RawFleet::default()
        });
        let keys: Vec<&str> = errors.iter().filter_map(|e| e.split(':').next()).collect();
        assert_eq!(
            keys,
            ["fleet.url", "fleet.budget", "fleet.pod_cap", "fleet.lease"]
        );
        assert!(errors.iter().all(|e| !e.contains("secret")), "{errors:?}");
    }
}
