//! The shared build context: a change on one pod reaches every pod within the documented bound.

use std::time::{Duration, Instant};

use rally_sidecar::fleet::context::ContextError;
use rally_sidecar::intercept::context::{ContextView, SetContext};

use super::{config, fresh, pod};

async fn seen_within(
    rx: &mut tokio::sync::watch::Receiver<ContextView>,
    bound: Duration,
    want: impl Fn(&ContextView) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    tokio::time::timeout(bound, rx.wait_for(|v| want(v)))
        .await
        .ok()
        .and_then(|r| r.ok())
        .map(|_| start.elapsed())
}

#[tokio::test]
async fn a_context_set_on_one_pod_is_seen_by_every_pod_within_the_bound() {
    let url = fresh().await;
    let cfg = config(&url);
    let mut contexts = Vec::new();
    for _ in 0..3 {
        contexts.push(pod(&cfg).await.context().await.expect("context"));
    }
    let bound = contexts[0].max_delay();
    assert!(bound <= cfg.context_poll + Duration::from_secs(10));
    let view = contexts[0]
        .set(SetContext {
            build: "build-77".into(),
            workspace: None,
            project: Some("/project/300".into()),
        })
        .await
        .expect("set");
    assert_eq!(
        view.projects.get("300").map(String::as_str),
        Some("build-77"),
        "the pod that set it sees it at once"
    );
    for c in &contexts[1..] {
        let mut rx = c.watch();
        let took = seen_within(&mut rx, bound, |v| {
            v.projects.get("300").map(String::as_str) == Some("build-77")
        })
        .await;
        tracing::info!(?took, ?bound, "context propagation");
        assert!(took.is_some(), "seen by another pod within {bound:?}");
    }
    // A global build and a clear travel the same way.
    contexts[1]
        .set(SetContext {
            build: "nightly".into(),
            workspace: None,
            project: None,
        })
        .await
        .expect("set");
    contexts[2]
        .clear(None, Some("/project/300"))
        .await
        .expect("clear");
    let mut rx = contexts[0].watch();
    let took = seen_within(&mut rx, bound, |v| {
        v.build.as_deref() == Some("nightly") && v.projects.is_empty()
    })
    .await;
    assert!(took.is_some(), "both changes reached the first pod");
    assert_eq!(contexts[0].view().build.as_deref(), Some("nightly"));
}

#[tokio::test]
async fn a_late_pod_loads_the_context_and_bad_requests_are_refused() {
    let url = fresh().await;
    let cfg = config(&url);
    let first = pod(&cfg).await.context().await.expect("context");
    first
        .set(SetContext {
            build: "b9".into(),
            workspace: Some("https://rally1.rallydev.com/slm/webservice/v2.0/workspace/200".into()),
            project: None,
        })
        .await
        .expect("set");
    let late = pod(&cfg).await.context().await.expect("context");
    assert_eq!(
        late.view().workspaces.get("200").map(String::as_str),
        Some("b9"),
        "a pod starting later loads what is set"
    );
    let both = first
        .set(SetContext {
            build: "x".into(),
            workspace: Some("200".into()),
            project: Some("300".into()),
        })
        .await;
    assert!(matches!(both, Err(ContextError::Invalid(_))));
    let empty = first
        .set(SetContext {
            build: " ".into(),
            workspace: None,
            project: None,
        })
        .await;
    assert!(matches!(empty, Err(ContextError::Invalid(_))));
}
