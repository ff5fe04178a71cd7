//! What the sidecar last saw of Rally: the last answer, the last failure and its cause, and
//! since when no connection can be made. Every request to Rally reports here; `/readyz` and
//! the status page read it.

use std::sync::Mutex;

/// (last answer, last failure with its cause, unreachable since and why).
#[derive(Default)]
struct Seen {
    answer: Option<std::time::SystemTime>,
    failure: Option<(std::time::SystemTime, String)>,
    unreachable: Option<(std::time::SystemTime, String)>,
}

/// What the sidecar last saw of the upstream, for the status page and `/readyz`.
#[derive(Default)]
pub struct UpstreamHealth {
    state: Mutex<Seen>,
}

impl UpstreamHealth {
    /// The upstream answered (any status): it is reachable.
    pub fn ok(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.answer = Some(std::time::SystemTime::now());
            s.unreachable = None;
        }
    }

    /// A request failed after connecting (reset, timeout): the upstream may still be up.
    pub fn failed(&self, why: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.failure = Some((std::time::SystemTime::now(), why.to_string()));
        }
    }

    /// No connection could be made: the upstream is down until it answers again.
    pub fn unreachable(&self, why: &str) {
        if let Ok(mut s) = self.state.lock() {
            let now = std::time::SystemTime::now();
            s.failure = Some((now, why.to_string()));
            let since = s.unreachable.as_ref().map(|(t, _)| *t).unwrap_or(now);
            s.unreachable = Some((since, why.to_string()));
        }
    }

    /// Since when and why the upstream cannot be reached, if it cannot.
    pub fn unreachable_since(&self) -> Option<(std::time::SystemTime, String)> {
        self.state.lock().ok().and_then(|s| s.unreachable.clone())
    }

    /// (last answer, last failure and its cause), as text.
    pub fn describe(&self) -> (String, String) {
        let fmt =
            |t: std::time::SystemTime| crate::wsapi::format_date(time::OffsetDateTime::from(t));
        let Ok(s) = self.state.lock() else {
            return (String::new(), String::new());
        };
        (
            s.answer.map(fmt).unwrap_or_else(|| "none yet".into()),
            s.failure
                .as_ref()
                .map(|(t, w)| format!("{} — {w}", fmt(*t)))
                .unwrap_or_else(|| "none".into()),
        )
    }

    /// The `upstream` line of `/readyz`: (ready, detail).
    pub fn readiness(&self) -> (bool, String) {
        match self.unreachable_since() {
            None => (true, "reachable (or not yet tried)".into()),
            Some((since, why)) => (
                false,
                format!(
                    "unreachable since {}: {why}",
                    crate::wsapi::format_date(time::OffsetDateTime::from(since))
                ),
            ),
        }
    }
}
