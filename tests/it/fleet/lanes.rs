//! Budget lanes (migration 0002): pods learn a credential's Rally user at different moments,
//! yet the credential's requests and its user's count against one budget from the moment the
//! fleet records the mapping — the grants made before it included.

use std::time::Duration;

use rally_sidecar::fleet::budget::Priority;

use super::{config, fresh, pod};

#[tokio::test]
async fn a_credential_and_its_user_share_one_budget_once_the_fleet_knows() {
    let url = fresh().await;
    let cfg = config(&url);
    let (a, b) = (pod(&cfg).await.budget(), pod(&cfg).await.budget());
    let (cred, user) = ("credential:k1", "user:/user/77");
    // Pod a does not know whose key k1 is yet: two requests under the credential's lane.
    let first = a.acquire(cred, Priority::Normal).await.expect("1");
    let _second = a.acquire(cred, Priority::Normal).await.expect("2");
    // Pod b learns it and records it for the fleet, then asks under the user's lane.
    b.learn(cred, user).await.expect("learn");
    let _third = b.acquire(user, Priority::Normal).await.expect("3");
    assert_eq!(
        b.held_in_fleet(user).await.expect("count"),
        3,
        "the credential's permits count against its user"
    );
    // The budget (3) is used up whichever lane asks: the user's, or the credential's on a
    // pod that still asks under it.
    for lane in [user, cred] {
        let more = tokio::time::timeout(
            Duration::from_millis(700),
            a.acquire(lane, Priority::Normal),
        )
        .await;
        assert!(more.is_err(), "a fourth permit under {lane} was granted");
    }
    // A permit given back under the old lane frees a place for the user.
    drop(first);
    let fourth = tokio::time::timeout(Duration::from_secs(5), b.acquire(user, Priority::Normal))
        .await
        .expect("granted once one was released")
        .expect("permit");
    drop(fourth);
    // Learning twice changes nothing: the two still held count against the first user.
    b.learn(cred, "user:/user/other").await.expect("again");
    let mut held = 0;
    for _ in 0..50 {
        // Releases land in the background.
        held = b.held_in_fleet(user).await.expect("count");
        if held == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(held, 2);
    assert_eq!(b.held_in_fleet("user:/user/other").await.expect("count"), 0);
}
