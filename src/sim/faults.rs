//! Fault injection, deterministic under a seed: latency, dropped writes, concurrency conflicts
//! (in the wordings Rally uses), 5xx errors, gateway timeouts after persisting (the ambiguous
//! outcome), connection resets before or after persisting, `Invalid key` for a valid key, and
//! read lag; plus named profiles (`realistic`) that set several knobs in one word. Faults other
//! than latency and read lag apply to TestCaseResult writes (creates, updates, batch entries),
//! which is what the sidecar's confirmation logic is tested against; reads stay reliable so a
//! test can count what was stored.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

/// Fault knobs; every field can be changed live through `POST /__sim/faults`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FaultConfig {
    /// Added to every request: "50ms" or a range "10ms..200ms".
    pub latency: Option<String>,
    /// Probability that a TestCaseResult create is answered as successful but never stored.
    pub drop_writes: f64,
    /// Probability of HTTP 200 + "Concurrency conflict: ..." with nothing stored.
    pub conflict_rate: f64,
    /// Probability of HTTP 500 or 503 with nothing stored.
    pub error_rate: f64,
    /// Probability of storing the write, then answering 502 or 524.
    pub gateway_timeout_rate: f64,
    /// Probability of dropping the connection without an answer, before or after storing.
    pub reset_rate: f64,
    /// Probability of HTTP 200 + `Not authorized to perform action: Invalid key` for a valid
    /// key, nothing stored: reported from real Rally under parallel writes. Opt-in.
    pub invalid_key_rate: f64,
    /// New TestCaseResults become readable only after this long: "2s", or a range drawn per
    /// write, "0s..2s".
    pub read_lag: Option<String>,
    /// Forced outcomes for the next TestCaseResult writes, consumed one per write before any
    /// random fault: "none", "drop", "conflict", "error", "gateway_timeout", "reset_before",
    /// "reset_after", "invalid_key". For tests that need one exact sequence.
    pub script: Vec<String>,
    /// Forced outcomes for the next `/batch` requests as a whole, one per batch: "none",
    /// "error" (HTTP 503 and a plain body, no entry run), "gateway_timeout" (every entry run,
    /// then HTTP 502 and a plain body: the outcome Rally's proxies give a long batch).
    pub batch_script: Vec<String>,
}

/// What happens to one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFault {
    None,
    ResetBefore,
    ResetAfter,
    Error(u16),
    Conflict,
    GatewayTimeout(u16),
    Drop,
    InvalidKey,
}

/// The named profiles `--profile` and `POST /__sim/faults {"profile": ...}` accept.
pub const PROFILES: &[&str] = &["none", "realistic"];

/// A script entry's fault.
pub fn scripted(s: &str) -> Option<WriteFault> {
    Some(match s {
        "none" => WriteFault::None,
        "drop" => WriteFault::Drop,
        "conflict" => WriteFault::Conflict,
        "error" => WriteFault::Error(500),
        "gateway_timeout" => WriteFault::GatewayTimeout(502),
        "reset_before" => WriteFault::ResetBefore,
        "reset_after" => WriteFault::ResetAfter,
        "invalid_key" => WriteFault::InvalidKey,
        _ => return None,
    })
}

/// Parses "50ms" or "10ms..200ms".
pub fn parse_latency(s: &str) -> Result<(Duration, Duration), String> {
    let parse = |t: &str| humantime::parse_duration(t.trim()).map_err(|e| format!("{t:?}: {e}"));
    match s.split_once("..") {
        Some((a, b)) => {
            let (a, b) = (parse(a)?, parse(b)?);
            if b < a {
                return Err(format!("latency range {s:?} ends before it starts"));
            }
            Ok((a, b))
        }
        None => {
            let d = parse(s)?;
            Ok((d, d))
        }
    }
}

impl FaultConfig {
    /// A named profile. `realistic`: the fault rates the soak runs with (drop 15%, conflicts 5%,
    /// 5xx 5%, gateway timeouts 2%, resets 1%, 1–5 ms latency) and reads lagging writes by up to
    /// 8 s, drawn per write, the most Broadcom support has said to expect. `none`: no faults.
    pub fn profile(name: &str) -> Result<FaultConfig, String> {
        match name {
            "none" => Ok(FaultConfig::default()),
            "realistic" => Ok(FaultConfig {
                latency: Some("1ms..5ms".into()),
                drop_writes: 0.15,
                conflict_rate: 0.05,
                error_rate: 0.05,
                gateway_timeout_rate: 0.02,
                reset_rate: 0.01,
                read_lag: Some("0s..8s".into()),
                ..FaultConfig::default()
            }),
            other => Err(format!(
                "unknown fault profile {other:?}; known: {}",
                PROFILES.join(", ")
            )),
        }
    }

    /// This profile with every knob `flags` sets (a rate above 0, a latency or read lag given)
    /// taking precedence: `--profile realistic --read-lag 2s`.
    pub fn overridden_by(self, flags: &FaultConfig) -> FaultConfig {
        let rate = |flag: f64, base: f64| if flag > 0.0 { flag } else { base };
        FaultConfig {
            latency: flags.latency.clone().or(self.latency),
            drop_writes: rate(flags.drop_writes, self.drop_writes),
            conflict_rate: rate(flags.conflict_rate, self.conflict_rate),
            error_rate: rate(flags.error_rate, self.error_rate),
            gateway_timeout_rate: rate(flags.gateway_timeout_rate, self.gateway_timeout_rate),
            reset_rate: rate(flags.reset_rate, self.reset_rate),
            invalid_key_rate: rate(flags.invalid_key_rate, self.invalid_key_rate),
            read_lag: flags.read_lag.clone().or(self.read_lag),
            script: if flags.script.is_empty() {
                self.script
            } else {
                flags.script.clone()
            },
            batch_script: if flags.batch_script.is_empty() {
                self.batch_script
            } else {
                flags.batch_script.clone()
            },
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in [
            ("drop_writes", self.drop_writes),
            ("conflict_rate", self.conflict_rate),
            ("error_rate", self.error_rate),
            ("gateway_timeout_rate", self.gateway_timeout_rate),
            ("reset_rate", self.reset_rate),
            ("invalid_key_rate", self.invalid_key_rate),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!(
                    "{name} must be a probability between 0 and 1, not {p}"
                ));
            }
        }
        if let Some(l) = &self.latency {
            parse_latency(l)?;
        }
        if let Some(l) = &self.read_lag {
            parse_latency(l).map_err(|e| format!("read_lag {e}"))?;
        }
        for s in &self.script {
            scripted(s).ok_or_else(|| format!("script entry {s:?} is not one of none, drop, conflict, error, gateway_timeout, reset_before, reset_after, invalid_key"))?;
        }
        for s in &self.batch_script {
            if !matches!(s.as_str(), "none" | "error" | "gateway_timeout") {
                return Err(format!(
                    "batch_script entry {s:?} is not one of none, error, gateway_timeout"
                ));
            }
        }
        Ok(())
    }
}

/// The seeded random source behind every fault decision.
pub struct Dice {
    rng: StdRng,
}

impl Dice {
    pub fn new(seed: u64) -> Dice {
        Dice {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    fn hit(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random::<f64>() < p
    }

    pub fn latency(&mut self, cfg: &FaultConfig) -> Duration {
        self.draw(cfg.latency.as_deref()).unwrap_or(Duration::ZERO)
    }

    /// How long a new result stays unreadable, if read lag is on.
    pub fn read_lag(&mut self, cfg: &FaultConfig) -> Option<Duration> {
        self.draw(cfg.read_lag.as_deref())
    }

    /// A duration from "50ms" (no draw) or uniformly from "10ms..200ms".
    fn draw(&mut self, spec: Option<&str>) -> Option<Duration> {
        let (lo, hi) = parse_latency(spec?).ok()?;
        if hi <= lo {
            return Some(lo);
        }
        let span = (hi - lo).as_micros() as u64;
        Some(lo + Duration::from_micros(self.rng.random_range(0..=span)))
    }

    /// Decides the fate of one TestCaseResult write request.
    pub fn write_fault(&mut self, cfg: &FaultConfig, is_create: bool) -> WriteFault {
        if self.hit(cfg.reset_rate) {
            return if self.rng.random::<bool>() {
                WriteFault::ResetBefore
            } else {
                WriteFault::ResetAfter
            };
        }
        if self.hit(cfg.error_rate) {
            return WriteFault::Error(if self.rng.random::<bool>() { 500 } else { 503 });
        }
        if self.hit(cfg.conflict_rate) {
            return WriteFault::Conflict;
        }
        if self.hit(cfg.invalid_key_rate) {
            return WriteFault::InvalidKey;
        }
        if self.hit(cfg.gateway_timeout_rate) {
            return WriteFault::GatewayTimeout(if self.rng.random::<bool>() { 502 } else { 524 });
        }
        if is_create && self.hit(cfg.drop_writes) {
            return WriteFault::Drop;
        }
        WriteFault::None
    }

    /// Which of Rally's conflict wordings a conflict uses (see [`conflict_message`]).
    pub fn conflict_variant(&mut self) -> usize {
        self.rng.random_range(0..CONFLICT_VARIANTS)
    }

    /// A value for tokens and ids.
    pub fn token(&mut self) -> u64 {
        self.rng.random::<u64>()
    }
}

const CONFLICT_VARIANTS: usize = 3;

/// Rally's wordings for a concurrency conflict (KB 77114). The conflict names a related object
/// whose row the write touches — the subscription, or the result's test case (whose roll-ups
/// every result write updates) — never the result being written.
pub fn conflict_message(variant: usize, subscription: i64, test_case: Option<i64>) -> String {
    let modified = |class: &str, oid: i64| {
        format!(
            "Concurrency conflict: [Object has been modified since being read for update in this context] - ConcurrencyConflictException : Modified since read on update : Object Class : com.f4tech.slm.domain.{class} : ObjectID : {oid}"
        )
    };
    match (variant % CONFLICT_VARIANTS, test_case) {
        (0, _) | (1, None) => modified("Subscription", subscription),
        (1, Some(tc)) => modified("TestCase", tc),
        _ => UNIT_OF_WORK.to_string(),
    }
}

/// KB 77114's other conflict text; Rally also answers it for a badly formatted Date, so on its
/// own it does not mean "retry".
pub const UNIT_OF_WORK: &str = "Could not update: Could not write changes in Unit Of Work";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_decisions() {
        let cfg = FaultConfig {
            drop_writes: 0.2,
            conflict_rate: 0.1,
            error_rate: 0.1,
            gateway_timeout_rate: 0.1,
            reset_rate: 0.1,
            latency: Some("1ms..5ms".into()),
            ..FaultConfig::default()
        };
        let run = |seed| {
            let mut d = Dice::new(seed);
            (0..200)
                .map(|_| (d.write_fault(&cfg, true), d.latency(&cfg)))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let faults = run(7);
        assert!(faults.iter().any(|(f, _)| *f == WriteFault::Drop));
        assert!(faults.iter().any(|(f, _)| *f == WriteFault::Conflict));
        assert!(
            faults
                .iter()
                .all(|(_, l)| *l >= Duration::from_millis(1) && *l <= Duration::from_millis(5))
        );
    }

    #[test]
    fn conflicts_name_a_related_object_never_the_result() {
        let all: Vec<String> = (0..3)
            .map(|v| conflict_message(v, 100, Some(1001)))
            .collect();
        assert!(all[0].ends_with("com.f4tech.slm.domain.Subscription : ObjectID : 100"));
        assert!(all[1].ends_with("com.f4tech.slm.domain.TestCase : ObjectID : 1001"));
        assert_eq!(all[2], UNIT_OF_WORK);
        assert!(all.iter().all(|m| !m.contains("TestCaseResult")));
        let mut d = Dice::new(3);
        let drawn: std::collections::BTreeSet<usize> =
            (0..60).map(|_| d.conflict_variant()).collect();
        assert_eq!(drawn.len(), 3, "every variant is drawn");
    }

    #[test]
    fn probabilities_are_checked() {
        let cfg = FaultConfig {
            drop_writes: 1.5,
            ..FaultConfig::default()
        };
        assert!(cfg.validate().is_err());
        assert!(parse_latency("5ms..1ms").is_err());
        let realistic = FaultConfig::profile("realistic").expect("known profile");
        assert!(realistic.validate().is_ok());
        assert_eq!(realistic.read_lag.as_deref(), Some("0s..8s"));
        assert!(FaultConfig::profile("chaos").is_err());
        let flags = FaultConfig {
            read_lag: Some("2s".into()),
            invalid_key_rate: 0.1,
            ..FaultConfig::default()
        };
        let mixed = realistic.clone().overridden_by(&flags);
        assert_eq!(mixed.read_lag.as_deref(), Some("2s"));
        assert_eq!(mixed.invalid_key_rate, 0.1);
        assert_eq!(
            mixed.drop_writes, realistic.drop_writes,
            "unset flags keep the profile"
        );
        assert_eq!(
            parse_latency("50ms").expect("ok"),
            (Duration::from_millis(50), Duration::from_millis(50))
        );
    }
}
