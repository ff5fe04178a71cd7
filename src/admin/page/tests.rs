//! The page drawn from hand-made views: every client value escaped, the context's source
//! named, the chart drawn, and the policy admitting exactly the page's own script.

use super::*;
use crate::config::ContextConfig;
use crate::intercept::context::ContextView;
use crate::journal::BuildCounts;

const NASTY: &str = "<script>alert('x')</script>\"\n";

fn row(id: i64, state: State, build: &str) -> WriteView {
    WriteView {
        id,
        received_at: "2026-01-01T10:00:00.000Z".into(),
        updated_at: "2026-01-01T10:00:01.000Z".into(),
        operation: "create".into(),
        state,
        attempts: 1,
        last_error: (state != State::Confirmed).then(|| format!("because {NASTY}")),
        object_id: None,
        test_case: Some("1004".into()),
        formatted_id: Some("TC4".into()),
        build: Some(build.into()),
        verdict: Some(NASTY.into()),
        rally_user_name: None,
        filled: None,
        decision: None,
        latency_ms: Some(120.0 * id as f64),
        adopted: false,
    }
}

fn view() -> StatusView {
    let rows = vec![
        row(1, State::Confirmed, NASTY),
        row(2, State::Refused, NASTY),
        row(3, State::Unconfirmed, "b2"),
    ];
    let mut counts = BuildCounts {
        build: Some(NASTY.into()),
        ..BuildCounts::default()
    };
    rows.iter().for_each(|r| counts.count(r));
    StatusView {
        version: "v1".into(),
        journal: true,
        builds: vec![BuildLine::from(counts)],
        attention: rows[1..].to_vec(),
        recent: rows.clone(),
        latencies: Latencies::of(&rows),
        context: ContextSources::of(
            &ContextView::default(),
            &ContextConfig {
                build: Some(NASTY.into()),
                tester: None,
                build_env: vec!["BUILD_TAG".into()],
                build_from_env: Some(("BUILD_TAG".into(), "ci-7".into())),
            },
        ),
        readiness: "ok listener: up\n".into(),
        ..StatusView::default()
    }
}

#[test]
fn every_client_value_is_escaped() {
    let html = render(&view());
    assert!(!html.contains("<script>alert"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;\\n"));
    assert_eq!(
        html.matches("<script>").count(),
        1,
        "only the page's own script"
    );
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "no external assets"
    );
}

#[test]
fn the_context_says_where_the_build_comes_from() {
    let v = view();
    assert_eq!(v.context.source.as_deref(), Some("config context.build"));
    let html = render(&v);
    assert!(html.contains("from config context.build."), "{html}");
    assert!(html.contains("<li class=\"active\">config context.build: &lt;script"));
    assert!(html.contains("CI variable: BUILD_TAG = ci-7"));

    let put = ContextView {
        build: Some("put-1".into()),
        ..ContextView::default()
    };
    let ci_only = ContextConfig {
        build: None,
        tester: None,
        build_env: vec!["GITHUB_RUN_ID".into()],
        build_from_env: Some(("GITHUB_RUN_ID".into(), "99".into())),
    };
    let s = ContextSources::of(&put, &ci_only);
    assert_eq!(
        (s.effective.as_deref(), s.source.as_deref()),
        (Some("put-1"), Some("PUT /context"))
    );
    let s = ContextSources::of(&ContextView::default(), &ci_only);
    assert_eq!(
        (s.effective.as_deref(), s.source.as_deref()),
        (Some("99"), Some("CI variable GITHUB_RUN_ID"))
    );
    let none = ContextSources::of(
        &ContextView::default(),
        &ContextConfig {
            build: None,
            tester: None,
            build_env: vec!["BUILD_TAG".into()],
            build_from_env: None,
        },
    );
    let mut v = view();
    v.context = none;
    assert!(render(&v).contains("No build is known"));
}

#[test]
fn problems_are_marked_and_latencies_drawn() {
    let v = view();
    let html = render(&v);
    assert!(
        html.contains("<tr class=\"unconfirmed\">"),
        "unconfirmed highlighted"
    );
    assert!(html.contains("<tr class=\"refused\">"));
    assert!(
        html.contains("class=\"verdict bad\">refused</td>"),
        "the build's verdict"
    );
    assert_eq!(
        html.matches("<rect ").count(),
        3,
        "one bar per settled write"
    );
    assert_eq!(
        html.matches("<rect class=\"bad\"").count(),
        2,
        "refused and unconfirmed in red"
    );
    assert_eq!(
        (v.latencies.p50_ms, v.latencies.max_ms),
        (Some(120.0), Some(120.0))
    );
    assert!(
        html.contains("data-label=\"Test case\"><b>TC4</b>"),
        "FormattedID first"
    );
}

#[test]
fn quantiles_by_nearest_rank() {
    let rows: Vec<WriteView> = (1..=100).map(|i| row(i, State::Confirmed, "b")).collect();
    let l = Latencies::of(&rows);
    assert_eq!(
        (l.p50_ms, l.p95_ms, l.max_ms),
        (Some(6000.0), Some(11400.0), Some(12000.0))
    );
}

#[test]
fn the_policy_admits_the_script_by_its_hash() {
    let csp = content_security_policy();
    let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(SCRIPT));
    assert!(
        csp.contains(&format!("script-src 'sha256-{hash}'")),
        "{csp}"
    );
    assert!(csp.starts_with("default-src 'none'"));
    assert!(
        render(&view()).contains(&format!("<script>{SCRIPT}</script>")),
        "the hashed text is the served text"
    );
}
