//! The archived-test-case guard, decided purely from what a lookup of the target TestCase
//! returned: block when it cannot be read (deleted, in the recycle bin, a wrong ref), when its
//! project is Closed, or when a configured rule matches one of its fields (custom ones too).

use serde_json::Value;

use crate::config::{GuardConfig, OnLookupError};

pub use crate::rally::lookups::Lookup;

/// Why a write is blocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    NotReadable {
        test_case: String,
        error: String,
    },
    ProjectClosed {
        test_case: String,
        project: String,
    },
    Rule {
        test_case: String,
        field: String,
        value: String,
    },
    LookupFailed {
        test_case: String,
        error: String,
    },
}

impl Block {
    /// Stable code: response header value and metric label.
    pub fn code(&self) -> &'static str {
        match self {
            Block::NotReadable { .. } => "blocked-not-readable",
            Block::ProjectClosed { .. } => "blocked-project-closed",
            Block::Rule { .. } => "blocked-rule",
            Block::LookupFailed { .. } => "blocked-lookup-failed",
        }
    }

    /// The error text the client sees.
    pub fn message(&self) -> String {
        match self {
            Block::NotReadable { test_case, error } => format!(
                "rally-sidecar: TestCase {test_case} cannot be read ({error}): it is deleted, in the recycle bin, or the reference is wrong; result not written"
            ),
            Block::ProjectClosed { test_case, project } => format!(
                "rally-sidecar: TestCase {test_case} is in the closed project \"{project}\"; result not written"
            ),
            Block::Rule {
                test_case,
                field,
                value,
            } => {
                format!(
                    "rally-sidecar: TestCase {test_case} is archived ({field} = {value}); result not written"
                )
            }
            Block::LookupFailed { test_case, error } => format!(
                "rally-sidecar: TestCase {test_case} could not be checked ({error}) and guard.on_lookup_error = \"block\"; result not written"
            ),
        }
    }
}

/// The guard's verdict on one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Block(Block),
    /// The lookup failed and the configuration says to forward anyway.
    AllowUnchecked(String),
}

/// Text of a field for rule matching: strings as they are, numbers and booleans printed,
/// references by their name.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Object(m) => m
            .get("_refObjectName")
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}

/// Decides. `id` is the TestCase id as the write named it (used when the lookup found nothing).
pub fn decide(id: &str, lookup: &Lookup, cfg: &GuardConfig) -> Verdict {
    let tc = match lookup {
        Lookup::Found(tc) => tc,
        Lookup::NotReadable(error) => {
            return Verdict::Block(Block::NotReadable {
                test_case: id.to_string(),
                error: error.clone(),
            });
        }
        Lookup::Failed(error) => {
            return match cfg.on_lookup_error {
                OnLookupError::Forward => Verdict::AllowUnchecked(error.clone()),
                OnLookupError::Block => Verdict::Block(Block::LookupFailed {
                    test_case: id.to_string(),
                    error: error.clone(),
                }),
            };
        }
    };
    let name = tc
        .get("FormattedID")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| id.to_string());
    if tc.get("Recycled").and_then(Value::as_bool) == Some(true) {
        return Verdict::Block(Block::NotReadable {
            test_case: name,
            error: "in the recycle bin".into(),
        });
    }
    if cfg.block_closed_projects {
        let project = tc.get("Project");
        let state = project.and_then(|p| p.get("State")).and_then(Value::as_str);
        if state == Some("Closed") {
            let pname = project.and_then(text).unwrap_or_default();
            return Verdict::Block(Block::ProjectClosed {
                test_case: name,
                project: pname,
            });
        }
    }
    for rule in &cfg.rules {
        if let Some(value) = tc.get(&rule.field).and_then(text)
            && rule.values.contains(&value)
        {
            return Verdict::Block(Block::Rule {
                test_case: name,
                field: rule.field.clone(),
                value,
            });
        }
    }
    Verdict::Allow
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GuardRule;
    use serde_json::json;

    fn cfg() -> GuardConfig {
        GuardConfig {
            enabled: true,
            cache_ttl: std::time::Duration::from_secs(30),
            block_closed_projects: true,
            on_lookup_error: OnLookupError::Forward,
            failure_cache_ttl: std::time::Duration::from_secs(5),
            rules: vec![GuardRule {
                field: "c_Lifecycle".into(),
                values: vec!["Archived".into(), "Deprecated".into()],
            }],
        }
    }

    fn found(v: Value) -> Lookup {
        Lookup::Found(v.as_object().cloned().expect("object"))
    }

    #[test]
    fn each_reason() {
        let open = json!({"_refObjectName": "Sim Project", "State": "Open"});
        assert_eq!(
            decide(
                "1",
                &found(json!({"FormattedID": "TC1", "Project": open, "c_Lifecycle": "Active"})),
                &cfg()
            ),
            Verdict::Allow
        );
        let v = decide(
            "1090",
            &found(json!({"FormattedID": "TC90", "Project": open, "c_Lifecycle": "Archived"})),
            &cfg(),
        );
        let Verdict::Block(b) = v else {
            panic!("blocked")
        };
        assert_eq!(
            b.message(),
            "rally-sidecar: TestCase TC90 is archived (c_Lifecycle = Archived); result not written"
        );
        assert_eq!(b.code(), "blocked-rule");
        let v = decide(
            "1091",
            &found(
                json!({"FormattedID": "TC91", "Project": {"_refObjectName": "Closed Project", "State": "Closed"}}),
            ),
            &cfg(),
        );
        assert!(matches!(v, Verdict::Block(Block::ProjectClosed { .. })));
        let v = decide(
            "1092",
            &Lookup::NotReadable("Cannot find object to read".into()),
            &cfg(),
        );
        assert!(matches!(v, Verdict::Block(Block::NotReadable { .. })));
        assert!(matches!(
            decide("1", &Lookup::Failed("timeout".into()), &cfg()),
            Verdict::AllowUnchecked(_)
        ));
        let mut strict = cfg();
        strict.on_lookup_error = OnLookupError::Block;
        assert!(matches!(
            decide("1", &Lookup::Failed("timeout".into()), &strict),
            Verdict::Block(Block::LookupFailed { .. })
        ));
        let mut lax = cfg();
        lax.block_closed_projects = false;
        lax.rules.clear();
        assert_eq!(
            decide(
                "1091",
                &found(json!({"Project": {"State": "Closed"}, "c_Lifecycle": "Archived"})),
                &lax
            ),
            Verdict::Allow
        );
    }

    #[test]
    fn rules_match_any_field_type() {
        let mut c = cfg();
        c.rules = vec![
            GuardRule {
                field: "c_Retired".into(),
                values: vec!["true".into()],
            },
            GuardRule {
                field: "TestFolder".into(),
                values: vec!["Archive".into()],
            },
        ];
        assert!(matches!(
            decide("1", &found(json!({"c_Retired": true})), &c),
            Verdict::Block(_)
        ));
        assert!(matches!(
            decide(
                "1",
                &found(json!({"TestFolder": {"_refObjectName": "Archive"}})),
                &c
            ),
            Verdict::Block(_)
        ));
        assert_eq!(
            decide("1", &found(json!({"c_Retired": false})), &c),
            Verdict::Allow
        );
    }
}
