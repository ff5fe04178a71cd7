//! What the sidecar tells its operators: Prometheus metrics ([`metrics`]), logs in the human or
//! JSON format ([`logging`]), and what logs may show of a request ([`redact`]: no credential,
//! no security token, control characters escaped).

pub mod logging;
pub mod metrics;
pub mod redact;
