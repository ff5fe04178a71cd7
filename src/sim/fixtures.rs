//! The seed data: the fixture file format (`--fixtures FILE`), the default fixtures that tests
//! and users rely on (documented in docs/simulator.md), their cross-reference checks, and the
//! seeding of a fresh store from them.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::model::{Obj, Type, format_date, make_ref, parse_date};
use super::store::{Store, uuid_for};

/// An API key a fixture user holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub key: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FixtureUser {
    pub oid: i64,
    pub username: String,
    pub display_name: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub api_keys: Vec<ApiKey>,
    /// Basic-auth password, if the user may log in with one.
    #[serde(default)]
    pub password: Option<String>,
    /// "Admin" or "User".
    pub workspace_role: String,
    /// Project OID → "Viewer" | "Editor" | "Admin".
    #[serde(default)]
    pub project_roles: BTreeMap<String, String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FixtureProject {
    pub oid: i64,
    pub name: String,
    /// "Open" or "Closed".
    pub state: String,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FixtureTestCase {
    pub oid: i64,
    /// e.g. "TC1"; must be unique.
    pub formatted_id: String,
    pub name: String,
    pub project: i64,
    /// Deleted: sits in the recycle bin, unreadable.
    #[serde(default)]
    pub recycled: bool,
    /// Extra attributes (custom `c_*` fields, Method, Type, ...).
    #[serde(default)]
    pub fields: Map<String, Value>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FixtureTestSet {
    pub oid: i64,
    pub formatted_id: String,
    pub name: String,
    pub project: i64,
    pub test_cases: Vec<i64>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FixtureResult {
    pub test_case: i64,
    pub build: String,
    pub date: String,
    pub verdict: String,
    #[serde(default)]
    pub tester: Option<i64>,
    #[serde(default)]
    pub notes: Option<String>,
}

/// The seed data; `--fixtures FILE` replaces [`Fixtures::default`] with a JSON file of this shape.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Fixtures {
    pub subscription: String,
    pub workspace: String,
    /// Allowed TestCaseResult verdicts.
    pub verdicts: Vec<String>,
    /// Custom attributes per type name, e.g. {"TestCase": ["c_Lifecycle"]}.
    #[serde(default)]
    pub custom_fields: BTreeMap<String, Vec<String>>,
    pub projects: Vec<FixtureProject>,
    pub users: Vec<FixtureUser>,
    pub test_cases: Vec<FixtureTestCase>,
    #[serde(default)]
    pub test_sets: Vec<FixtureTestSet>,
    #[serde(default)]
    pub test_case_results: Vec<FixtureResult>,
}

/// Well-known object IDs of the default fixtures (documented in docs/simulator.md).
pub mod oids {
    pub const SUBSCRIPTION: i64 = 100;
    pub const WORKSPACE: i64 = 200;
    pub const SIM_PROJECT: i64 = 300;
    pub const CLOSED_PROJECT: i64 = 301;
    pub const ALICE: i64 = 400;
    pub const BOB: i64 = 401;
    pub const CAROL: i64 = 402;
    pub const DAVE: i64 = 403;
    /// TC<n> has ObjectID 1000 + n.
    pub const TEST_CASE_BASE: i64 = 1000;
    pub const TS1: i64 = 2001;
    /// Objects created at run time get IDs from here on (11 digits, like Rally's).
    pub const FIRST_DYNAMIC: i64 = 10_000_000_001;
}

impl Default for Fixtures {
    fn default() -> Self {
        use oids::*;
        let roles = |pairs: &[(i64, &str)]| {
            pairs
                .iter()
                .map(|(p, r)| (p.to_string(), r.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        let mut test_cases: Vec<FixtureTestCase> = (1..=50)
            .map(|n| FixtureTestCase {
                oid: TEST_CASE_BASE + n,
                formatted_id: format!("TC{n}"),
                name: format!("Simulated test case {n}"),
                project: SIM_PROJECT,
                recycled: false,
                fields:
                    json!({"Method": "Automated", "Type": "Functional", "c_Lifecycle": "Active"})
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
            })
            .collect();
        test_cases.push(FixtureTestCase {
            oid: TEST_CASE_BASE + 90,
            formatted_id: "TC90".into(),
            name: "Archived test case".into(),
            project: SIM_PROJECT,
            recycled: false,
            fields: json!({"Method": "Automated", "Type": "Functional", "c_Lifecycle": "Archived"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        });
        test_cases.push(FixtureTestCase {
            oid: TEST_CASE_BASE + 91,
            formatted_id: "TC91".into(),
            name: "Test case in a closed project".into(),
            project: CLOSED_PROJECT,
            recycled: false,
            fields: json!({"Method": "Manual", "c_Lifecycle": "Active"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        });
        test_cases.push(FixtureTestCase {
            oid: TEST_CASE_BASE + 92,
            formatted_id: "TC92".into(),
            name: "Deleted test case".into(),
            project: SIM_PROJECT,
            recycled: true,
            fields: Map::new(),
        });
        Fixtures {
            subscription: "Sim Subscription".into(),
            workspace: "Sim Workspace".into(),
            verdicts: ["Blocked", "Error", "Fail", "Inconclusive", "Pass"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            custom_fields: [("TestCase".to_string(), vec!["c_Lifecycle".to_string()])]
                .into_iter()
                .collect(),
            projects: vec![
                FixtureProject {
                    oid: SIM_PROJECT,
                    name: "Sim Project".into(),
                    state: "Open".into(),
                },
                FixtureProject {
                    oid: CLOSED_PROJECT,
                    name: "Closed Project".into(),
                    state: "Closed".into(),
                },
            ],
            users: vec![
                FixtureUser {
                    oid: ALICE,
                    username: "alice@example.com".into(),
                    display_name: "Alice".into(),
                    email: Some("alice@example.com".into()),
                    api_keys: vec![ApiKey {
                        key: "_sim_alice_key".into(),
                        read_only: false,
                    }],
                    password: None,
                    workspace_role: "User".into(),
                    project_roles: roles(&[(SIM_PROJECT, "Editor"), (CLOSED_PROJECT, "Editor")]),
                },
                FixtureUser {
                    oid: BOB,
                    username: "bob@example.com".into(),
                    display_name: "Bob".into(),
                    email: Some("bob@example.com".into()),
                    api_keys: vec![ApiKey {
                        key: "_sim_bob_key".into(),
                        read_only: false,
                    }],
                    password: None,
                    workspace_role: "User".into(),
                    project_roles: roles(&[(SIM_PROJECT, "Viewer")]),
                },
                FixtureUser {
                    oid: CAROL,
                    username: "carol@example.com".into(),
                    display_name: "Carol".into(),
                    email: Some("carol@example.com".into()),
                    api_keys: vec![],
                    password: Some("carol-pass".into()),
                    workspace_role: "User".into(),
                    project_roles: roles(&[(SIM_PROJECT, "Editor"), (CLOSED_PROJECT, "Editor")]),
                },
                FixtureUser {
                    oid: DAVE,
                    username: "dave@example.com".into(),
                    display_name: "Dave".into(),
                    email: Some("dave@example.com".into()),
                    api_keys: vec![ApiKey {
                        key: "_sim_dave_readonly".into(),
                        read_only: true,
                    }],
                    password: None,
                    workspace_role: "User".into(),
                    project_roles: roles(&[(SIM_PROJECT, "Editor")]),
                },
            ],
            test_cases,
            test_sets: vec![FixtureTestSet {
                oid: TS1,
                formatted_id: "TS1".into(),
                name: "Simulated test set".into(),
                project: SIM_PROJECT,
                test_cases: (1..=10).map(|n| TEST_CASE_BASE + n).collect(),
            }],
            test_case_results: vec![],
        }
    }
}

impl Fixtures {
    /// Reads a fixtures file (JSON of this struct's shape).
    pub fn from_file(path: &std::path::Path) -> Result<Fixtures, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let f: Fixtures =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        f.check()?;
        Ok(f)
    }

    /// Cross-reference checks, so a bad file fails at start rather than as odd answers.
    pub fn check(&self) -> Result<(), String> {
        let projects: Vec<i64> = self.projects.iter().map(|p| p.oid).collect();
        let mut problems = Vec::new();
        for tc in &self.test_cases {
            if !projects.contains(&tc.project) {
                problems.push(format!(
                    "test case {} names unknown project {}",
                    tc.formatted_id, tc.project
                ));
            }
        }
        for p in &self.projects {
            if p.state != "Open" && p.state != "Closed" {
                problems.push(format!("project {} state must be Open or Closed", p.oid));
            }
        }
        let tcs: Vec<i64> = self.test_cases.iter().map(|t| t.oid).collect();
        for r in &self.test_case_results {
            if !tcs.contains(&r.test_case) {
                problems.push(format!("result names unknown test case {}", r.test_case));
            }
            if parse_date(&r.date).is_none() {
                problems.push(format!("result date {:?} is not ISO-8601", r.date));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

impl Store {
    /// Fills a fresh store with the fixtures' objects.
    pub(super) fn seed(&mut self, f: &Fixtures) {
        let epoch = OffsetDateTime::from_unix_timestamp(1_700_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let ws = oids::WORKSPACE;
        let put = |s: &mut Store, ty: Type, oid: i64, fields: Value| {
            let fields = fields.as_object().cloned().unwrap_or_default();
            s.insert(Obj {
                ty,
                oid,
                uuid: uuid_for(oid),
                version: 1,
                created: epoch,
                visible_at: None,
                fields,
            });
        };
        put(
            self,
            Type::Subscription,
            oids::SUBSCRIPTION,
            json!({"Name": f.subscription, "SubscriptionID": 1, "State": "Enabled"}),
        );
        put(
            self,
            Type::Workspace,
            ws,
            json!({"Name": f.workspace, "State": "Open", "Subscription": make_ref(Type::Subscription, oids::SUBSCRIPTION)}),
        );
        for p in &f.projects {
            put(
                self,
                Type::Project,
                p.oid,
                json!({"Name": p.name, "State": p.state, "Workspace": make_ref(Type::Workspace, ws)}),
            );
        }
        let first_open = f.projects.iter().find(|p| p.state == "Open").map(|p| p.oid);
        let mut perm_oid = 600;
        for (i, u) in f.users.iter().enumerate() {
            let profile = 500 + i as i64;
            let (first, last) = u
                .display_name
                .split_once(' ')
                .unwrap_or((&u.display_name, ""));
            let summary = if u.workspace_role == "Admin" {
                "Workspace Admin"
            } else if u.project_roles.values().any(|r| r == "Admin") {
                "Project Admin"
            } else {
                "Workspace User"
            };
            put(
                self,
                Type::User,
                u.oid,
                json!({
                    "UserName": u.username, "DisplayName": u.display_name, "EmailAddress": u.email.clone().unwrap_or_else(|| u.username.clone()),
                    "FirstName": first, "LastName": last, "Disabled": false, "SubscriptionAdmin": false,
                    "SubscriptionPermission": "Subscription User", "WorkspacePermission": summary,
                    "UserProfile": make_ref(Type::UserProfile, profile),
                    "Subscription": make_ref(Type::Subscription, oids::SUBSCRIPTION),
                }),
            );
            let default_project = u
                .project_roles
                .keys()
                .filter_map(|k| k.parse::<i64>().ok())
                .find(|p| Some(*p) == first_open)
                .or(first_open);
            put(
                self,
                Type::UserProfile,
                profile,
                json!({
                    "DefaultWorkspace": make_ref(Type::Workspace, ws),
                    "DefaultProject": default_project.map(|p| make_ref(Type::Project, p)).unwrap_or(Value::Null),
                    "TimeZone": "UTC",
                }),
            );
            put(
                self,
                Type::WorkspacePermission,
                perm_oid,
                json!({
                    "Role": u.workspace_role, "Name": f.workspace, "Workspace": make_ref(Type::Workspace, ws), "User": make_ref(Type::User, u.oid),
                    "CustomObjectID": format!("{}u{}w1", u.oid, ws),
                }),
            );
            perm_oid += 1;
            for (project, role) in &u.project_roles {
                let Ok(p) = project.parse::<i64>() else {
                    continue;
                };
                let state = f
                    .projects
                    .iter()
                    .find(|x| x.oid == p)
                    .map(|x| x.state.clone())
                    .unwrap_or_default();
                let pname = f
                    .projects
                    .iter()
                    .find(|x| x.oid == p)
                    .map(|x| x.name.clone())
                    .unwrap_or_default();
                put(
                    self,
                    Type::ProjectPermission,
                    perm_oid,
                    json!({
                        "Role": role, "Name": pname, "Project": make_ref(Type::Project, p), "ProjectState": state,
                        "Workspace": make_ref(Type::Workspace, ws), "User": make_ref(Type::User, u.oid),
                        "CustomObjectID": format!("{}u{}p1", u.oid, p),
                    }),
                );
                perm_oid += 1;
            }
        }
        for tc in &f.test_cases {
            let mut fields = json!({
                "FormattedID": tc.formatted_id, "Name": tc.name, "Project": make_ref(Type::Project, tc.project),
                "Workspace": make_ref(Type::Workspace, ws), "Recycled": tc.recycled, "Priority": "None", "Risk": "None",
                "LastVerdict": null, "LastBuild": null, "LastRun": null, "LastResult": null,
            });
            if let Some(m) = fields.as_object_mut() {
                for (k, v) in &tc.fields {
                    m.insert(k.clone(), v.clone());
                }
            }
            put(self, Type::TestCase, tc.oid, fields);
        }
        for ts in &f.test_sets {
            let members: Vec<Value> = ts
                .test_cases
                .iter()
                .map(|t| make_ref(Type::TestCase, *t))
                .collect();
            put(
                self,
                Type::TestSet,
                ts.oid,
                json!({
                    "FormattedID": ts.formatted_id, "Name": ts.name, "Project": make_ref(Type::Project, ts.project),
                    "Workspace": make_ref(Type::Workspace, ws), "__members": members,
                }),
            );
        }
        for r in &f.test_case_results {
            let project = self
                .objects
                .get(&r.test_case)
                .and_then(|o| o.get_ref("Project"))
                .map(|(_, p)| p);
            let date = parse_date(&r.date)
                .map(format_date)
                .unwrap_or_else(|| r.date.clone());
            let oid = self.allocate();
            put(
                self,
                Type::TestCaseResult,
                oid,
                json!({
                    "TestCase": make_ref(Type::TestCase, r.test_case), "Build": r.build, "Date": date, "Verdict": r.verdict,
                    "Tester": r.tester.map(|t| make_ref(Type::User, t)).unwrap_or(Value::Null),
                    "Notes": r.notes, "Duration": null, "TestSet": null,
                    "Workspace": make_ref(Type::Workspace, ws),
                    "Project": project.map(|p| make_ref(Type::Project, p)).unwrap_or(Value::Null),
                }),
            );
            self.update_rollup(r.test_case);
        }
    }
}
