//! Issue 11, items 1, 2 and 8 over HTTP: the `v2.x` version segment echoed in every ref, reads
//! that stay reads whatever the type, Rally's answer for unknown types, the types test tooling
//! touches (Iteration, Release, Task, ConversationPost, Attachment, AttachmentContent), and
//! `_objectVersion` on hydrated nested objects.

use bytes::Bytes;
use http::{Method, StatusCode};
use rally_sidecar::sim::SimOptions;
use serde_json::{Value, json};

use super::{ALICE, WS, create_body};
use crate::support::{get, send, simulator};

const DAVE_READ_ONLY: (&str, &str) = ("zsessionid", "_sim_dave_readonly");
const BOB_VIEWER: (&str, &str) = ("zsessionid", "_sim_bob_key");
const V2X: &str = "/slm/webservice/v2.x";

/// Every `_ref` string anywhere in `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("_ref", Value::String(s)) => out.push(s.clone()),
                    _ => refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

fn all_under(v: &Value, prefix: &str) -> usize {
    let mut found = Vec::new();
    refs(v, &mut found);
    assert!(!found.is_empty(), "no refs in {v}");
    for r in &found {
        assert!(r.starts_with(prefix), "{r} is not under {prefix}");
    }
    found.len()
}

async fn post(url: &str, who: (&str, &str), body: Value) -> Value {
    send(Method::POST, url, &[who], Bytes::from(body.to_string()))
        .await
        .json()
}

#[tokio::test]
async fn v2x_is_served_and_echoed_in_every_ref() {
    let sim = simulator(SimOptions::default()).await;
    let base = format!("{}{V2X}", sim.base_url);

    let tc = get(&format!("{base}/TestCase/1001"), &[ALICE]).await.json();
    assert_eq!(tc["TestCase"]["FormattedID"], "TC1");
    assert!(
        all_under(&tc, &base) > 3,
        "object, nested refs and collections"
    );

    let q = get(
        &format!("{base}/testcase?fetch=Project&pagesize=3"),
        &[ALICE],
    )
    .await
    .json();
    assert_eq!(q["QueryResult"]["Errors"], json!([]));
    all_under(&q, &base);

    let created = send(
        Method::POST,
        &format!("{base}/testcaseresult/create?fetch=TestCase"),
        &[ALICE],
        create_body("/testcase/1001", "v2x"),
    )
    .await
    .json();
    assert_eq!(created["CreateResult"]["Errors"], json!([]), "{created}");
    all_under(&created, &base);

    // The captured BatchResult answered a v2.x request with v2.x refs; full-URL paths work too.
    let batch = json!({"Batch": [{"Entry": {
        "Path": format!("{base}/testcaseresult/create"), "Method": "PUT",
        "Body": {"TestCaseResult": {"TestCase": "/testcase/1002", "Build": "b", "Date": "2026-01-01T00:00:00Z", "Verdict": "Pass"}}}}]});
    let b = post(&format!("{base}/batch"), ALICE, batch).await;
    assert_eq!(b["BatchResult"]["Results"][0]["Errors"], json!([]), "{b}");
    all_under(&b, &base);

    // The schema service, redirect included.
    let schema = get(
        &format!("{}/slm/schema/v2.x/workspace/200", sim.base_url),
        &[ALICE],
    )
    .await;
    assert_eq!(schema.status, StatusCode::FOUND);
    let location = schema.headers["location"].to_str().expect("location");
    assert!(
        location.contains("/slm/schema/v2.x/workspace/200/"),
        "{location}"
    );
    let doc = get(location, &[ALICE]).await.json();
    all_under(&doc, &base);

    assert_eq!(
        get(
            &format!("{}/slm/webservice/v1.43/testcase/1001", sim.base_url),
            &[ALICE]
        )
        .await
        .status,
        StatusCode::NOT_FOUND,
        "only the versions Rally serves"
    );
    sim.stop().await;
}

#[tokio::test]
async fn reads_of_any_type_are_reads_and_unknown_types_answer_rallys_wording() {
    let sim = simulator(SimOptions::default()).await;
    let base = format!("{}{WS}", sim.base_url);
    // A read-only key reads every type, known or not; nothing is parsed as a write body.
    for path in [
        "iteration",
        "task",
        "release",
        "attachment",
        "conversationpost",
    ] {
        let a = get(&format!("{base}/{path}"), &[DAVE_READ_ONLY]).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        assert_eq!(a.json()["QueryResult"]["Errors"], json!([]), "{path}");
    }
    let unknown = get(&format!("{base}/Payjammas"), &[DAVE_READ_ONLY]).await;
    assert_eq!(
        unknown.status,
        StatusCode::OK,
        "a read, not a refused write"
    );
    assert_eq!(
        unknown.json()["QueryResult"]["Errors"][0],
        "Requested type name \"Payjammas\" is unknown."
    );
    let by_id = get(&format!("{base}/payjammas/5"), &[ALICE]).await.json();
    assert_eq!(
        by_id["OperationResult"]["Errors"][0],
        "Requested type name \"payjammas\" is unknown."
    );
    let create = post(&format!("{base}/bucky/create"), ALICE, json!({"Bucky": {}})).await;
    assert_eq!(
        create["CreateResult"]["Errors"][0],
        "Requested type name \"bucky\" is unknown."
    );
    sim.stop().await;
}

#[tokio::test]
async fn iterations_releases_and_tasks_are_read_created_updated_and_validated() {
    let sim = simulator(SimOptions::default()).await;
    let base = format!("{}{WS}", sim.base_url);

    let missing = post(
        &format!("{base}/iteration/create"),
        ALICE,
        json!({"Iteration": {"Name": "S1", "StartDate": "2026-01-05"}}),
    )
    .await;
    assert_eq!(
        missing["CreateResult"]["Errors"][0],
        "Validation error: Iteration.EndDate should not be null"
    );
    let it = post(
        &format!("{base}/iteration/create?fetch=Name,State,Project"),
        ALICE,
        json!({"Iteration": {"Name": "S1", "StartDate": "2026-01-05", "EndDate": "2026-01-16"}}),
    )
    .await;
    let obj = &it["CreateResult"]["Object"];
    assert_eq!(obj["State"], "Planning", "Rally's default state: {it}");
    assert_eq!(obj["Project"]["_refObjectName"], "Sim Project");
    let it_oid = obj["ObjectID"].as_i64().expect("oid");
    let upd = post(
        &format!("{base}/iteration/{it_oid}"),
        ALICE,
        json!({"Iteration": {"State": "Committed"}}),
    )
    .await;
    assert_eq!(upd["OperationResult"]["Object"]["State"], "Committed");
    let bad = post(
        &format!("{base}/iteration/{it_oid}"),
        ALICE,
        json!({"Iteration": {"State": "Done"}}),
    )
    .await;
    assert_eq!(
        bad["OperationResult"]["Errors"][0],
        "Validation error: Iteration.State contains an invalid value: \"Done\""
    );
    let q = get(
        &format!("{base}/iteration?query=(Name%20=%20S1)&fetch=StartDate"),
        &[ALICE],
    )
    .await
    .json();
    assert_eq!(
        q["QueryResult"]["Results"][0]["StartDate"],
        "2026-01-05T00:00:00.000Z"
    );
    let project = get(&format!("{base}/project/300"), &[ALICE]).await.json();
    assert_eq!(project["Project"]["Iterations"]["Count"], 1);

    let rel = post(
        &format!("{base}/release/create"),
        ALICE,
        json!({"Release": {"Name": "R1", "ReleaseStartDate": "2026-01-01", "ReleaseDate": "2026-03-31"}}),
    )
    .await;
    assert_eq!(rel["CreateResult"]["Errors"], json!([]), "{rel}");

    let story = post(
        &format!("{base}/hierarchicalrequirement/create"),
        ALICE,
        json!({"HierarchicalRequirement": {"Name": "A story"}}),
    )
    .await;
    let story_oid = story["CreateResult"]["Object"]["ObjectID"]
        .as_i64()
        .expect("story");
    let task = post(
        &format!("{base}/task/create?fetch=FormattedID,State,Project"),
        ALICE,
        json!({"Task": {"Name": "Do it", "WorkProduct": format!("/hierarchicalrequirement/{story_oid}"), "Iteration": format!("/iteration/{it_oid}")}}),
    )
    .await;
    let t = &task["CreateResult"]["Object"];
    assert_eq!(t["FormattedID"], "TA1", "{task}");
    assert_eq!(t["State"], "Defined");
    assert_eq!(
        t["Project"]["_refObjectName"], "Sim Project",
        "from its story"
    );
    let tasks = get(
        &format!("{base}/HierarchicalRequirement/{story_oid}/Tasks"),
        &[ALICE],
    )
    .await
    .json();
    assert_eq!(tasks["QueryResult"]["TotalResultCount"], 1);
    let no_story = post(
        &format!("{base}/task/create"),
        ALICE,
        json!({"Task": {"Name": "x"}}),
    )
    .await;
    assert_eq!(
        no_story["CreateResult"]["Errors"][0],
        "Validation error: Task.WorkProduct should not be null"
    );
    let viewer = post(
        &format!("{base}/task/create"),
        BOB_VIEWER,
        json!({"Task": {"Name": "x", "WorkProduct": format!("/hierarchicalrequirement/{story_oid}")}}),
    )
    .await;
    assert_eq!(
        viewer["CreateResult"]["Errors"][0],
        "Not authorized to create: Task"
    );
    sim.stop().await;
}

#[tokio::test]
async fn posts_attachments_and_their_contents_hang_off_artifacts_and_results() {
    let sim = simulator(SimOptions::default()).await;
    let base = format!("{}{WS}", sim.base_url);

    let post_ok = post(
        &format!("{base}/conversationpost/create?fetch=PostNumber,User,Text"),
        ALICE,
        json!({"ConversationPost": {"Artifact": "/testcase/1001", "Text": "flaky on Tuesdays"}}),
    )
    .await;
    assert_eq!(
        post_ok["CreateResult"]["Object"]["PostNumber"], 1,
        "{post_ok}"
    );
    assert_eq!(
        post_ok["CreateResult"]["Object"]["User"]["_refObjectName"],
        "Alice"
    );
    let no_text = post(
        &format!("{base}/conversationpost/create"),
        ALICE,
        json!({"ConversationPost": {"Artifact": "/testcase/1001"}}),
    )
    .await;
    assert_eq!(
        no_text["CreateResult"]["Errors"][0],
        "Validation error: ConversationPost.Text should not be null"
    );
    let tc = get(&format!("{base}/testcase/1001"), &[ALICE]).await.json();
    assert_eq!(tc["TestCase"]["Discussion"]["Count"], 1);

    // An attachment on a result: content first (base64), then the attachment naming both.
    let result = send(
        Method::POST,
        &format!("{base}/testcaseresult/create"),
        &[ALICE],
        create_body("/testcase/1001", "with-log"),
    )
    .await
    .json();
    let tcr = result["CreateResult"]["Object"]["ObjectID"]
        .as_i64()
        .expect("tcr");
    let bad = post(
        &format!("{base}/attachmentcontent/create"),
        ALICE,
        json!({"AttachmentContent": {"Content": "not base64!"}}),
    )
    .await;
    assert_eq!(
        bad["CreateResult"]["Errors"][0],
        "Validation error: AttachmentContent.Content is not valid base64"
    );
    let content = post(
        &format!("{base}/attachmentcontent/create"),
        ALICE,
        json!({"AttachmentContent": {"Content": "aGVsbG8gbG9n"}}),
    )
    .await;
    let ac = content["CreateResult"]["Object"]["ObjectID"]
        .as_i64()
        .expect("content");
    let attachment = |content_ref: String, content_type: Option<&str>| {
        let mut a = json!({"TestCaseResult": format!("/testcaseresult/{tcr}"), "Content": content_ref,
                           "Name": "run.log", "Size": 9});
        if let Some(ct) = content_type {
            a["ContentType"] = json!(ct);
        }
        json!({"Attachment": a})
    };
    let no_type = post(
        &format!("{base}/attachment/create"),
        ALICE,
        attachment(format!("/attachmentcontent/{ac}"), None),
    )
    .await;
    assert_eq!(
        no_type["CreateResult"]["Errors"][0],
        "Validation error: Attachment.ContentType should not be null"
    );
    let wrong_content = post(
        &format!("{base}/attachment/create"),
        ALICE,
        attachment("/testcase/1001".into(), Some("text/plain")),
    )
    .await;
    assert_eq!(
        wrong_content["CreateResult"]["Errors"][0],
        "Could not read: Could not read referenced object null",
        "Content must be an AttachmentContent"
    );
    let att = post(
        &format!("{base}/attachment/create?fetch=Name,Size,Content"),
        ALICE,
        attachment(format!("/attachmentcontent/{ac}"), Some("text/plain")),
    )
    .await;
    assert_eq!(att["CreateResult"]["Errors"], json!([]), "{att}");
    assert_eq!(att["CreateResult"]["Object"]["Size"], 9);
    let listed = get(
        &format!("{base}/TestCaseResult/{tcr}/Attachments?fetch=Name,Content"),
        &[ALICE],
    )
    .await
    .json();
    assert_eq!(listed["QueryResult"]["TotalResultCount"], 1);
    let content_ref = listed["QueryResult"]["Results"][0]["Content"]["_ref"]
        .as_str()
        .expect("content ref")
        .to_string();
    let stored = get(&content_ref, &[ALICE]).await.json();
    assert_eq!(stored["AttachmentContent"]["Content"], "aGVsbG8gbG9n");

    // pyral validates attribute names against the schema service before it sends anything.
    let doc = get(
        &format!("{}/slm/schema/v2.0/workspace/200/sim0001", sim.base_url),
        &[ALICE],
    )
    .await
    .json();
    let types = doc["QueryResult"]["Results"].as_array().expect("types");
    for (ty, attr) in [
        ("Iteration", "StartDate"),
        ("Release", "ReleaseDate"),
        ("Task", "WorkProduct"),
        ("ConversationPost", "Text"),
        ("Attachment", "TestCaseResult"),
        ("AttachmentContent", "Content"),
    ] {
        let def = types
            .iter()
            .find(|t| t["ElementName"] == ty)
            .unwrap_or_else(|| panic!("{ty} in the schema"));
        assert!(
            def["Attributes"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["ElementName"] == attr)),
            "{ty}.{attr} in the schema"
        );
    }
    sim.stop().await;
}

#[tokio::test]
async fn hydrated_nested_objects_carry_object_version() {
    let sim = simulator(SimOptions::default()).await;
    let base = format!("{}{WS}", sim.base_url);
    let hydrated = get(
        &format!("{base}/testcase/1001?fetch=Name,Project"),
        &[ALICE],
    )
    .await
    .json();
    let project = &hydrated["TestCase"]["Project"];
    assert_eq!(project["Name"], "Sim Project", "hydrated by the field list");
    assert_eq!(project["_objectVersion"], "1");

    // With fetch=true nested refs stay shells, as in the captures.
    let full = get(&format!("{base}/testcase/1001"), &[ALICE]).await.json();
    assert!(full["TestCase"]["Project"].get("_objectVersion").is_none());

    // The version is the nested object's own: a result's test case moves with its roll-ups.
    send(
        Method::POST,
        &format!("{base}/testcaseresult/create"),
        &[ALICE],
        create_body("/testcase/1003", "nested"),
    )
    .await;
    let tc = get(&format!("{base}/testcase/1003?fetch=VersionId"), &[ALICE])
        .await
        .json();
    let q = get(
        &format!(
            "{base}/testcaseresult?query=(Build%20=%20nested)&fetch=Build,TestCase,FormattedID"
        ),
        &[ALICE],
    )
    .await
    .json();
    let nested = &q["QueryResult"]["Results"][0]["TestCase"];
    assert_eq!(nested["FormattedID"], "TC3");
    assert_eq!(nested["_objectVersion"], tc["TestCase"]["VersionId"]);
    sim.stop().await;
}
