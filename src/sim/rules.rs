//! The rules Rally applies before it stores an object, per type: what it fills in (defaults,
//! the caller as `User`, the `Project` a result or task inherits, FormattedIDs, a post's
//! number), which attributes are required, which values a constrained attribute allows, which
//! object must be readable behind a reference, and who may write in which project. Errors are
//! Rally's wordings, HTTP 200 + `Errors`; the sources for each are in docs/simulator.md.

use base64::Engine;
use serde_json::{Map, Value, json};

use super::model::{Type, make_ref, oids, ref_target};
use super::ops::Ctx;
use super::schema;
use super::store::Store;

/// What the write does to the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Create,
    Update(i64),
}

/// Rally's answer when a reference names nothing readable (KB 57630).
pub(super) const UNREADABLE_REF: &str = "Could not read: Could not read referenced object null";

/// Types a client may create; the others are set up by administrators, not through WSAPI tests.
fn creatable(ty: Type) -> bool {
    ty.is_artifact()
        || matches!(
            ty,
            Type::TestCaseResult
                | Type::Iteration
                | Type::Release
                | Type::ConversationPost
                | Type::Attachment
                | Type::AttachmentContent
        )
}

pub(super) fn missing(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        _ => false,
    }
}

/// Values a constrained attribute allows (`None`: not constrained).
pub(super) fn allowed_values(store: &Store, ty: Type, attr: &str) -> Option<Vec<String>> {
    let fixed: &[&str] = match (ty, attr) {
        (Type::TestCaseResult, "Verdict") => return Some(store.fixtures.verdicts.clone()),
        (Type::Iteration, "State") => &["Planning", "Committed", "Accepted"],
        (Type::Release, "State") => &["Planning", "Active", "Accepted"],
        (Type::Task, "State") => &["Defined", "In-Progress", "Completed"],
        _ => return None,
    };
    Some(fixed.iter().map(|s| s.to_string()).collect())
}

/// Checks the attributes an object will be stored with (the client's changes already applied)
/// and fills in what Rally derives.
pub(super) fn check(
    store: &Store,
    ctx: &Ctx,
    ty: Type,
    action: Action,
    fields: &mut Map<String, Value>,
) -> Result<(), String> {
    if action == Action::Create && !creatable(ty) {
        return Err(format!("Not authorized to create: {}", ty.name()));
    }
    defaults(ctx, ty, action, fields);
    for attr in schema::required(ty) {
        if missing(fields.get(attr)) {
            return Err(format!(
                "Validation error: {}.{attr} should not be null",
                ty.name()
            ));
        }
    }
    for (attr, v) in fields.iter() {
        if let (Some(allowed), Some(s)) = (allowed_values(store, ty, attr), v.as_str())
            && !allowed.iter().any(|a| a == s)
        {
            return Err(format!(
                "Validation error: {}.{attr} contains an invalid value: \"{s}\"",
                ty.name()
            ));
        }
    }
    if ty == Type::AttachmentContent {
        let content = fields.get("Content").and_then(Value::as_str).unwrap_or("");
        if base64::engine::general_purpose::STANDARD
            .decode(content.trim())
            .is_err()
        {
            return Err("Validation error: AttachmentContent.Content is not valid base64".into());
        }
    }
    if ty == Type::Attachment
        && ctx.switches.attachment_needs_owner
        && missing(fields.get("Artifact"))
        && missing(fields.get("TestCaseResult"))
    {
        return Err("Validation error: Attachment.Artifact should not be null".into());
    }
    let project = governing_project(store, ctx, ty, fields)?;
    if let Some(p) = project
        && (ty.is_artifact() || has_project_attribute(ty))
    {
        fields.insert("Project".into(), make_ref(Type::Project, p));
    }
    if !may_write(store, ctx, ty, project, action) {
        return Err(match action {
            Action::Create => format!("Not authorized to create: {}", ty.name()),
            // KB 115241: the refusal names the object.
            Action::Update(oid) => format!("Not authorized to update: {} {oid}", ty.name()),
        });
    }
    if action == Action::Create {
        on_create(store, ty, fields);
    }
    Ok(())
}

/// Types that carry a `Project` attribute of their own (artifacts do too).
fn has_project_attribute(ty: Type) -> bool {
    matches!(ty, Type::TestCaseResult | Type::Iteration | Type::Release)
}

/// What Rally fills in when the client leaves it out.
fn defaults(ctx: &Ctx, ty: Type, action: Action, fields: &mut Map<String, Value>) {
    let mut default = |k: &str, v: Value| {
        if missing(fields.get(k)) {
            fields.insert(k.into(), v);
        }
    };
    match ty {
        Type::Iteration | Type::Release => default("State", json!("Planning")),
        Type::Task => default("State", json!("Defined")),
        Type::ConversationPost | Type::Attachment if action == Action::Create => {
            default("User", make_ref(Type::User, ctx.principal.user))
        }
        _ => {}
    }
    if action == Action::Create
        && (ty.is_artifact() || matches!(ty, Type::Iteration | Type::Release))
    {
        // Without a Project the object lands in the fixtures' main project.
        if missing(fields.get("Project")) {
            fields.insert("Project".into(), make_ref(Type::Project, oids::SIM_PROJECT));
        }
    }
}

/// The readable object a reference attribute names, or Rally's refusal.
fn referenced(
    store: &Store,
    ctx: &Ctx,
    fields: &Map<String, Value>,
    attr: &str,
) -> Result<Option<i64>, String> {
    let Some(v) = fields.get(attr).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let (ty, oid) = ref_target(v).ok_or(UNREADABLE_REF)?;
    store
        .visible(Some(ty), oid, ctx.instant)
        .map(|_| Some(oid))
        .ok_or_else(|| UNREADABLE_REF.to_string())
}

/// The project whose permissions govern the write: the object's own, or the one it inherits
/// from the object it belongs to (a result's test case, a task's work product, a post's or an
/// attachment's artifact).
fn governing_project(
    store: &Store,
    ctx: &Ctx,
    ty: Type,
    fields: &Map<String, Value>,
) -> Result<Option<i64>, String> {
    let parent = match ty {
        Type::TestCaseResult => referenced(store, ctx, fields, "TestCase")?,
        Type::Task => referenced(store, ctx, fields, "WorkProduct")?,
        Type::ConversationPost => referenced(store, ctx, fields, "Artifact")?,
        Type::Attachment => match referenced(store, ctx, fields, "Artifact")? {
            Some(a) => Some(a),
            None => referenced(store, ctx, fields, "TestCaseResult")?,
        },
        _ => {
            return Ok(fields.get("Project").and_then(ref_target).map(|(_, p)| p));
        }
    };
    Ok(parent
        .and_then(|oid| store.objects.get(&oid))
        .and_then(|o| store.project_of(o)))
}

/// Editors and admins of an open project may write in it (KB 115241, KB 131267); objects that
/// belong to no project (attachment contents) may be written by any full-access caller, and a
/// user may update their own User.
fn may_write(store: &Store, ctx: &Ctx, ty: Type, project: Option<i64>, action: Action) -> bool {
    match project {
        Some(p) => {
            store.project_open(p)
                && matches!(
                    store.project_role(ctx.principal.user, p).as_deref(),
                    Some("Editor") | Some("Admin")
                )
        }
        None => match (ty, action) {
            (Type::AttachmentContent, _) => true,
            // An attachment linked to nothing yet (pyral allows it) belongs to no project.
            (Type::Attachment, _) => true,
            (Type::User, Action::Update(oid)) => oid == ctx.principal.user,
            _ => false,
        },
    }
}

/// Attributes Rally sets on a new object.
fn on_create(store: &Store, ty: Type, fields: &mut Map<String, Value>) {
    if let Some(prefix) = ty.id_prefix() {
        let next = store
            .objects_of(ty)
            .filter_map(|o| {
                o.str_field("FormattedID")?
                    .strip_prefix(prefix)?
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .unwrap_or(0)
            + 1;
        fields.insert("FormattedID".into(), json!(format!("{prefix}{next}")));
        fields.insert("Recycled".into(), json!(false));
    }
    let null = |fields: &mut Map<String, Value>, keys: &[&str]| {
        for k in keys {
            fields.entry(*k).or_insert(Value::Null);
        }
    };
    match ty {
        Type::TestCase => {
            for k in ["LastVerdict", "LastBuild", "LastRun", "LastResult"] {
                fields.insert(k.into(), Value::Null);
            }
        }
        Type::TestCaseResult => null(fields, &["Tester", "TestSet", "Duration", "Notes"]),
        Type::ConversationPost => {
            let artifact = fields.get("Artifact").and_then(ref_target);
            let posts = store
                .objects_of(Type::ConversationPost)
                .filter(|p| p.get_ref("Artifact") == artifact)
                .count();
            fields.insert("PostNumber".into(), json!(posts + 1));
        }
        _ => {}
    }
}
