//! Confirmation: the client's answer to a TestCaseResult write is held until the sidecar knows
//! the result's fate, and the client is told the truth (docs/confirmation.md).
//!
//! The state machine in [`confirm`] works against the [`Upstream`] trait — create, read back,
//! find by fingerprint — so it is tested on paused time with a scripted upstream; the real
//! implementation is in `confirm::rally`. The pieces it is made of are pure:
//! [`classify_answer`] (what an answer means), [`Expected::compare`] (is the stored result the
//! one sent), [`fingerprint_query`] (how to find it without an idempotency key), and
//! [`backoff`] (exponential, full jitter, capped, honouring Retry-After).
//!
//! Invariant: a result is created again only after a fingerprint query found nothing, so a
//! write that Rally stored but did not acknowledge is adopted, not duplicated.

pub mod rally;
mod rules;

use std::time::Duration;

pub use crate::rally::lookups::ReadBack;

pub use crate::config::ConfirmPolicy as Policy;

pub use rules::{Answer, Expected, backoff, classify_answer, fingerprint_query, quote};

/// Rally's answer to one attempt, as received.
#[derive(Debug, Clone, PartialEq)]
pub struct RawAnswer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
}

/// What the sidecar can do against Rally for one write (with the caller's credential).
#[async_trait::async_trait]
pub trait Upstream: Send + Sync {
    /// Sends the write once. Returns the classification and Rally's raw answer
    /// (status, body bytes) when there was one.
    async fn submit(&self) -> (Answer, Option<RawAnswer>);
    /// Reads a result back. `last` marks the last read of a read-back window, which must be
    /// by ObjectID (what decides that a result is missing); earlier ones may be coalesced.
    async fn read(&self, object_id: i64, last: bool) -> ReadBack;
    /// Looks for the result by its fingerprint; the ObjectIDs found.
    async fn find(&self, query: &str) -> Result<Vec<i64>, String>;
}

/// The fate of a write.
#[derive(Debug, Clone, PartialEq)]
pub enum Fate {
    /// Read back and equal to what was sent. `answer` is Rally's accepting answer, if the
    /// winning attempt got one (an adopted result has none).
    Confirmed {
        object_id: i64,
        attempts: u32,
        adopted: bool,
        answer: Option<RawAnswer>,
    },
    /// Refused by Rally for good: relay its answer.
    Rejected {
        attempts: u32,
        cause: String,
        answer: Option<RawAnswer>,
    },
    /// Not known in time.
    Unconfirmed {
        attempts: u32,
        cause: String,
        object_id: Option<i64>,
    },
}

impl Fate {
    /// Attempts made, whatever the fate.
    pub fn attempts(&self) -> u32 {
        match self {
            Fate::Confirmed { attempts, .. }
            | Fate::Rejected { attempts, .. }
            | Fate::Unconfirmed { attempts, .. } => *attempts,
        }
    }
}

/// A create may be looked for by fingerprint and written again; an update is only retried
/// and read back (re-applying the same change is harmless), never looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Create,
    Update,
}

/// Drives one write to its fate. `jitter` yields values in [0, 1); `give_up` resolves when the
/// sidecar must answer now (shutdown): whatever the write is doing then — waiting to retry,
/// writing, reading back, searching — it ends unconfirmed at once, with what is known so far.
pub async fn confirm<U: Upstream>(
    up: &U,
    kind: Kind,
    look_first: bool,
    expected: &Expected,
    policy: &Policy,
    jitter: impl FnMut() -> f64 + Send,
    give_up: impl std::future::Future<Output = ()> + Send,
) -> Fate {
    confirm_with(
        up, kind, look_first, expected, policy, jitter, give_up, None,
    )
    .await
}

/// [`confirm`], telling `acknowledged` the moment Rally first acknowledges a create cleanly
/// (an ObjectID and no Errors) — before the read-back — so that `confirm.hold = "ambiguous"`
/// can answer the client then while the state machine goes on to its fate.
#[allow(clippy::too_many_arguments)]
pub async fn confirm_with<U: Upstream>(
    up: &U,
    kind: Kind,
    look_first: bool,
    expected: &Expected,
    policy: &Policy,
    jitter: impl FnMut() -> f64 + Send,
    give_up: impl std::future::Future<Output = ()> + Send,
    acknowledged: Option<tokio::sync::oneshot::Sender<RawAnswer>>,
) -> Fate {
    let progress = Progress {
        acknowledged: std::sync::Mutex::new(acknowledged),
        ..Progress::default()
    };
    // `confirm.timeout` bounds the whole hold, whatever is in flight when it is reached (a
    // submit, a read-back or a search can each take up to `upstream.response_timeout`).
    let bound = tokio::time::sleep(policy.timeout);
    tokio::select! {
        biased;
        fate = drive(up, kind, look_first, expected, policy, jitter, &progress) => fate,
        _ = give_up => progress.interrupted("the sidecar is shutting down"),
        _ = bound => progress.interrupted(&format!(
            "confirm.timeout ({}) reached",
            humantime::format_duration(policy.timeout)
        )),
    }
}

/// What a write has got to, kept for the answer given when the sidecar must stop waiting.
#[derive(Default)]
struct Progress {
    attempts: std::sync::atomic::AtomicU32,
    /// The ObjectID Rally acknowledged, 0 when none yet.
    object_id: std::sync::atomic::AtomicI64,
    cause: std::sync::Mutex<String>,
    /// Told of the first clean acknowledgement of a create, once.
    acknowledged: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<RawAnswer>>>,
}

impl Progress {
    fn note(&self, attempts: u32, cause: &str) {
        use std::sync::atomic::Ordering::Relaxed;
        self.attempts.store(attempts, Relaxed);
        if let Ok(mut c) = self.cause.lock() {
            c.clear();
            c.push_str(cause);
        }
    }

    fn interrupted(&self, why: &str) -> Fate {
        use std::sync::atomic::Ordering::Relaxed;
        let cause = self.cause.lock().map(|c| c.clone()).unwrap_or_default();
        let id = self.object_id.load(Relaxed);
        Fate::Unconfirmed {
            attempts: self.attempts.load(Relaxed),
            cause: if cause.is_empty() || cause == "no attempt made" {
                why.into()
            } else {
                format!("{cause}; {why}")
            },
            object_id: (id != 0).then_some(id),
        }
    }
}

/// [`confirm`] without the give-up: reports its progress as it goes.
async fn drive<U: Upstream>(
    up: &U,
    kind: Kind,
    look_first: bool,
    expected: &Expected,
    policy: &Policy,
    mut jitter: impl FnMut() -> f64 + Send,
    progress: &Progress,
) -> Fate {
    let deadline = tokio::time::Instant::now() + policy.timeout;
    let mut attempts = 0u32;
    let mut cause = String::from("no attempt made");
    // After an ambiguous answer or a lost acceptance, look before writing again. After an
    // ambiguous answer the search is repeated for the whole read-back window: a result Rally
    // stored may take that long to become visible, and writing again before then would
    // duplicate it. After a lost acceptance the window has already been waited out.
    let mut must_look = look_first;
    let mut look_window = if look_first {
        Duration::ZERO
    } else {
        policy.readback_window
    };
    let query = fingerprint_query(expected);
    loop {
        if attempts > policy.max_attempts {
            return Fate::Unconfirmed {
                attempts,
                cause,
                object_id: None,
            };
        }
        if must_look && matches!(kind, Kind::Create) {
            let Some(q) = &query else {
                return Fate::Unconfirmed {
                    attempts,
                    cause: format!(
                        "{cause}; not retried: the result's values cannot be searched for safely"
                    ),
                    object_id: None,
                };
            };
            match find_until(up, q, look_window, policy, deadline, &mut jitter).await {
                Ok(found) if !found.is_empty() => {
                    let object_id = found.iter().copied().min().unwrap_or(found[0]);
                    tracing::info!(
                        object_id,
                        "fingerprint hit: adopting the stored result instead of writing it again"
                    );
                    return match read_until(up, object_id, expected, policy, deadline, &mut jitter)
                        .await
                    {
                        Ok(()) => Fate::Confirmed {
                            object_id,
                            attempts,
                            adopted: true,
                            answer: None,
                        },
                        Err(unread) => Fate::Unconfirmed {
                            attempts,
                            cause: unread.to_string(),
                            object_id: Some(object_id),
                        },
                    };
                }
                Ok(_) => {}
                Err(e) => {
                    return Fate::Unconfirmed {
                        attempts,
                        cause: format!("{cause}; the fingerprint check failed: {e}"),
                        object_id: None,
                    };
                }
            }
        }
        attempts += 1;
        progress.note(attempts, &cause);
        let (answer, raw) = up.submit().await;
        let retry_after = match answer {
            Answer::Accepted { object_id } => {
                progress
                    .object_id
                    .store(object_id, std::sync::atomic::Ordering::Relaxed);
                progress.note(attempts, "acknowledged, not yet read back");
                if let (Kind::Create, Some(raw)) = (kind, &raw)
                    && let Some(tx) = progress.acknowledged.lock().ok().and_then(|mut t| t.take())
                {
                    let _ = tx.send(raw.clone());
                }
                match read_until(up, object_id, expected, policy, deadline, &mut jitter).await {
                    Ok(()) => {
                        return Fate::Confirmed {
                            object_id,
                            attempts,
                            adopted: false,
                            answer: raw,
                        };
                    }
                    Err(unread @ Unread::Missing(_)) if matches!(kind, Kind::Create) => {
                        // Acknowledged but never stored (or lost): look, then write again.
                        progress
                            .object_id
                            .store(0, std::sync::atomic::Ordering::Relaxed);
                        cause = unread.to_string();
                        must_look = true;
                        look_window = Duration::ZERO;
                        None
                    }
                    Err(unread) => {
                        return Fate::Unconfirmed {
                            attempts,
                            cause: unread.to_string(),
                            object_id: Some(object_id),
                        };
                    }
                }
            }
            Answer::Final { cause } => {
                return Fate::Rejected {
                    attempts,
                    cause,
                    answer: raw,
                };
            }
            Answer::Retry {
                cause: c,
                retry_after,
            } if c.contains("Unit Of Work") && !expected.date_is_wellformed() => {
                // Rally gives the same text for a badly formatted Date as for a conflict
                // (KB 77114): with a Date that cannot be right, retrying would only repeat it.
                let _ = retry_after;
                return Fate::Rejected {
                    attempts,
                    cause: format!(
                        "{c} (the Date sent, {:?}, is not an ISO 8601 date)",
                        expected.date.as_deref().unwrap_or("")
                    ),
                    answer: raw,
                };
            }
            Answer::Retry {
                cause: c,
                retry_after,
            } => {
                cause = c;
                retry_after
            }
            Answer::Ambiguous {
                cause: c,
                retry_after,
            } => {
                cause = c;
                must_look = true;
                look_window = policy.readback_window;
                retry_after
            }
        };
        if attempts > policy.max_attempts {
            continue;
        }
        let wait = backoff(policy, attempts, jitter(), retry_after);
        if tokio::time::Instant::now() + wait >= deadline {
            return Fate::Unconfirmed {
                attempts,
                cause: format!("{cause} (confirm.timeout reached)"),
                object_id: None,
            };
        }
        progress.note(attempts, &cause);
        tokio::time::sleep(wait).await;
    }
}

/// Repeats the fingerprint search until something is found or `window` has passed.
async fn find_until<U: Upstream>(
    up: &U,
    query: &str,
    window: Duration,
    policy: &Policy,
    deadline: tokio::time::Instant,
    jitter: &mut (impl FnMut() -> f64 + Send),
) -> Result<Vec<i64>, String> {
    let end = (tokio::time::Instant::now() + window).min(deadline);
    let mut n = 0;
    loop {
        n += 1;
        let found = up.find(query).await?;
        let now = tokio::time::Instant::now();
        if !found.is_empty() || now >= end {
            return Ok(found);
        }
        // The last search is made at the window's end, not one backoff step before it.
        let wait = backoff(policy, n, 0.5 + jitter() / 2.0, None).min(Duration::from_secs(2));
        tokio::time::sleep(wait.min(end - now)).await;
    }
}

/// Why a read-back window ended without the result as sent.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
enum Unread {
    /// Acknowledged, never readable: presumed lost (a create is then looked for and written
    /// again).
    #[error("not readable: result {0} was acknowledged but cannot be read")]
    Missing(i64),
    /// Readable, but not what was sent.
    #[error("read back differs: {0}")]
    Differs(String),
    /// The reads themselves failed.
    #[error("read back failed: {0}")]
    Failed(String),
}

/// Polls the read-back until it matches, differs for good, or the window ends. The last read
/// is made at the window's end, not one backoff step before it, and by ObjectID.
async fn read_until<U: Upstream>(
    up: &U,
    object_id: i64,
    expected: &Expected,
    policy: &Policy,
    deadline: tokio::time::Instant,
    jitter: &mut (impl FnMut() -> f64 + Send),
) -> Result<(), Unread> {
    let window_end = (tokio::time::Instant::now() + policy.readback_window).min(deadline);
    let mut n = 0;
    loop {
        n += 1;
        let last = tokio::time::Instant::now() >= window_end;
        let missing = match up.read(object_id, last).await {
            ReadBack::Found(stored) => match expected.compare(&stored) {
                None => return Ok(()),
                Some(diff) => Unread::Differs(diff),
            },
            ReadBack::NotFound => Unread::Missing(object_id),
            ReadBack::Failed(e) => Unread::Failed(e),
        };
        if last {
            return Err(missing);
        }
        let now = tokio::time::Instant::now();
        if now >= window_end {
            // The window ended during this read: one more, the last, by ObjectID.
            continue;
        }
        let wait = backoff(policy, n, 0.5 + jitter() / 2.0, None).min(Duration::from_secs(2));
        tokio::time::sleep(wait.min(window_end - now)).await;
    }
}

#[cfg(test)]
mod tests;
