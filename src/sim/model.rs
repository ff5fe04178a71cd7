//! The simulator's vocabulary of stored things: the WSAPI types it models, a stored object, and
//! references. Objects keep their attributes as JSON; a reference is stored as
//! `{"__ref": [type, oid]}` and rendered as a WSAPI ref object (with an absolute `_ref` built
//! from the origin and API version the client used) only on the way out.

use serde_json::{Map, Value, json};
use time::OffsetDateTime;

/// The WSAPI types the simulator knows. Type segments in paths and root keys in bodies are
/// matched case-insensitively against [`Type::name`]. New variants go at the end: the schema
/// service derives stable refs from the position.
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
    Iteration,
    Release,
    Task,
    ConversationPost,
    Attachment,
    AttachmentContent,
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
    Type::Iteration,
    Type::Release,
    Type::Task,
    Type::ConversationPost,
    Type::Attachment,
    Type::AttachmentContent,
];

/// The artifact types: they have a FormattedID, a Discussion and Attachments, and go to the
/// recycle bin when deleted.
pub const ARTIFACTS: &[Type] = &[
    Type::TestCase,
    Type::TestSet,
    Type::HierarchicalRequirement,
    Type::Defect,
    Type::Task,
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
            Type::Iteration => "Iteration",
            Type::Release => "Release",
            Type::Task => "Task",
            Type::ConversationPost => "ConversationPost",
            Type::Attachment => "Attachment",
            Type::AttachmentContent => "AttachmentContent",
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
            Type::Task => Some("TA"),
            _ => None,
        }
    }

    pub fn is_artifact(self) -> bool {
        ARTIFACTS.contains(&self)
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

pub use super::fixtures::{
    ApiKey, FixtureProject, FixtureResult, FixtureTestCase, FixtureTestSet, FixtureUser, Fixtures,
    oids,
};
