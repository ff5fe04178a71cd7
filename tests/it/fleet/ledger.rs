//! The shared ledger: one row per write whatever retries, disjoint claims for concurrent
//! replayers, a dead pod's pending writes handed to the replayer, and shipping that is
//! idempotent.

use std::collections::BTreeSet;
use std::time::Duration;

use rally_sidecar::fleet::ledger::{
    LocalRow, NewEntry, Outcome, Recorded, Shipped, State, WriteKey, Writer,
};

use super::{Doomed, config, fresh, pod};

fn entry(n: usize) -> NewEntry {
    let body = format!(r#"{{"TestCaseResult":{{"TestCase":"/testcase/{n}","Verdict":"Pass"}}}}"#);
    let path = "/slm/webservice/v2.0/testcaseresult/create".to_string();
    NewEntry {
        key: WriteKey::of_request("cred-digest", "create", &path, body.as_bytes()),
        request_id: format!("r{n}"),
        received_at: time::OffsetDateTime::now_utc(),
        writer: Writer {
            credential: "cred-digest".into(),
            rally_user: Some("svc@example.com".into()),
        },
        operation: "create".into(),
        target: None,
        path,
        body,
        test_case: Some(n.to_string()),
        build: Some("b1".into()),
        verdict: Some("Pass".into()),
        filled: None,
        decision: None,
    }
}

fn outcome(state: State) -> Outcome {
    Outcome {
        state,
        attempts: 1,
        last_error: None,
        object_id: (state == State::Confirmed).then_some(42),
        latency_ms: Some(3.0),
    }
}

#[tokio::test]
async fn a_retry_is_one_write_even_on_several_pods_at_once() {
    let url = fresh().await;
    let mut cfg = config(&url);
    cfg.retry_window = Duration::from_millis(300);
    let pods = [pod(&cfg).await, pod(&cfg).await, pod(&cfg).await];
    let e = entry(1);
    let results = futures_util::future::join_all(
        pods.iter()
            .flat_map(|p| std::iter::repeat_n(p.ledger(), 4))
            .map(|l| {
                let e = e.clone();
                async move { l.record(&e).await }
            }),
    )
    .await;
    let new: Vec<i64> = results
        .iter()
        .filter_map(|r| match r {
            Ok(Recorded::New(id)) => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(new.len(), 1, "twelve records of one key made one row");
    let id = new[0];
    for r in &results {
        match r {
            Ok(Recorded::New(_)) => {}
            Ok(Recorded::Existing(row)) => assert_eq!(row.id, id, "the retries found the row"),
            Err(e) => panic!("record failed: {e}"),
        }
    }
    let ledger = pods[0].ledger();
    assert!(
        ledger
            .settle(id, &outcome(State::Confirmed))
            .await
            .expect("settle")
    );
    assert!(
        !ledger
            .settle(id, &outcome(State::Unconfirmed))
            .await
            .expect("settle"),
        "a confirmed row never goes back"
    );
    let row = ledger.get(id).await.expect("get").expect("row");
    assert_eq!((row.state, row.object_id), (State::Confirmed, Some(42)));
    assert_eq!(row.writer.rally_user.as_deref(), Some("svc@example.com"));
    match ledger.record(&e).await.expect("record") {
        Recorded::Existing(r) => assert_eq!(r.id, id, "a retry within the window"),
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    match ledger.record(&e).await.expect("record") {
        Recorded::New(again) => assert_ne!(again, id, "the same result sent again later"),
        other => panic!("after the retry window, a new write: {other:?}"),
    }
}

#[tokio::test]
async fn two_replayers_claim_disjoint_rows_and_each_row_is_settled_once() {
    let url = fresh().await;
    let cfg = config(&url);
    let writer = pod(&cfg).await.ledger();
    let mut ids = BTreeSet::new();
    for n in 0..40 {
        let Recorded::New(id) = writer.record(&entry(n)).await.expect("record") else {
            panic!("new key");
        };
        writer
            .settle(id, &outcome(State::Unconfirmed))
            .await
            .expect("settle");
        ids.insert(id);
    }
    let Recorded::New(live) = writer.record(&entry(99)).await.expect("record") else {
        panic!("new key");
    };
    let replay = |ledger: rally_sidecar::fleet::Ledger| async move {
        let mut mine = Vec::new();
        loop {
            let claim = ledger.claim_for_replay(7).await.expect("claim");
            if claim.is_empty() {
                return mine;
            }
            for row in claim.rows() {
                assert!(claim.holds(row.id).await.expect("holds"));
                tokio::time::sleep(Duration::from_millis(2)).await;
                assert!(
                    claim
                        .settle(row.id, &outcome(State::Confirmed))
                        .await
                        .expect("settle"),
                    "row {} settled by its claimer",
                    row.id
                );
                mine.push(row.id);
            }
        }
    };
    let (a, b) = tokio::join!(
        replay(pod(&cfg).await.ledger()),
        replay(pod(&cfg).await.ledger())
    );
    tracing::info!(a = a.len(), b = b.len(), "rows replayed by each replayer");
    let (sa, sb): (BTreeSet<i64>, BTreeSet<i64>) =
        (a.iter().copied().collect(), b.iter().copied().collect());
    assert_eq!(a.len() + b.len(), 40, "each row replayed once");
    assert!(sa.is_disjoint(&sb), "no row replayed by both");
    assert_eq!(&sa | &sb, ids, "every unconfirmed row replayed");
    assert!(
        !sa.contains(&live) && !sb.contains(&live),
        "a live pod's pending row is its own"
    );
    let counts = writer.counts().await.expect("counts");
    assert_eq!(counts, vec![(State::Confirmed, 40), (State::Pending, 1)]);
}

#[tokio::test]
async fn a_dropped_claim_gives_its_rows_back() {
    let url = fresh().await;
    let cfg = config(&url);
    let ledger = pod(&cfg).await.ledger();
    let Recorded::New(id) = ledger.record(&entry(1)).await.expect("record") else {
        panic!("new");
    };
    ledger
        .settle(id, &outcome(State::Unconfirmed))
        .await
        .expect("settle");
    let claim = ledger.claim_for_replay(10).await.expect("claim");
    assert_eq!(claim.rows().len(), 1);
    assert!(
        ledger.claim_for_replay(10).await.expect("claim").is_empty(),
        "a held row is skipped"
    );
    drop(claim);
    let mut again = 0;
    for _ in 0..50 {
        again = ledger
            .claim_for_replay(10)
            .await
            .expect("claim")
            .rows()
            .len();
        if again == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(again, 1, "the dropped claim's row is claimable again");
}

#[test]
fn a_dead_pods_pending_writes_go_to_the_replayer_after_its_lease() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let url = rt.block_on(fresh());
    let mut cfg = config(&url);
    // Long enough that the "not yet" check right after the kill has seconds of margin.
    cfg.lease = Duration::from_secs(3);
    let doomed = Doomed::start(&cfg);
    let ledger = doomed.fleet.ledger();
    let ids: BTreeSet<i64> = doomed.run(async move {
        let mut ids = BTreeSet::new();
        for n in 0..3 {
            if let Recorded::New(id) = ledger.record(&entry(n)).await.expect("record") {
                ids.insert(id);
            }
        }
        ids
    });
    assert_eq!(ids.len(), 3);
    doomed.kill();
    rt.block_on(async {
        let replayer = pod(&cfg).await.ledger();
        let Recorded::New(live) = replayer.record(&entry(50)).await.expect("record") else {
            panic!("new");
        };
        let early = replayer.claim_for_replay(10).await.expect("claim");
        assert!(early.is_empty(), "the pod's lease has not lapsed yet");
        drop(early);
        tokio::time::sleep(cfg.lease + Duration::from_millis(500)).await;
        let claim = replayer.claim_for_replay(10).await.expect("claim");
        let got: BTreeSet<i64> = claim.rows().iter().map(|r| r.id).collect();
        assert_eq!(got, ids, "exactly the dead pod's pending writes");
        assert!(!got.contains(&live));
        for id in &ids {
            assert!(
                claim
                    .settle(*id, &outcome(State::Confirmed))
                    .await
                    .expect("settle")
            );
        }
        drop(claim);
        assert!(
            replayer
                .claim_for_replay(10)
                .await
                .expect("claim")
                .is_empty(),
            "landed once: nothing left to replay"
        );
    });
}

#[tokio::test]
async fn shipping_local_rows_twice_inserts_them_once() {
    let url = fresh().await;
    let cfg = config(&url);
    let ledger = pod(&cfg).await.ledger();
    // A write another pod recorded live, which this pod also journaled during the outage.
    let shared = entry(7);
    let Recorded::New(live) = ledger.record(&shared).await.expect("record") else {
        panic!("new");
    };
    let local = |n: usize, state: State| LocalRow {
        journal: "journal-a".into(),
        row: n as i64,
        entry: if n == 7 { shared.clone() } else { entry(n) },
        outcome: outcome(state),
    };
    let mut rows = vec![
        local(1, State::Confirmed),
        local(2, State::Unconfirmed),
        local(3, State::Rejected),
        local(7, State::Confirmed),
    ];
    let first = ledger.ship(&rows).await.expect("ship");
    assert!(matches!(first[0], Shipped::Inserted(_)));
    assert!(matches!(first[1], Shipped::Inserted(_)));
    assert!(matches!(first[2], Shipped::Inserted(_)));
    assert_eq!(first[3], Shipped::DuplicateOf(live));
    let again = ledger.ship(&rows).await.expect("ship again");
    for (a, b) in first.iter().zip(&again).take(3) {
        let (Shipped::Inserted(x), Shipped::Unchanged(y)) = (a, b) else {
            panic!("{a:?} then {b:?}");
        };
        assert_eq!(x, y, "shipped again: the same row, unchanged");
    }
    // The local row moved on (replayed locally): shipping moves the ledger row forward.
    rows[1].outcome = outcome(State::Confirmed);
    let third = ledger.ship(&rows[1..2]).await.expect("ship");
    assert!(matches!(third[0], Shipped::Updated(_)));
    let counts = ledger.counts().await.expect("counts");
    assert_eq!(
        counts,
        vec![
            (State::Confirmed, 2),
            (State::Pending, 1),
            (State::Rejected, 1)
        ],
        "three shipped rows and the live one, each once"
    );
}
