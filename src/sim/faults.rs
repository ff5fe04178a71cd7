//! Fault injection, deterministic under a seed: latency, dropped writes, concurrency conflicts,
//! 5xx errors, gateway timeouts after persisting (the ambiguous outcome), connection resets
//! before or after persisting, and read lag. Faults other than latency apply to TestCaseResult
//! writes (creates, updates, batch entries), which is what the sidecar's confirmation logic is
//! tested against; reads stay reliable so a test can count what was stored.

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
    /// New TestCaseResults become readable only after this long: "2s", or a range drawn per
    /// write, "0s..2s".
    pub read_lag: Option<String>,
    /// Forced outcomes for the next TestCaseResult writes, consumed one per write before any
    /// random fault: "none", "drop", "conflict", "error", "gateway_timeout", "reset_before",
    /// "reset_after". For tests that need one exact sequence.
    pub script: Vec<String>,
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
}

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
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in [
            ("drop_writes", self.drop_writes),
            ("conflict_rate", self.conflict_rate),
            ("error_rate", self.error_rate),
            ("gateway_timeout_rate", self.gateway_timeout_rate),
            ("reset_rate", self.reset_rate),
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
            scripted(s).ok_or_else(|| format!("script entry {s:?} is not one of none, drop, conflict, error, gateway_timeout, reset_before, reset_after"))?;
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

    pub(crate) fn rng_mut(&mut self) -> &mut StdRng {
        &mut self.rng
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
        if self.hit(cfg.gateway_timeout_rate) {
            return WriteFault::GatewayTimeout(if self.rng.random::<bool>() { 502 } else { 524 });
        }
        if is_create && self.hit(cfg.drop_writes) {
            return WriteFault::Drop;
        }
        WriteFault::None
    }
}

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
            read_lag: None,
            script: vec![],
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
    fn probabilities_are_checked() {
        let cfg = FaultConfig {
            drop_writes: 1.5,
            ..FaultConfig::default()
        };
        assert!(cfg.validate().is_err());
        assert!(parse_latency("5ms..1ms").is_err());
        assert_eq!(
            parse_latency("50ms").expect("ok"),
            (Duration::from_millis(50), Duration::from_millis(50))
        );
    }
}
