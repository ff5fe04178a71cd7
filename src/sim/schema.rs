//! Type definitions: which attributes each simulated type has, which are required or read-only,
//! what a reference attribute may point at (used to refuse queries, sorts and writes the way
//! Rally does), and the schema service document pyral reads at start-up and validates every
//! create and update against (`/slm/schema/<version>/workspace/<oid>`).

use serde_json::{Value, json};

use super::model::{ARTIFACTS, Type};
use super::rules::allowed_values;
use super::store::Store;

/// (ElementName, AttributeType, Required, ReadOnly)
type Attr = (&'static str, &'static str, bool, bool);

/// Attributes every WSAPI object has.
const COMMON: &[Attr] = &[
    ("ObjectID", "INTEGER", false, true),
    ("ObjectUUID", "STRING", false, true),
    ("CreationDate", "DATE", false, true),
    ("VersionId", "STRING", false, true),
    ("Subscription", "OBJECT", false, true),
    ("Workspace", "OBJECT", false, false),
];

/// Attributes of each type besides [`COMMON`].
pub(super) fn attributes(ty: Type) -> &'static [Attr] {
    match ty {
        Type::Subscription => &[
            ("Name", "STRING", true, false),
            ("SubscriptionID", "INTEGER", false, true),
            ("State", "STRING", false, true),
            ("Workspaces", "COLLECTION", false, true),
        ],
        Type::Workspace => &[
            ("Name", "STRING", true, false),
            ("State", "STRING", false, false),
            ("Projects", "COLLECTION", false, true),
        ],
        Type::Project => &[
            ("Name", "STRING", true, false),
            ("State", "STRING", true, false),
            ("TestCases", "COLLECTION", false, true),
        ],
        Type::User => &[
            ("UserName", "STRING", true, false),
            ("DisplayName", "STRING", false, false),
            ("EmailAddress", "STRING", true, false),
            ("FirstName", "STRING", false, false),
            ("LastName", "STRING", false, false),
            ("Disabled", "BOOLEAN", false, false),
            ("SubscriptionAdmin", "BOOLEAN", false, true),
            ("SubscriptionPermission", "STRING", false, true),
            ("WorkspacePermission", "STRING", false, true),
            ("UserProfile", "OBJECT", false, true),
            ("UserPermissions", "COLLECTION", false, true),
            ("TeamMemberships", "COLLECTION", false, true),
        ],
        Type::UserProfile => &[
            ("DefaultWorkspace", "OBJECT", false, false),
            ("DefaultProject", "OBJECT", false, false),
            ("TimeZone", "STRING", false, false),
        ],
        Type::WorkspacePermission => &[
            ("Role", "STRING", true, false),
            ("Name", "STRING", false, true),
            ("User", "OBJECT", true, false),
            ("CustomObjectID", "STRING", false, true),
        ],
        Type::ProjectPermission => &[
            ("Role", "STRING", true, false),
            ("Name", "STRING", false, true),
            ("User", "OBJECT", true, false),
            ("Project", "OBJECT", true, false),
            ("ProjectState", "STRING", false, true),
            ("CustomObjectID", "STRING", false, true),
        ],
        Type::TestCase => &[
            ("FormattedID", "STRING", false, true),
            ("Name", "STRING", true, false),
            ("Description", "TEXT", false, false),
            ("Notes", "TEXT", false, false),
            ("Owner", "OBJECT", false, false),
            ("Project", "OBJECT", false, false),
            ("Method", "STRING", false, false),
            ("Type", "STRING", false, false),
            ("Priority", "STRING", false, false),
            ("Risk", "STRING", false, false),
            ("Recycled", "BOOLEAN", false, true),
            ("LastVerdict", "STRING", false, true),
            ("LastBuild", "STRING", false, true),
            ("LastRun", "DATE", false, true),
            ("LastResult", "OBJECT", false, true),
            ("Results", "COLLECTION", false, true),
            ("TestSets", "COLLECTION", false, false),
            ("WorkProduct", "OBJECT", false, false),
            ("Attachments", "COLLECTION", false, true),
            ("Discussion", "COLLECTION", false, true),
        ],
        Type::TestSet => &[
            ("FormattedID", "STRING", false, true),
            ("Name", "STRING", true, false),
            ("Project", "OBJECT", false, false),
            ("TestCases", "COLLECTION", false, false),
            ("Results", "COLLECTION", false, true),
            ("Attachments", "COLLECTION", false, true),
            ("Discussion", "COLLECTION", false, true),
        ],
        Type::TestCaseResult => &[
            ("TestCase", "OBJECT", true, false),
            ("Build", "STRING", true, false),
            ("Date", "DATE", true, false),
            ("Verdict", "STRING", true, false),
            ("Tester", "OBJECT", false, false),
            ("TestSet", "OBJECT", false, false),
            ("Duration", "DECIMAL", false, false),
            ("Notes", "TEXT", false, false),
            ("Project", "OBJECT", false, true),
            ("WorkProduct", "OBJECT", false, true),
            ("Attachments", "COLLECTION", false, true),
        ],
        Type::HierarchicalRequirement | Type::Defect => &[
            ("FormattedID", "STRING", false, true),
            ("Name", "STRING", true, false),
            ("Project", "OBJECT", false, false),
            ("Owner", "OBJECT", false, false),
            ("Description", "TEXT", false, false),
            ("Notes", "TEXT", false, false),
            ("Iteration", "OBJECT", false, false),
            ("Release", "OBJECT", false, false),
            ("Recycled", "BOOLEAN", false, true),
            ("Tasks", "COLLECTION", false, true),
            ("Attachments", "COLLECTION", false, true),
            ("Discussion", "COLLECTION", false, true),
        ],
        Type::Iteration => &[
            ("Name", "STRING", true, false),
            ("StartDate", "DATE", true, false),
            ("EndDate", "DATE", true, false),
            ("State", "STRING", true, false),
            ("Project", "OBJECT", false, false),
            ("PlannedVelocity", "DECIMAL", false, false),
            ("Theme", "TEXT", false, false),
            ("Notes", "TEXT", false, false),
        ],
        Type::Release => &[
            ("Name", "STRING", true, false),
            ("ReleaseStartDate", "DATE", true, false),
            ("ReleaseDate", "DATE", true, false),
            ("State", "STRING", true, false),
            ("Project", "OBJECT", false, false),
            ("Version", "STRING", false, false),
            ("PlannedVelocity", "DECIMAL", false, false),
            ("Theme", "TEXT", false, false),
            ("Notes", "TEXT", false, false),
        ],
        Type::Task => &[
            ("FormattedID", "STRING", false, true),
            ("Name", "STRING", true, false),
            ("WorkProduct", "OBJECT", true, false),
            ("State", "STRING", true, false),
            ("Project", "OBJECT", false, true),
            ("Owner", "OBJECT", false, false),
            ("Description", "TEXT", false, false),
            ("Notes", "TEXT", false, false),
            ("Estimate", "DECIMAL", false, false),
            ("ToDo", "DECIMAL", false, false),
            ("Actuals", "DECIMAL", false, false),
            ("Iteration", "OBJECT", false, false),
            ("Release", "OBJECT", false, false),
            ("Recycled", "BOOLEAN", false, true),
            ("Attachments", "COLLECTION", false, true),
            ("Discussion", "COLLECTION", false, true),
        ],
        Type::ConversationPost => &[
            ("Artifact", "OBJECT", true, false),
            ("Text", "TEXT", true, false),
            ("User", "OBJECT", false, true),
            ("PostNumber", "INTEGER", false, true),
        ],
        Type::Attachment => &[
            ("Artifact", "OBJECT", false, false),
            ("TestCaseResult", "OBJECT", false, false),
            ("Content", "OBJECT", true, false),
            ("Name", "STRING", true, false),
            ("ContentType", "STRING", true, false),
            ("Size", "INTEGER", true, false),
            ("Description", "TEXT", false, false),
            ("User", "OBJECT", false, false),
        ],
        Type::AttachmentContent => &[("Content", "BINARY_DATA", true, false)],
    }
}

/// The required attributes of `ty`, in the order Rally is assumed to report them.
pub(super) fn required(ty: Type) -> impl Iterator<Item = &'static str> {
    attributes(ty)
        .iter()
        .filter(|(_, _, required, ro)| *required && !*ro)
        .map(|(n, ..)| *n)
}

/// The types a reference attribute may point at; the first is the one a dotted query path
/// (`TestCase.FormattedID`) follows. Empty: not a reference, or not checked.
pub(super) fn ref_targets(ty: Type, attr: &str) -> &'static [Type] {
    match (ty, attr) {
        (_, "Project" | "DefaultProject") => &[Type::Project],
        (_, "Workspace" | "DefaultWorkspace") => &[Type::Workspace],
        (_, "Subscription") => &[Type::Subscription],
        (_, "TestCase") => &[Type::TestCase],
        (_, "TestSet") => &[Type::TestSet],
        (_, "Tester" | "Owner" | "User") => &[Type::User],
        (_, "LastResult" | "TestCaseResult") => &[Type::TestCaseResult],
        (_, "UserProfile") => &[Type::UserProfile],
        (_, "WorkProduct") => &[Type::HierarchicalRequirement, Type::Defect],
        (_, "Iteration") => &[Type::Iteration],
        (_, "Release") => &[Type::Release],
        (_, "Artifact") => ARTIFACTS,
        (Type::Attachment, "Content") => &[Type::AttachmentContent],
        _ => &[],
    }
}

/// True if `name` is an attribute of `ty` (standard or a declared custom field).
pub(super) fn has_attribute(ty: Type, name: &str, custom: &[String]) -> bool {
    COMMON
        .iter()
        .chain(attributes(ty))
        .any(|(n, ..)| *n == name)
        || custom.iter().any(|c| c == name)
}

/// Attribute type name (`OBJECT`, `DATE`, ...) or `None` if unknown.
pub(super) fn attribute_type(ty: Type, name: &str) -> Option<&'static str> {
    COMMON
        .iter()
        .chain(attributes(ty))
        .find(|(n, ..)| *n == name)
        .map(|(_, t, ..)| *t)
}

/// Writable attributes the client may set on create/update of `ty`.
pub(super) fn read_only(ty: Type, name: &str) -> bool {
    COMMON
        .iter()
        .chain(attributes(ty))
        .find(|(n, ..)| *n == name)
        .is_some_and(|(_, _, _, ro)| *ro)
        && name != "Workspace"
}

/// One AttributeDefinition: `attr` is (name, type, required, read-only).
fn attr_def(
    base: &str,
    ty: Type,
    n: usize,
    attr: (&str, &str, bool, bool),
    custom: bool,
    allowed: &[String],
) -> Value {
    let (name, kind, required, ro) = attr;
    let allowed_values: Vec<Value> = allowed
        .iter()
        .map(|v| json!({"_rallyAPIMajor": "2", "_rallyAPIMinor": "0", "StringValue": v}))
        .collect();
    json!({
        "_rallyAPIMajor": "2", "_rallyAPIMinor": "0",
        "_ref": format!("{base}/attributedefinition/{}", 90_000 + (ty as usize) * 100 + n),
        "_refObjectName": name, "_type": "AttributeDefinition",
        "ElementName": name, "Name": name, "AttributeType": kind, "Custom": custom,
        "Required": required, "ReadOnly": ro, "Filterable": true, "Hidden": false, "Sortable": true,
        "SchemaType": kind.to_ascii_lowercase(), "Constrained": !allowed.is_empty(),
        "AllowedValueType": if allowed.is_empty() { Value::Null } else { json!({"_refObjectName": "String"}) },
        "AllowedValues": allowed_values, "MaxLength": if kind == "TEXT" { 32768 } else { 256 }, "MaxFractionalDigits": if kind == "DECIMAL" { 3 } else { -1 },
    })
}

/// The schema service answer for a workspace; refs under `base` (`<origin>/slm/webservice/<v>`).
pub(super) fn document(base: &str, workspace_oid: i64, store: &Store) -> Value {
    let mut results = Vec::new();
    for (ordinal, ty) in super::model::ALL_TYPES.iter().enumerate() {
        let mut attrs = Vec::new();
        for (n, (name, kind, required, ro)) in COMMON.iter().chain(attributes(*ty)).enumerate() {
            let allowed = allowed_values(store, *ty, name).unwrap_or_default();
            attrs.push(attr_def(
                base,
                *ty,
                n,
                (name, kind, *required, *ro),
                false,
                &allowed,
            ));
        }
        for (n, name) in store.custom_fields(*ty).iter().enumerate() {
            attrs.push(attr_def(
                base,
                *ty,
                50 + n,
                (name, "STRING", false, false),
                true,
                &[],
            ));
        }
        let name = ty.name();
        let display = match ty {
            Type::HierarchicalRequirement => "User Story".to_string(),
            Type::TestCase => "Test Case".into(),
            Type::TestCaseResult => "Test Case Result".into(),
            Type::TestSet => "Test Set".into(),
            Type::ConversationPost => "Conversation Post".into(),
            Type::AttachmentContent => "Attachment Content".into(),
            other => other.name().into(),
        };
        let parent = if ty.is_artifact() {
            "Artifact"
        } else {
            "Workspace Domain Object"
        };
        results.push(json!({
            "_rallyAPIMajor": "2", "_rallyAPIMinor": "0",
            "_ref": format!("{base}/typedefinition/{}", 80_000 + ordinal),
            "_refObjectName": display, "_type": "TypeDefinition",
            "ObjectID": 80_000 + ordinal,
            "ElementName": name, "Name": display, "DisplayName": display, "TypePath": name,
            "IDPrefix": ty.id_prefix().unwrap_or(""), "Abstract": false,
            "Parent": {"_rallyAPIMajor": "2", "_rallyAPIMinor": "0", "_refObjectName": parent, "_type": "TypeDefinition"},
            "Creatable": true, "Queryable": true, "ReadOnly": false, "Deletable": true, "Restorable": ty.is_artifact(),
            "Ordinal": ordinal as i64, "RevisionHistory": null,
            "Workspace": {"_rallyAPIMajor": "2", "_rallyAPIMinor": "0", "_ref": format!("{base}/workspace/{workspace_oid}"), "_type": "Workspace"},
            "Attributes": attrs,
        }));
    }
    let total = results.len();
    json!({"QueryResult": {
        "_rallyAPIMajor": "2", "_rallyAPIMinor": "0", "Errors": [], "Warnings": [],
        "TotalResultCount": total, "StartIndex": 1, "PageSize": total, "Results": results,
    }})
}
