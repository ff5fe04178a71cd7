//! The simulator's object store: WSAPI types, stored objects, references, and the fixtures that
//! seed them. Objects keep their attributes as JSON; a reference is stored as
//! `{"__ref": [type, oid]}` and rendered as a WSAPI ref object (with an absolute `_ref` built
//! from the origin the client used) only on the way out.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use time::OffsetDateTime;

/// The WSAPI types the simulator knows. Type segments in paths and root keys in bodies are
/// matched case-insensitively against [`Type::name`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Type {
    Subscription,
    Workspace,
    Project,
    User,
    UserProfile,
    WorkspacePermission,
    ProjectPermission,
    TestCase,
    TestSet,
    TestCaseResult,
    HierarchicalRequirement,
    Defect,
}

pub const ALL_TYPES: &[Type] = &[
    Type::Subscription,
    Type::Workspace,
    Type::Project,
    Type::User,
    Type::UserProfile,
    Type::WorkspacePermission,
    Type::ProjectPermission,
    Type::TestCase,
    Type::TestSet,
    Type::TestCaseResult,
    Type::HierarchicalRequirement,
    Type::Defect,
];

impl Type {
    /// The official (CamelCase) name, used as the root key and in `_type`.
    pub fn name(self) -> &'static str {
        match self {
            Type::Subscription => "Subscription",
            Type::Workspace => "Workspace",
            Type::Project => "Project",
            Type::User => "User",
            Type::UserProfile => "UserProfile",
            Type::WorkspacePermission => "WorkspacePermission",
            Type::ProjectPermission => "ProjectPermission",
            Type::TestCase => "TestCase",
            Type::TestSet => "TestSet",
            Type::TestCaseResult => "TestCaseResult",
            Type::HierarchicalRequirement => "HierarchicalRequirement",
            Type::Defect => "Defect",
        }
    }

    /// Lower-case path segment used in object `_ref`s.
    pub fn path(self) -> String {
        self.name().to_ascii_lowercase()
    }

    /// Case-insensitive lookup; accepts the plural query endpoints `users`/`subscriptions`.
    pub fn parse(segment: &str) -> Option<Type> {
        let s = segment.to_ascii_lowercase();
        let s = match s.as_str() {
            "users" => "user",
            "subscriptions" => "subscription",
            "userstory" => "hierarchicalrequirement",
            other => other,
        };
        ALL_TYPES
            .iter()
            .copied()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }

    /// FormattedID prefix for artifacts.
    pub fn id_prefix(self) -> Option<&'static str> {
        match self {
            Type::TestCase => Some("TC"),
            Type::TestSet => Some("TS"),
            Type::HierarchicalRequirement => Some("US"),
            Type::Defect => Some("DE"),
            _ => None,
        }
    }
}

/// One stored object.
#[derive(Debug, Clone)]
pub struct Obj {
    pub ty: Type,
    pub oid: i64,
    pub uuid: String,
    pub version: u64,
    pub created: OffsetDateTime,
    /// Not readable before this instant (the `--read-lag` fault).
    pub visible_at: Option<tokio::time::Instant>,
    pub fields: Map<String, Value>,
}

impl Obj {
    pub fn name(&self) -> String {
        for key in ["Name", "_refObjectName", "DisplayName", "UserName"] {
            if let Some(Value::String(s)) = self.fields.get(key) {
                return s.clone();
            }
        }
        match self.ty {
            Type::TestCaseResult => format!(
                "{} {}",
                self.fields
                    .get("Build")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
                self.fields
                    .get("Verdict")
                    .and_then(Value::as_str)
                    .unwrap_or("")
            )
            .trim()
            .to_string(),
            _ => String::new(),
        }
    }

    pub fn get_ref(&self, field: &str) -> Option<(Type, i64)> {
        ref_target(self.fields.get(field)?)
    }

    pub fn str_field(&self, field: &str) -> Option<&str> {
        self.fields.get(field).and_then(Value::as_str)
    }
}

/// Internal form of a reference.
pub fn make_ref(ty: Type, oid: i64) -> Value {
    json!({ "__ref": [ty.name(), oid] })
}

/// Reads an internal reference.
pub fn ref_target(v: &Value) -> Option<(Type, i64)> {
    let arr = v.get("__ref")?.as_array()?;
    let ty = Type::parse(arr.first()?.as_str()?)?;
    Some((ty, arr.get(1)?.as_i64()?))
}

pub use crate::wsapi::format_date;

/// Parses an ISO-8601 timestamp with `Z` or an offset (also without seconds' fraction).
pub fn parse_date(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .or_else(|| {
            // Rally also accepts a date without a zone (the user's zone); we take UTC.
            let fmt = time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]"
            );
            time::PrimitiveDateTime::parse(s, &fmt)
                .ok()
                .map(|p| p.assume_utc())
        })
        .or_else(|| {
            let fmt = time::macros::format_description!("[year]-[month]-[day]");
            time::Date::parse(s, &fmt)
                .ok()
                .map(|d| d.midnight().assume_utc())
        })
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

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
