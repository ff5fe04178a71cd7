//! Validation: the raw shape turned into a typed [`Config`], defaults applied, every problem
//! collected (each naming its key) so an operator fixes a bad file in one round.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::*;

pub(super) fn duration(
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

pub(super) fn socket_addr(key: &str, text: &str, errors: &mut Vec<ConfigError>) -> SocketAddr {
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

pub(super) fn existing_file(key: &str, path: &Option<PathBuf>, errors: &mut Vec<ConfigError>) {
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
    /// Turns the raw shape into a `Config`, applying defaults and collecting every error.
    pub fn validate(raw: &RawConfig, ov: &Overrides) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let e = &mut errors;

        let listen = super::listen::validate(raw, ov, e);

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

        let admin = super::admin::validate(raw, ov, e);

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
        let color = match raw.log.color.as_deref().unwrap_or(defaults::LOG_COLOR) {
            "auto" => LogColor::Auto,
            "always" => LogColor::Always,
            "never" => LogColor::Never,
            other => {
                e.push(ConfigError {
                    key: "log.color".into(),
                    message: format!("{other:?} is not one of \"auto\", \"always\", \"never\""),
                });
                LogColor::Auto
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
        let sweep = SweepConfig {
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

        let fleet = super::fleet::validate(&raw.fleet, upstream.queue_timeout, e);

        if errors.is_empty() {
            Ok(Config {
                listen,
                upstream,
                admin,
                log: LogConfig {
                    format,
                    level,
                    color,
                },
                shutdown_grace,
                rewrite_refs: raw.top.rewrite_refs.unwrap_or(defaults::REWRITE_REFS),
                intercept,
                context,
                guard,
                confirm,
                journal,
                scope: ScopeConfig {
                    workspace: raw
                        .scope
                        .workspace
                        .clone()
                        .map(Text::into_string)
                        .filter(|w| !w.trim().is_empty()),
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
    let policy = ConfirmPolicy {
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
    let hold = match c.hold.as_deref().unwrap_or(defaults::HOLD) {
        "readback" => Hold::Readback,
        "ambiguous" => Hold::Ambiguous,
        other => {
            e.push(ConfigError {
                key: "confirm.hold".into(),
                message: format!("{other:?} is not \"readback\" or \"ambiguous\""),
            });
            Hold::Readback
        }
    };
    let confirm = ConfirmConfig {
        enabled: c.enabled.unwrap_or(defaults::CONFIRM_ENABLED),
        policy,
        unconfirmed_status,
        check_rollup: c.check_rollup.unwrap_or(false),
        hold,
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
        max_bytes: raw.journal.max_bytes.unwrap_or(defaults::JOURNAL_MAX_BYTES),
        rejected_retention: duration(
            "journal.rejected_retention",
            raw.journal.rejected_retention.as_deref(),
            defaults::REJECTED_RETENTION,
            e,
        ),
        rejected_body_retention: duration(
            "journal.rejected_body_retention",
            raw.journal.rejected_body_retention.as_deref(),
            defaults::REJECTED_BODY_RETENTION,
            e,
        ),
    };
    // A row holds at most one intercepted body; leave room for a few.
    let max_body = raw.intercept.max_body.unwrap_or(defaults::MAX_BODY);
    if journal.max_bytes < 4 * max_body {
        e.push(ConfigError {
            key: "journal.max_bytes".into(),
            message: format!(
                "{} bytes is too small: use at least 4 × intercept.max_body ({})",
                journal.max_bytes,
                4 * max_body
            ),
        });
    }
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
        max_buffered: raw.intercept.max_buffered.unwrap_or(defaults::MAX_BUFFERED) as usize,
    };
    if (intercept.max_buffered as u64) < max_body {
        e.push(ConfigError {
            key: "intercept.max_buffered".into(),
            message: format!(
                "{} bytes cannot hold even one body of intercept.max_body ({max_body})",
                intercept.max_buffered
            ),
        });
    }
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
        failure_cache_ttl: duration(
            "guard.failure_cache_ttl",
            raw.guard.failure_cache_ttl.as_deref(),
            defaults::FAILURE_CACHE_TTL,
            e,
        ),
        rules,
    };
    (intercept, context, guard)
}
