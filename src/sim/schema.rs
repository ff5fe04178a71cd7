//! Type definitions: which attributes each simulated type has (used to reject queries on unknown
//! attributes the way Rally does) and the schema service document pyral reads at start-up
//! (`/slm/schema/v2.0/workspace/<oid>`, rally-wsapi.md §5.8).

use serde_json::{Value, json};

use super::model::Type;

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
pub fn attributes(ty: Type) -> &'static [Attr] {
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
        ],
        Type::TestSet => &[
            ("FormattedID", "STRING", false, true),
            ("Name", "STRING", true, false),
            ("Project", "OBJECT", false, false),
            ("TestCases", "COLLECTION", false, false),
            ("Results", "COLLECTION", false, true),
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
        ],
        Type::HierarchicalRequirement | Type::Defect => &[
            ("FormattedID", "STRING", false, true),
            ("Name", "STRING", true, false),
            ("Project", "OBJECT", false, false),
            ("Owner", "OBJECT", false, false),
            ("Description", "TEXT", false, false),
        ],
    }
}

/// True if `name` is an attribute of `ty` (standard or a declared custom field).
pub fn has_attribute(ty: Type, name: &str, custom: &[String]) -> bool {
    COMMON
        .iter()
        .chain(attributes(ty))
        .any(|(n, ..)| *n == name)
        || custom.iter().any(|c| c == name)
}

/// Attribute type name (`OBJECT`, `DATE`, ...) or `None` if unknown.
pub fn attribute_type(ty: Type, name: &str) -> Option<&'static str> {
    COMMON
        .iter()
        .chain(attributes(ty))
        .find(|(n, ..)| *n == name)
        .map(|(_, t, ..)| *t)
}

/// Writable attributes the client may set on create/update of `ty`.
pub fn read_only(ty: Type, name: &str) -> bool {
    COMMON
        .iter()
        .chain(attributes(ty))
        .find(|(n, ..)| *n == name)
        .is_some_and(|(_, _, _, ro)| *ro)
        && name != "Workspace"
}

/// One AttributeDefinition: `attr` is (name, type, required, read-only).
fn attr_def(
    origin: &str,
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
        "_ref": format!("{origin}/slm/webservice/v2.0/attributedefinition/{}", 90_000 + (ty as usize) * 100 + n),
        "_refObjectName": name, "_type": "AttributeDefinition",
        "ElementName": name, "Name": name, "AttributeType": kind, "Custom": custom,
        "Required": required, "ReadOnly": ro, "Filterable": true, "Hidden": false, "Sortable": true,
        "SchemaType": kind.to_ascii_lowercase(), "Constrained": !allowed.is_empty(),
        "AllowedValueType": if allowed.is_empty() { Value::Null } else { json!({"_refObjectName": "String"}) },
        "AllowedValues": allowed_values, "MaxLength": if kind == "TEXT" { 32768 } else { 256 }, "MaxFractionalDigits": if kind == "DECIMAL" { 3 } else { -1 },
    })
}

/// The schema service answer for a workspace.
pub fn document(
    origin: &str,
    workspace_oid: i64,
    verdicts: &[String],
    custom: &dyn Fn(Type) -> Vec<String>,
) -> Value {
    let mut results = Vec::new();
    for (ordinal, ty) in super::model::ALL_TYPES.iter().enumerate() {
        let mut attrs = Vec::new();
        for (n, (name, kind, required, ro)) in COMMON.iter().chain(attributes(*ty)).enumerate() {
            let allowed: Vec<String> = if *ty == Type::TestCaseResult && *name == "Verdict" {
                verdicts.to_vec()
            } else {
                vec![]
            };
            attrs.push(attr_def(
                origin,
                *ty,
                n,
                (name, kind, *required, *ro),
                false,
                &allowed,
            ));
        }
        for (n, name) in custom(*ty).iter().enumerate() {
            attrs.push(attr_def(
                origin,
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
            other => other.name().into(),
        };
        results.push(json!({
            "_rallyAPIMajor": "2", "_rallyAPIMinor": "0",
            "_ref": format!("{origin}/slm/webservice/v2.0/typedefinition/{}", 80_000 + ordinal),
            "_refObjectName": display, "_type": "TypeDefinition",
            "ObjectID": 80_000 + ordinal,
            "ElementName": name, "Name": display, "DisplayName": display, "TypePath": name,
            "IDPrefix": ty.id_prefix().unwrap_or(""), "Abstract": false,
            "Parent": {"_rallyAPIMajor": "2", "_rallyAPIMinor": "0", "_refObjectName": if ty.id_prefix().is_some() { "Artifact" } else { "Workspace Domain Object" }, "_type": "TypeDefinition"},
            "Creatable": true, "Queryable": true, "ReadOnly": false, "Deletable": true, "Restorable": ty.id_prefix().is_some(),
            "Ordinal": ordinal as i64, "RevisionHistory": null,
            "Workspace": {"_rallyAPIMajor": "2", "_rallyAPIMinor": "0", "_ref": format!("{origin}/slm/webservice/v2.0/workspace/{workspace_oid}"), "_type": "Workspace"},
            "Attributes": attrs,
        }));
    }
    let total = results.len();
    json!({"QueryResult": {
        "_rallyAPIMajor": "2", "_rallyAPIMinor": "0", "Errors": [], "Warnings": [],
        "TotalResultCount": total, "StartIndex": 1, "PageSize": total, "Results": results,
    }})
}
