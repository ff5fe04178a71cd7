//! The fleet-wide budget: at most `budget` Rally requests in flight per Rally user across every
//! pod, because Rally's 12 concurrent requests are per user, whoever sends them. A permit is a
//! row in `fleet_permits` with a lease on the database's clock; `fleet_budget_try` counts and
//! inserts under a per-user advisory lock, so the count can never pass the budget. A permit's
//! lease is renewed every third of it while its request is open and the row is deleted when the
//! [`Permit`] is dropped; a dead pod's permits lapse with their lease.
//!
//! Fairness: each pod has at most one ticket per user in `fleet_budget_waiters`, served by
//! priority (follow-ups first, as in the local governor) and then by arrival. A pod that got a
//! permit goes to the back of the queue, so under contention pods take turns; no pod starves.
//! Locally, one driver task per user holds the ticket and hands permits to this pod's waiters
//! in the same order, never more than `pod_cap` at once. Waiters wake on the database's
//! notification of a release, on a local release, or at the next poll.
//!
//! When PostgreSQL cannot be reached no permit is granted (so the budget cannot be passed);
//! a waiter gives up with [`BudgetError::Unavailable`] once the database has been unreachable
//! for `unavailable_timeout` of its wait. Permits already held keep running on their lease.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Notify, broadcast, oneshot};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use uuid::Uuid;

/// Which queue a request waits in (the local governor's classes, and the same order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// A new request (client traffic, a first write, a guard lookup).
    Normal,
    /// The follow-up of a write already sent: served before any `Normal` request.
    FollowUp,
}

use super::{BUDGET_CHANNEL, Fleet, FleetError, Notice, Shared};

/// Why no permit was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error(
        "the fleet's database has been unreachable for {waited:?} while this request waited for a \
         Rally permit; not sending it, to stay within the fleet's budget: {cause}"
    )]
    Unavailable { waited: Duration, cause: String },
    #[error(
        "waited {waited:?} for one of the fleet's {budget} concurrent Rally requests for this user"
    )]
    Timeout { waited: Duration, budget: u32 },
}

/// The budget; cheap to clone. Use one per process: its drivers are this pod's place in the
/// fleet's queue.
#[derive(Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

struct Inner {
    fleet: Fleet,
    lanes: Mutex<HashMap<String, Arc<Lane>>>,
}

/// One Rally user's waiters and permits on this pod.
struct Lane {
    user: String,
    state: Mutex<LaneState>,
    wake: Notify,
}

#[derive(Default)]
struct LaneState {
    held: u32,
    follow_ups: VecDeque<Waiter>,
    normal: VecDeque<Waiter>,
    driving: bool,
    down_since: Option<Instant>,
}

struct Waiter {
    since: Instant,
    tx: oneshot::Sender<Result<Permit, BudgetError>>,
}

impl LaneState {
    fn prune(&mut self) {
        self.follow_ups.retain(|w| !w.tx.is_closed());
        self.normal.retain(|w| !w.tx.is_closed());
    }

    fn waiting(&self) -> usize {
        self.follow_ups.len() + self.normal.len()
    }

    fn best(&self) -> Priority {
        if self.follow_ups.is_empty() {
            Priority::Normal
        } else {
            Priority::FollowUp
        }
    }

    fn pop(&mut self) -> Option<Waiter> {
        self.follow_ups
            .pop_front()
            .or_else(|| self.normal.pop_front())
    }
}

impl Lane {
    fn lock(&self) -> std::sync::MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives a fresh permit to the first waiter still waiting; with none, the drop releases it.
    fn hand_over(&self, mut permit: Permit) {
        loop {
            let Some(w) = self.lock().pop() else { return };
            match w.tx.send(Ok(permit)) {
                Ok(()) => return,
                Err(Ok(p)) => permit = p,
                Err(Err(_)) => return,
            }
        }
    }

    /// Fails the waiters that have spent `limit` of their wait with the database unreachable.
    fn fail_stale(&self, down_since: Instant, limit: Duration, cause: &str) {
        let now = Instant::now();
        let mut failed = Vec::new();
        {
            let mut guard = self.lock();
            let st = &mut *guard;
            for q in [&mut st.follow_ups, &mut st.normal] {
                let (stale, keep): (VecDeque<_>, VecDeque<_>) = q
                    .drain(..)
                    .partition(|w| now.duration_since(w.since.max(down_since)) >= limit);
                *q = keep;
                failed.extend(stale);
            }
        }
        for w in failed {
            let _ = w.tx.send(Err(BudgetError::Unavailable {
                waited: now.duration_since(w.since),
                cause: cause.to_string(),
            }));
        }
    }
}

impl Budget {
    pub(crate) fn new(fleet: Fleet) -> Budget {
        let notices = fleet.shared.notices.subscribe();
        let rt = fleet.shared.rt.clone();
        let inner = Arc::new(Inner {
            fleet,
            lanes: Mutex::new(HashMap::new()),
        });
        rt.spawn(dispatch(Arc::downgrade(&inner), notices));
        Budget { inner }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.inner.fleet.shared
    }

    fn lane(&self, user: &str) -> Arc<Lane> {
        let mut lanes = self.inner.lanes.lock().unwrap_or_else(|p| p.into_inner());
        if lanes.len() > 10_000 {
            lanes.retain(|_, l| {
                let st = l.lock();
                st.held > 0 || st.driving
            });
        }
        lanes
            .entry(user.to_string())
            .or_insert_with(|| {
                Arc::new(Lane {
                    user: user.to_string(),
                    state: Mutex::new(LaneState::default()),
                    wake: Notify::new(),
                })
            })
            .clone()
    }

    /// Waits for a permit to send one request to Rally as `user` (the Rally user, or until it
    /// is resolved, the credential's digest). The permit renews itself and is released when
    /// dropped.
    pub async fn acquire(&self, user: &str, class: Priority) -> Result<Permit, BudgetError> {
        let lane = self.lane(user);
        let (tx, rx) = oneshot::channel();
        let start = Instant::now();
        let spawn = {
            let mut st = lane.lock();
            let w = Waiter { since: start, tx };
            match class {
                Priority::FollowUp => st.follow_ups.push_back(w),
                Priority::Normal => st.normal.push_back(w),
            }
            !std::mem::replace(&mut st.driving, true)
        };
        if spawn {
            tokio::spawn(drive(self.inner.clone(), lane.clone()));
        } else {
            lane.wake.notify_one();
        }
        let cfg = &self.shared().cfg;
        match tokio::time::timeout(cfg.acquire_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(BudgetError::Unavailable {
                waited: start.elapsed(),
                cause: "the fleet is shutting down".into(),
            }),
            Err(_) => Err(BudgetError::Timeout {
                waited: start.elapsed(),
                budget: cfg.budget,
            }),
        }
    }

    /// Requests of this pod waiting for a permit, across users (for metrics).
    pub fn waiting(&self) -> usize {
        let lanes = self.inner.lanes.lock().unwrap_or_else(|p| p.into_inner());
        lanes.values().map(|l| l.lock().waiting()).sum()
    }

    /// Permits this pod holds for `user` now.
    pub fn held_here(&self, user: &str) -> u32 {
        self.lane(user).lock().held
    }

    /// Live permits for `user` across the fleet, as the database counts them.
    pub async fn held_in_fleet(&self, user: &str) -> Result<u32, FleetError> {
        let user = user.to_string();
        self.shared()
            .with_client(|c| async move {
                let row = c
                    .query_one(
                        "SELECT count(*) FROM fleet_permits WHERE lease_until >= now()
                           AND (rally_user = $1
                                OR rally_user IN (SELECT lane FROM fleet_lanes WHERE rally_user = $1))",
                        &[&user],
                    )
                    .await?;
                Ok(row.get::<_, i64>(0) as u32)
            })
            .await
    }
}

impl Budget {
    /// Records that the credential lane `lane` (`credential:<digest>`) belongs to the Rally
    /// user's lane `user` (`user:<ref>`), fleet-wide. Only once this has succeeded may a pod
    /// ask for that credential's permits under the user's lane: until then the other pods
    /// still count it under the credential's (migration 0002).
    pub async fn learn(&self, lane: &str, user: &str) -> Result<(), FleetError> {
        let (lane, user) = (lane.to_string(), user.to_string());
        self.shared()
            .with_client(|c| async move {
                c.execute("SELECT fleet_learn_lane($1, $2)", &[&lane, &user])
                    .await
            })
            .await
            .map(|_| ())
    }
}

/// Wakes the lanes a notification is about.
async fn dispatch(inner: Weak<Inner>, mut notices: broadcast::Receiver<Notice>) {
    loop {
        let notice = notices.recv().await;
        let Some(inner) = inner.upgrade() else { return };
        let lanes = inner.lanes.lock().unwrap_or_else(|p| p.into_inner());
        match notice {
            Ok(Notice::Budget(user)) => {
                if let Some(l) = lanes.get(&user) {
                    l.wake.notify_one();
                }
            }
            Ok(Notice::Context) => {}
            Ok(Notice::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                lanes.values().for_each(|l| l.wake.notify_one());
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

enum Step {
    Exit,
    Wait,
    Try(Priority),
}

/// The pod's head of line for one user: takes permits from the database and hands them out.
async fn drive(inner: Arc<Inner>, lane: Arc<Lane>) {
    let shared = inner.fleet.shared.clone();
    let ticket = Uuid::new_v4();
    let mut queued = false;
    loop {
        let step = {
            let mut st = lane.lock();
            st.prune();
            if shared.stop.is_cancelled() {
                st.driving = false;
                let st = &mut *st;
                for w in st.follow_ups.drain(..).chain(st.normal.drain(..)) {
                    let _ = w.tx.send(Err(BudgetError::Unavailable {
                        waited: w.since.elapsed(),
                        cause: "the fleet is shutting down".into(),
                    }));
                }
                Step::Exit
            } else if st.waiting() == 0 {
                st.driving = false;
                Step::Exit
            } else if st.held >= shared.cfg.pod_cap {
                Step::Wait
            } else {
                Step::Try(st.best())
            }
        };
        match step {
            Step::Exit => {
                if queued {
                    leave_queue(&shared, ticket).await;
                }
                return;
            }
            Step::Wait => {
                // Not trying: a ticket left queued would hold the other pods back.
                if std::mem::take(&mut queued) {
                    leave_queue(&shared, ticket).await;
                }
            }
            Step::Try(priority) => {
                let sent = Instant::now();
                match try_take(&shared, &lane.user, ticket, priority).await {
                    Ok(Some(token)) => {
                        queued = false;
                        lane.lock().down_since = None;
                        let permit = Permit::start(shared.clone(), lane.clone(), token, sent);
                        lane.hand_over(permit);
                        continue;
                    }
                    Ok(None) => {
                        queued = true;
                        lane.lock().down_since = None;
                    }
                    Err(e) => {
                        queued = true;
                        let since = *lane.lock().down_since.get_or_insert(sent);
                        lane.fail_stale(since, shared.cfg.unavailable_timeout, &e.to_string());
                    }
                }
            }
        }
        tokio::select! {
            _ = lane.wake.notified() => {}
            _ = tokio::time::sleep(poll_interval(&shared)) => {}
            _ = shared.stop.cancelled() => {}
        }
    }
}

/// How often a waiting driver looks again without a notification: often enough to renew its
/// ticket, jittered so pods do not poll in step.
fn poll_interval(shared: &Shared) -> Duration {
    let base = (shared.cfg.lease / 4).min(Duration::from_millis(250));
    base.mul_f64(0.5 + rand::random::<f64>())
}

/// The ticket's lease: a few polls, so a dead pod stops holding the queue within seconds.
fn ticket_lease(shared: &Shared) -> f64 {
    shared.cfg.lease.min(Duration::from_secs(3)).as_secs_f64()
}

async fn try_take(
    shared: &Shared,
    user: &str,
    ticket: Uuid,
    priority: Priority,
) -> Result<Option<Uuid>, FleetError> {
    let args = (
        user.to_string(),
        shared.pod_id.clone(),
        match priority {
            Priority::FollowUp => 1i16,
            Priority::Normal => 0i16,
        },
        shared.cfg.budget as i32,
        shared.lease_secs(),
        ticket_lease(shared),
    );
    shared
        .with_client(|c| async move {
            let (user, pod, prio, budget, lease, tlease) = args;
            let row = c
                .query_one(
                    "SELECT fleet_budget_try($1, $2, $3, $4, $5, $6, $7)",
                    &[&user, &pod, &ticket, &prio, &budget, &lease, &tlease],
                )
                .await?;
            Ok(row.get::<_, Option<Uuid>>(0))
        })
        .await
}

async fn leave_queue(shared: &Shared, ticket: Uuid) {
    let _ = shared
        .with_client(|c| async move {
            c.execute(
                "DELETE FROM fleet_budget_waiters WHERE ticket = $1",
                &[&ticket],
            )
            .await
        })
        .await;
}

/// Leave to send one request to Rally. Renews its lease in the background while held; dropping
/// it releases it. If renewal fails for a whole lease, [`Permit::lost`] fires: the fleet may
/// have given the slot to another pod, and the request should be abandoned if it can be.
pub struct Permit {
    token: Uuid,
    lane: Arc<Lane>,
    shared: Arc<Shared>,
    lost: CancellationToken,
    renewer: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("user", &self.lane.user)
            .field("lost", &self.lost.is_cancelled())
            .finish()
    }
}

impl Permit {
    /// A permit granted by a try sent at `sent`: its lease runs from no earlier than that.
    fn start(shared: Arc<Shared>, lane: Arc<Lane>, token: Uuid, sent: Instant) -> Permit {
        lane.lock().held += 1;
        let lost = CancellationToken::new();
        let renewer = tokio::spawn(renew(shared.clone(), token, lost.clone(), sent));
        Permit {
            token,
            lane,
            shared,
            lost,
            renewer,
        }
    }

    /// The Rally user this permit is for.
    pub fn user(&self) -> &str {
        &self.lane.user
    }

    /// Whether the permit may no longer be counted by the fleet (see [`Permit::lost`]).
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Resolves when the permit can no longer be guaranteed: its row is gone, or no renewal
    /// has succeeded for a whole lease (measured from sending, on this pod's monotonic clock,
    /// so it never outlives the database's lease).
    pub fn lost(&self) -> WaitForCancellationFuture<'_> {
        self.lost.cancelled()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.renewer.abort();
        self.lane.lock().held -= 1;
        self.lane.wake.notify_one();
        let (shared, token) = (self.shared.clone(), self.token);
        // Outside a runtime (process exit) the lease lapses on its own.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(release(shared, token));
        }
    }
}

async fn renew(shared: Arc<Shared>, token: Uuid, lost: CancellationToken, sent: Instant) {
    let lease = shared.cfg.lease;
    let mut valid_until = sent + lease;
    let mut next = sent + shared.renew_every();
    loop {
        tokio::time::sleep_until(next.min(valid_until)).await;
        if Instant::now() >= valid_until {
            lost.cancel();
        }
        let sent = Instant::now();
        let secs = shared.lease_secs();
        let r = shared
            .with_client(|c| async move {
                c.execute(
                    "UPDATE fleet_permits SET lease_until = now() + $2 * interval '1 second'
                     WHERE token = $1",
                    &[&token, &secs],
                )
                .await
            })
            .await;
        match r {
            Ok(1) => {
                valid_until = sent + lease;
                next = sent + shared.renew_every();
            }
            Ok(_) => {
                tracing::warn!("fleet: a permit's lease lapsed while its request was open");
                lost.cancel();
                return;
            }
            // Try again soon; the lease still runs.
            Err(_) => next = Instant::now() + Duration::from_millis(250),
        }
    }
}

async fn release(shared: Arc<Shared>, token: Uuid) {
    let give_up = Instant::now() + shared.cfg.lease;
    let mut pause = Duration::from_millis(100);
    loop {
        let r = shared
            .with_client(|c| async move {
                c.execute(
                    "WITH d AS (DELETE FROM fleet_permits WHERE token = $1 RETURNING rally_user)
                     SELECT pg_notify($2, rally_user) FROM d",
                    &[&token, &BUDGET_CHANNEL],
                )
                .await
            })
            .await;
        // Once the lease has lapsed the row no longer counts: nothing left to do.
        if r.is_ok() || Instant::now() + pause >= give_up {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}
