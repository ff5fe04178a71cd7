//! The summary's verdicts, `--wait`, and its renderings, on journals written directly.

use std::path::PathBuf;
use std::time::Duration;

use super::render::{md, printable, render};
use super::*;
use crate::journal::NewWrite;

fn temp() -> PathBuf {
    std::env::temp_dir().join(format!("rs-summary-{}.sqlite", uuid::Uuid::new_v4()))
}

fn write(build: &str, tc: &str, fid: Option<&str>) -> NewWrite {
    NewWrite {
        request_id: format!("r-{tc}"),
        received_at: "2026-01-01T10:00:00.000Z".into(),
        credential: "fp".into(),
        operation: "create".into(),
        path: "/slm/webservice/v2.0/testcaseresult/create".into(),
        body: "{}".into(),
        test_case: Some(tc.into()),
        formatted_id: fid.map(str::to_string),
        build: Some(build.into()),
        verdict: Some("Pass".into()),
        ..NewWrite::default()
    }
}

async fn confirmed(j: &Journal, build: &str, tc: &str, fid: Option<&str>) -> i64 {
    let id = j.insert(write(build, tc, fid)).await.expect("insert");
    j.settle(id, State::Confirmed, 1, None, Some(id * 7), Some(40.0))
        .await
        .expect("settle");
    id
}

#[tokio::test]
async fn each_outcome_has_its_exit_code_and_the_most_serious_wins() {
    let j = Journal::open(&temp()).expect("open");
    confirmed(&j, "ok", "1001", Some("TC1")).await;
    let a = confirmed(&j, "ok", "1002", Some("TC2")).await;
    j.mark_adopted(a).await.expect("adopted");
    let s = summarize(&j, "ok").await.expect("ok");
    assert_eq!((s.verdict, s.exit_code), (Verdict::AllConfirmed, 0));
    assert_eq!((s.counts.total, s.counts.adopted), (2, 1));
    assert_eq!(
        s.test_cases
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["TC1", "TC2"]
    );

    // Still pending, then unconfirmed on top, then a refusal on top of that.
    j.insert(write("b", "1003", None)).await.expect("pending");
    assert_eq!(
        summarize(&j, "b").await.expect("b").exit_code,
        exit::PENDING
    );
    let u = j.insert(write("b", "1004", Some("TC4"))).await.expect("u");
    j.settle(
        u,
        State::Unconfirmed,
        3,
        Some("Rally kept failing".into()),
        None,
        None,
    )
    .await
    .expect("settle");
    assert_eq!(
        summarize(&j, "b").await.expect("b").exit_code,
        exit::UNCONFIRMED
    );
    j.record_refusal(
        write("b", "1005", Some("TC5")),
        "TestCase TC5 is archived".into(),
    )
    .await
    .expect("refused");
    let s = summarize(&j, "b").await.expect("b");
    assert_eq!((s.verdict, s.exit_code), (Verdict::Refused, exit::REFUSED));
    assert_eq!(
        s.problems.len(),
        3,
        "pending, unconfirmed and refused are listed"
    );
    let refused = s
        .problems
        .iter()
        .find(|p| p.state == State::Refused)
        .expect("refused listed");
    assert_eq!(refused.test_case_label(), "TC5");
    assert_eq!(
        refused.last_error.as_deref(),
        Some("TestCase TC5 is archived")
    );
    assert_eq!(
        s.test_cases[0].name, "1003",
        "the ObjectID where no FormattedID is known"
    );

    let empty = summarize(&j, "typo").await.expect("typo");
    assert_eq!(
        (empty.verdict, empty.exit_code),
        (Verdict::Empty, exit::EMPTY)
    );
    assert!(empty.notes[0].contains("nothing was journaled"));
}

#[tokio::test]
async fn wait_returns_once_the_owner_settles_the_pending_writes() {
    let path = temp();
    let (owner, _) = Journal::own(&path).await.expect("own");
    let id = owner
        .insert(write("w", "1001", None))
        .await
        .expect("pending");
    let settler = owner.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        settler
            .settle(id, State::Confirmed, 1, None, Some(1), Some(300.0))
            .await
            .expect("settle");
    });
    let reader = Journal::open(&path).expect("read");
    let s = summarize_after(&reader, "w", Duration::from_secs(60))
        .await
        .expect("summary");
    assert_eq!((s.verdict, s.counts.pending), (Verdict::AllConfirmed, 0));
    owner.release().await.expect("release");
}

#[tokio::test]
async fn wait_gives_up_at_once_when_no_sidecar_owns_the_journal() {
    let j = Journal::open(&temp()).expect("open");
    j.insert(write("w", "1001", None)).await.expect("pending");
    // An hour's wait would time the test out; without an owner it must not wait at all.
    let s = tokio::time::timeout(
        Duration::from_secs(30),
        summarize_after(&j, "w", Duration::from_secs(3600)),
    )
    .await
    .expect("did not wait")
    .expect("summary");
    assert_eq!(s.exit_code, exit::PENDING);
    assert!(
        s.notes.iter().any(|n| n.contains("no running sidecar")),
        "{:?}",
        s.notes
    );
}

#[tokio::test]
async fn markdown_and_text_neutralise_what_clients_send() {
    let j = Journal::open(&temp()).expect("open");
    let nasty = "b|<img src=x onerror=alert(1)>\n\u{1b}[31m";
    j.record_refusal(
        write(nasty, "1001", Some("TC1")),
        "line one\nline | two ![x](http://evil/)".into(),
    )
    .await
    .expect("refused");
    let s = summarize(&j, nasty).await.expect("summary");
    let m = render(&s, Format::Markdown);
    assert!(!m.contains("<img") && m.contains("&lt;img"), "{m}");
    assert!(!m.contains('\u{1b}') && m.contains("\\u{1b}"), "{m}");
    // The escaped newline keeps its backslash, itself escaped: it renders as `\n`.
    assert!(m.contains(r"line one\\nline \| two \!\[x\]"), "{m}");
    let row = m
        .lines()
        .find(|l| l.contains("TC1"))
        .expect("the refused row");
    assert_eq!(
        row.matches(" | ").count(),
        4,
        "five cells; no pipe from a value splits the row: {row}"
    );
    let t = render(&s, Format::Text);
    assert!(!t.contains('\u{1b}'), "{t}");
    assert_eq!(t.lines().filter(|l| l.contains("line one")).count(), 1);
    assert_eq!(md("a_b*c"), "a\\_b\\*c");
    assert_eq!(printable("a\tb"), "a\\tb");
}

#[tokio::test]
async fn junit_has_one_testcase_per_result_and_fails_the_refused_and_unconfirmed() {
    use quick_xml::events::Event;
    let j = Journal::open(&temp()).expect("open");
    confirmed(&j, "j", "1001", Some("TC1")).await;
    j.record_refusal(write("j", "1002", Some("TC2")), "archived <&> \u{7}".into())
        .await
        .expect("refused");
    let u = j.insert(write("j", "1003", None)).await.expect("u");
    j.settle(u, State::Unconfirmed, 3, Some("lag".into()), None, None)
        .await
        .expect("settle");
    j.insert(write("j", "1004", None)).await.expect("pending");
    let xml = render(&summarize(&j, "j").await.expect("s"), Format::Junit);

    // Parse it back: a well-formed document, counted as a CI system would.
    let mut reader = quick_xml::Reader::from_str(&xml);
    let (mut cases, mut failures, mut errors) = (0, 0, 0);
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Start(e) | Event::Empty(e) => match e.name().as_ref() {
                "testcase" => cases += 1,
                "failure" => failures += 1,
                "error" => errors += 1,
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!((cases, failures, errors), (4, 2, 1), "{xml}");
    assert!(
        xml.contains(">archived &lt;&amp;&gt; \\u{7}</failure>"),
        "the reason, escaped, its control character spelled out: {xml}"
    );
    assert!(xml.contains(r#"<testsuites name="rally-sidecar" tests="4" failures="2" errors="1">"#));
}
