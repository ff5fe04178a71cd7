//! The shared build context: what `PUT /context` sets on any pod is stored in `fleet_context`
//! and seen by every pod within [`SharedContext::max_delay`] — `context_poll` plus one round
//! trip. A change bumps a version and notifies; each pod reloads on the notification and, should
//! one be missed, when its poll of the version sees it change. Pods apply the snapshots from
//! [`SharedContext::watch`] to their local `BuildContext`, so lookups stay in memory.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use super::{CONTEXT_CHANNEL, Fleet, FleetError, Notice, Shared};
use crate::config::context::{ContextView, SetContext};
use crate::wsapi::scope_id;

/// Why a context change was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// The request was wrong (answer 400).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Fleet(#[from] FleetError),
}

/// The fleet's build context; cheap to clone.
#[derive(Clone)]
pub struct SharedContext {
    fleet: Fleet,
    view: watch::Receiver<ContextView>,
    publish: Arc<watch::Sender<ContextView>>,
}

const GLOBAL: &str = "";

/// One change to the shared context.
enum Change {
    Set {
        scope: &'static str,
        id: String,
        build: String,
    },
    Clear(Option<(&'static str, String)>),
}

impl SharedContext {
    pub(crate) async fn start(fleet: Fleet) -> Result<SharedContext, FleetError> {
        let (version, view) = load(&fleet.shared).await?;
        let (tx, rx) = watch::channel(view);
        let publish = Arc::new(tx);
        tokio::spawn(follow(
            fleet.shared.clone(),
            Arc::downgrade(&publish),
            fleet.shared.notices.subscribe(),
            version,
        ));
        Ok(SharedContext {
            fleet,
            view: rx,
            publish,
        })
    }

    /// The longest time between a change on one pod and every pod seeing it, while the
    /// database is reachable.
    pub fn max_delay(&self) -> Duration {
        self.fleet.shared.cfg.context_poll + self.fleet.shared.io_timeout
    }

    /// The latest context this pod knows.
    pub fn view(&self) -> ContextView {
        self.view.borrow().clone()
    }

    /// Snapshots as they change, to apply to the local `BuildContext`.
    pub fn watch(&self) -> watch::Receiver<ContextView> {
        self.view.clone()
    }

    /// `PUT /context` for the whole fleet; the same rules as the local context.
    pub async fn set(&self, c: SetContext) -> Result<ContextView, ContextError> {
        if c.build.trim().is_empty() {
            return Err(ContextError::Invalid("build must not be empty".into()));
        }
        let (scope, id) = match (c.workspace.as_deref(), c.project.as_deref()) {
            (Some(_), Some(_)) => {
                return Err(ContextError::Invalid(
                    "give a workspace or a project, not both".into(),
                ));
            }
            (Some(w), None) => (
                "workspace",
                scope_id(w).ok_or_else(|| {
                    ContextError::Invalid(format!("{w:?} is not a workspace ref"))
                })?,
            ),
            (None, Some(p)) => (
                "project",
                scope_id(p)
                    .ok_or_else(|| ContextError::Invalid(format!("{p:?} is not a project ref")))?,
            ),
            (None, None) => (GLOBAL, String::new()),
        };
        self.change(Change::Set {
            scope,
            id,
            build: c.build,
        })
        .await
    }

    /// `DELETE /context` for the whole fleet: one scope, or everything.
    pub async fn clear(
        &self,
        workspace: Option<&str>,
        project: Option<&str>,
    ) -> Result<ContextView, ContextError> {
        let target = match (workspace.and_then(scope_id), project.and_then(scope_id)) {
            (Some(w), _) => Some(("workspace", w)),
            (_, Some(p)) => Some(("project", p)),
            _ => None,
        };
        self.change(Change::Clear(target)).await
    }

    /// Applies one change, bumps the version and notifies, in one transaction; then publishes
    /// the new snapshot here at once.
    async fn change(&self, change: Change) -> Result<ContextView, ContextError> {
        self.fleet
            .shared
            .with_client(|mut c| async move {
                let tx = c.transaction().await?;
                match change {
                    Change::Set { scope, id, build } => {
                        tx.execute(
                            "INSERT INTO fleet_context (scope, scope_id, build) VALUES ($1, $2, $3)
                             ON CONFLICT (scope, scope_id)
                             DO UPDATE SET build = EXCLUDED.build, updated_at = now()",
                            &[&scope, &id, &build],
                        )
                        .await?;
                    }
                    Change::Clear(Some((scope, id))) => {
                        tx.execute(
                            "DELETE FROM fleet_context WHERE scope = $1 AND scope_id = $2",
                            &[&scope, &id],
                        )
                        .await?;
                    }
                    Change::Clear(None) => {
                        tx.execute("DELETE FROM fleet_context", &[]).await?;
                    }
                }
                tx.execute(
                    "UPDATE fleet_context_version SET version = version + 1",
                    &[],
                )
                .await?;
                tx.execute("SELECT pg_notify($1, '')", &[&CONTEXT_CHANNEL])
                    .await?;
                tx.commit().await
            })
            .await?;
        let (_, view) = load(&self.fleet.shared).await?;
        self.publish.send_replace(view.clone());
        Ok(view)
    }
}

/// The version and the whole context, read in one statement (one snapshot).
async fn load(shared: &Shared) -> Result<(i64, ContextView), FleetError> {
    let rows = shared
        .with_client(|c| async move {
            c.query(
                "SELECT v.version, c.scope, c.scope_id, c.build
                 FROM fleet_context_version v LEFT JOIN fleet_context c ON true",
                &[],
            )
            .await
        })
        .await?;
    let mut version = 0;
    let mut view = ContextView::default();
    for r in &rows {
        version = r.get(0);
        let (Some(scope), Some(id), Some(build)) = (
            r.get::<_, Option<String>>(1),
            r.get::<_, Option<String>>(2),
            r.get::<_, Option<String>>(3),
        ) else {
            continue;
        };
        match scope.as_str() {
            "workspace" => {
                view.workspaces.insert(id, build);
            }
            "project" => {
                view.projects.insert(id, build);
            }
            _ => view.build = Some(build),
        }
    }
    Ok((version, view))
}

async fn version(shared: &Shared) -> Result<i64, FleetError> {
    shared
        .with_client(|c| async move {
            let r = c
                .query_one("SELECT version FROM fleet_context_version", &[])
                .await?;
            Ok(r.get(0))
        })
        .await
}

/// Reloads on notifications and on a changed version at each poll, until every handle is gone.
async fn follow(
    shared: Arc<Shared>,
    publish: std::sync::Weak<watch::Sender<ContextView>>,
    mut notices: broadcast::Receiver<Notice>,
    mut seen: i64,
) {
    loop {
        let notified = tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tokio::time::sleep(shared.cfg.context_poll) => false,
            n = notices.recv() => !matches!(n, Ok(Notice::Budget(_))),
        };
        let Some(publish) = publish.upgrade() else {
            return;
        };
        let stale = notified || version(&shared).await.is_ok_and(|v| v != seen);
        if stale && let Ok((v, view)) = load(&shared).await {
            seen = v;
            publish.send_replace(view);
        }
    }
}
