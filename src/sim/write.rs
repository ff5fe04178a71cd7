//! The write side of WSAPI on the store: create, update, delete and collection add/remove. A
//! body's attributes are converted the way Rally converts them (refs in four spellings, dates to
//! UTC with milliseconds, numbers sent for string attributes kept as strings, read-only and
//! unknown attributes ignored with a warning), then checked by `rules`, then stored. Each
//! returns the envelope Rally would; faults on TestCaseResult writes are `pipeline`'s.

use serde_json::{Map, Value, json};

use super::faults::UNIT_OF_WORK;
use super::model::{Obj, Type, format_date, make_ref, parse_date};
use super::ops::{Ctx, Done, done, err};
use super::render::Fetch;
use super::rules::{self, Action, UNREADABLE_REF};
use super::schema;
use super::store::{Store, uuid_for};
use crate::wsapi::{Envelope, error_envelope};

/// Finds the single attribute map under a case-insensitive root key.
pub(super) fn body_fields(body: &Value, ty: Type) -> Result<(String, Map<String, Value>), String> {
    let Some(obj) = body.as_object() else {
        return Err("Cannot parse input stream due to I/O error as JSON document: the body must be a JSON object".into());
    };
    let found = obj
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(ty.name()) || Type::parse(k) == Some(ty));
    match found {
        Some((k, Value::Object(m))) => Ok((k.clone(), m.clone())),
        Some((k, _)) => Err(format!(
            "Cannot parse input stream due to I/O error as JSON document: {k} must be an object"
        )),
        None => Err(format!(
            "Cannot parse input stream due to I/O error as JSON document: expected root key \"{}\"",
            ty.name()
        )),
    }
}

/// A reference attribute's value: the ref in any spelling, to an object that is readable and of
/// a type the attribute may point at.
fn reference(store: &Store, ctx: &Ctx, ty: Type, attr: &str, v: &Value) -> Result<Value, String> {
    let Some((rty, oid)) = store.parse_ref(v) else {
        return Err(format!(
            "Could not convert: Cannot parse object reference from \"{}\"",
            v.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string())
        ));
    };
    let targets = schema::ref_targets(ty, attr);
    match store.visible(Some(rty), oid, ctx.instant) {
        Some(obj) if targets.is_empty() || targets.contains(&obj.ty) => Ok(make_ref(rty, oid)),
        _ => Err(UNREADABLE_REF.into()),
    }
}

/// A value for a STRING or TEXT attribute: numbers and booleans are kept as their text, as
/// Rally does (`"Build": 7` is stored and returned as `"7"`).
fn text(v: &Value) -> Value {
    match v {
        Value::Number(n) => json!(n.to_string()),
        Value::Bool(b) => json!(b.to_string()),
        other => other.clone(),
    }
}

/// Applies client-sent attributes to `fields`; returns warnings, or the first error.
fn apply_fields(
    store: &Store,
    ctx: &Ctx,
    ty: Type,
    root: &str,
    input: &Map<String, Value>,
    fields: &mut Map<String, Value>,
) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    let custom = store.custom_fields(ty);
    let invalid = |k: &str, what: &str| format!("Validation error: {}.{k} {what}", ty.name());
    for (k, v) in input {
        let known = schema::has_attribute(ty, k, &custom) || k.starts_with("c_");
        if !known || schema::read_only(ty, k) {
            warnings.push(format!(
                "Ignored JSON element {root}.{k} during processing of this request."
            ));
            continue;
        }
        let empty = v.is_null() || v.as_str() == Some("");
        let value = match schema::attribute_type(ty, k) {
            Some("OBJECT") if empty => Value::Null,
            Some("OBJECT") => reference(store, ctx, ty, k, v)?,
            Some("DATE") if empty => Value::Null,
            Some("DATE") => match v.as_str().and_then(parse_date) {
                Some(d) => json!(format_date(d)),
                // KB 77114: Rally answers a badly formatted result Date with its
                // unit-of-work text, the same as one of its conflict wordings.
                None if ty == Type::TestCaseResult && ctx.switches.bad_date_unit_of_work => {
                    return Err(UNIT_OF_WORK.into());
                }
                None => {
                    return Err(invalid(
                        k,
                        &format!("must be a valid ISO 8601 date: {}", text(v)),
                    ));
                }
            },
            Some("DECIMAL" | "INTEGER") => match v {
                Value::Number(_) | Value::Null => v.clone(),
                Value::String(s) if s.is_empty() => Value::Null,
                Value::String(s) => match s.parse::<f64>() {
                    Ok(n) => json!(n),
                    Err(_) => return Err(invalid(k, "must be a number")),
                },
                _ => return Err(invalid(k, "must be a number")),
            },
            Some("STRING" | "TEXT") => text(v),
            // Custom fields are declared as strings in the schema service.
            None if k.starts_with("c_") => text(v),
            _ => v.clone(),
        };
        fields.insert(k.clone(), value);
    }
    Ok(warnings)
}

/// `POST|PUT /<type>/create`. `persist: false` answers as if stored (the dropped-write fault).
pub(super) fn create(store: &mut Store, ctx: &Ctx, ty: Type, body: &Value, persist: bool) -> Done {
    let (root, input) = match body_fields(body, ty) {
        Ok(x) => x,
        Err(e) => return err(Envelope::Create, e),
    };
    let mut fields = Map::new();
    let warnings = match apply_fields(store, ctx, ty, &root, &input, &mut fields) {
        Ok(w) => w,
        Err(e) => return err(Envelope::Create, e),
    };
    fields
        .entry("Workspace")
        .or_insert_with(|| make_ref(Type::Workspace, super::model::oids::WORKSPACE));
    if let Err(e) = rules::check(store, ctx, ty, Action::Create, &mut fields) {
        return err(Envelope::Create, e);
    }
    let oid = store.allocate();
    let obj = Obj {
        ty,
        oid,
        uuid: uuid_for(oid),
        version: 1,
        created: ctx.now,
        visible_at: ctx.read_lag.map(|lag| ctx.instant + lag),
        fields,
    };
    let rendered = ctx.renderer(store).created(&obj, &ctx.fetch());
    let tc = obj.get_ref("TestCase").map(|(_, t)| t);
    if persist {
        store.insert(obj);
        if let (Type::TestCaseResult, Some(tc)) = (ty, tc) {
            store.rollup_after_create(tc, oid);
        }
    }
    Done {
        body: json!({"CreateResult": {
            "_rallyAPIMajor": "2", "_rallyAPIMinor": "0", "Errors": [], "Warnings": warnings, "Object": rendered,
        }}),
        stored: (persist && ty == Type::TestCaseResult).then_some(oid),
    }
}

/// `POST|PUT /<type>/<id>`.
pub(super) fn update(store: &mut Store, ctx: &Ctx, ty: Type, id: &str, body: &Value) -> Done {
    let Some(existing) = store
        .resolve_id(id)
        .and_then(|o| store.visible(Some(ty), o, ctx.instant))
        .cloned()
    else {
        return err(
            Envelope::Operation,
            format!(
                "Could not read: Could not read {} {id} to update.",
                ty.name()
            ),
        );
    };
    let (root, input) = match body_fields(body, ty) {
        Ok(x) => x,
        Err(e) => return err(Envelope::Operation, e),
    };
    let mut fields = existing.fields.clone();
    let warnings = match apply_fields(store, ctx, ty, &root, &input, &mut fields) {
        Ok(w) => w,
        Err(e) => return err(Envelope::Operation, e),
    };
    let oid = existing.oid;
    if let Err(e) = rules::check(store, ctx, ty, Action::Update(oid), &mut fields) {
        return err(Envelope::Operation, e);
    }
    let old_tc = existing.get_ref("TestCase").map(|(_, t)| t);
    let mut obj = existing;
    obj.fields = fields;
    obj.version += 1;
    let new_tc = obj.get_ref("TestCase").map(|(_, t)| t);
    store.insert(obj);
    if ty == Type::TestCaseResult {
        for tc in [old_tc, new_tc].into_iter().flatten() {
            store.update_rollup(tc);
        }
    }
    let Some(obj) = store.objects.get(&oid) else {
        return err(Envelope::Operation, "Cannot find object to read");
    };
    let object = ctx.renderer(store).object(obj, &Fetch::All, false);
    Done {
        body: json!({"OperationResult": {
            "_rallyAPIMajor": "2", "_rallyAPIMinor": "0", "Errors": [], "Warnings": warnings, "Object": object,
        }}),
        stored: (ty == Type::TestCaseResult).then_some(oid),
    }
}

/// `DELETE /<type>/<id>`: artifacts go to the recycle bin, other objects are removed.
pub(super) fn delete(store: &mut Store, ctx: &Ctx, ty: Type, id: &str) -> Done {
    let Some(obj) = store
        .resolve_id(id)
        .and_then(|o| store.visible(Some(ty), o, ctx.instant))
    else {
        return err(Envelope::Operation, "Object to delete cannot be null");
    };
    let oid = obj.oid;
    let allowed = match store.project_of(obj) {
        Some(p) => {
            store.project_open(p)
                && matches!(
                    store.project_role(ctx.principal.user, p).as_deref(),
                    Some("Editor") | Some("Admin")
                )
        }
        None => matches!(ty, Type::AttachmentContent | Type::Attachment),
    };
    if !allowed {
        return err(
            Envelope::Operation,
            format!("Not authorized to delete: {} {oid}", ty.name()),
        );
    }
    if ty.is_artifact() {
        if let Some(obj) = store.objects.get_mut(&oid) {
            obj.fields.insert("Recycled".into(), json!(true));
            obj.version += 1;
        }
    } else {
        store.remove(oid);
    }
    done(error_envelope(Envelope::Operation, &[], &[]))
}

/// Collections whose `add` takes new-object maps: (parent type, collection) → (member type, the
/// member's attribute that links it to the parent).
fn creates_members(ty: Type, collection: &str) -> Option<(Type, &'static str)> {
    match (ty, collection.to_ascii_lowercase().as_str()) {
        (Type::TestCase, "results") => Some((Type::TestCaseResult, "TestCase")),
        (Type::HierarchicalRequirement | Type::Defect, "tasks") => {
            Some((Type::Task, "WorkProduct"))
        }
        _ => None,
    }
}

/// `POST /<type>/<id>/<Collection>/add|remove`: new-object maps create members (a test case's
/// Results, a story's or defect's Tasks); a test set's TestCases take refs.
pub(super) fn collection_edit(
    store: &mut Store,
    ctx: &Ctx,
    ty: Type,
    id: &str,
    collection: &str,
    add: bool,
    body: &Value,
) -> Done {
    let Some(oid) = store
        .resolve_id(id)
        .filter(|o| store.visible(Some(ty), *o, ctx.instant).is_some())
    else {
        return err(Envelope::Operation, "Cannot find object to read");
    };
    let items = body
        .get("CollectionItems")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut results = Vec::new();
    let mut errors = Vec::new();
    match (creates_members(ty, collection), ty, add) {
        (Some((member, link)), _, true) => {
            for item in items {
                let mut map = item.as_object().cloned().unwrap_or_default();
                map.insert(link.into(), json!(format!("/{}/{oid}", ty.path())));
                let d = create(store, ctx, member, &json!({member.name(): map}), true);
                match d.body["CreateResult"]["Errors"].as_array() {
                    Some(e) if !e.is_empty() => {
                        errors.extend(e.iter().filter_map(|x| x.as_str().map(str::to_string)))
                    }
                    _ => results.push(d.body["CreateResult"]["Object"].clone()),
                }
            }
        }
        (None, Type::TestSet, _) if collection.eq_ignore_ascii_case("testcases") => {
            edit_members(store, oid, &items, add)
        }
        _ => errors.push(format!(
            "Cannot modify collection {collection} on {}",
            ty.name()
        )),
    }
    done(json!({"OperationResult": {
        "_rallyAPIMajor": "2", "_rallyAPIMinor": "0", "Errors": errors, "Warnings": [], "Results": results,
    }}))
}

/// Adds or removes test cases (refs) of a test set.
fn edit_members(store: &mut Store, test_set: i64, items: &[Value], add: bool) {
    let refs: Vec<i64> = items
        .iter()
        .filter_map(|i| store.parse_ref(i))
        .map(|(_, o)| o)
        .collect();
    let Some(ts) = store.objects.get_mut(&test_set) else {
        return;
    };
    let mut members: Vec<Value> = ts
        .fields
        .get("__members")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for r in refs {
        let v = make_ref(Type::TestCase, r);
        if add && !members.contains(&v) {
            members.push(v);
        } else if !add {
            members.retain(|m| *m != v);
        }
    }
    ts.fields.insert("__members".into(), Value::Array(members));
    ts.version += 1;
}
