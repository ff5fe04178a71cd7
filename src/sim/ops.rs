//! WSAPI operations on the store: read, query (with query language, fetch, order, paging,
//! project scope), create, update, delete, collections, and the TestCaseResult rules (required
//! fields, allowed verdicts, permissions, closed projects, roll-ups). Each returns the JSON
//! envelope Rally would; HTTP plumbing, auth and faults live in `sim.rs`.

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::model::{Obj, Type, format_date, make_ref, oids, parse_date};
use super::query::{self, Seen};
use super::render::{Fetch, Renderer};
use super::schema;
use super::store::{Principal, Store, uuid_for};
use crate::wsapi::{Envelope, error_envelope};

/// Request context shared by the operations.
pub struct Ctx<'a> {
    pub origin: &'a str,
    pub principal: &'a Principal,
    /// Query parameters, names lower-cased, percent-decoded once.
    pub params: &'a HashMap<String, String>,
    pub now: OffsetDateTime,
    pub instant: tokio::time::Instant,
    pub read_lag: Option<std::time::Duration>,
}

impl Ctx<'_> {
    fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    fn fetch(&self) -> Fetch {
        Fetch::parse(self.param("fetch"))
    }
}

/// The result of an operation: its envelope, and whether a TestCaseResult was stored.
pub struct Done {
    pub body: Value,
    pub stored: Option<i64>,
}

fn done(body: Value) -> Done {
    Done { body, stored: None }
}

fn err(kind: Envelope, msg: impl Into<String>) -> Done {
    done(error_envelope(kind, &[msg.into()], &[]))
}

/// `GET /<type>/<id>`.
pub fn read(store: &Store, ctx: &Ctx, ty: Type, id: &str) -> Done {
    let found = store
        .resolve_id(id)
        .and_then(|oid| store.visible(Some(ty), oid, ctx.instant));
    match found {
        Some(obj) => {
            let r = Renderer {
                store,
                origin: ctx.origin,
                now: ctx.now,
            };
            // A by-OID read without fetch returns the full object (rally-wsapi.md §5.1).
            let fetch = match ctx.param("fetch") {
                None => Fetch::All,
                Some(_) => ctx.fetch(),
            };
            done(r.single(obj, &fetch))
        }
        None => err(Envelope::Operation, "Cannot find object to read"),
    }
}

/// `GET /user` or `GET /subscription` without a query: the caller's own object.
pub fn singleton(store: &Store, ctx: &Ctx, ty: Type) -> Done {
    let oid = match ty {
        Type::User => ctx.principal.user,
        _ => oids::SUBSCRIPTION,
    };
    match store.objects.get(&oid) {
        Some(obj) => {
            let r = Renderer {
                store,
                origin: ctx.origin,
                now: ctx.now,
            };
            let fetch = match ctx.fetch() {
                Fetch::Shell => Fetch::All,
                f => f,
            };
            done(r.single(obj, &fetch))
        }
        None => err(Envelope::Operation, "Cannot find object to read"),
    }
}

/// Resolves an attribute path on an object for the query evaluator.
fn lookup(store: &Store, obj: &Obj, path: &[String]) -> Seen {
    let mut cur = obj;
    for (i, seg) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        let v = match seg.as_str() {
            "ObjectID" => return Seen::Number(cur.oid as f64),
            "ObjectUUID" => return Seen::Text(cur.uuid.clone()),
            "CreationDate" => return Seen::Text(format_date(cur.created)),
            "VersionId" => return Seen::Text(cur.version.to_string()),
            _ => cur.fields.get(seg.as_str()),
        };
        let Some(v) = v else { return Seen::Null };
        if let Some((ty, oid)) = super::model::ref_target(v) {
            if last {
                return Seen::Ref(ty.path(), oid);
            }
            match store.objects.get(&oid) {
                Some(next) => cur = next,
                None => return Seen::Null,
            }
            continue;
        }
        if !last {
            return Seen::Null;
        }
        return match v {
            Value::Null => Seen::Null,
            Value::Bool(b) => Seen::Bool(*b),
            Value::Number(n) => Seen::Number(n.as_f64().unwrap_or(0.0)),
            Value::String(s) => Seen::Text(s.clone()),
            other => Seen::Text(other.to_string()),
        };
    }
    Seen::Null
}

fn check_paths(store: &Store, ty: Type, expr: &query::Expr) -> Result<(), String> {
    for path in expr.paths() {
        let mut cur = ty;
        for (i, seg) in path.iter().enumerate() {
            let custom = store.custom_fields(cur);
            if !schema::has_attribute(cur, seg, &custom) && !seg.starts_with("c_") {
                return Err(format!(
                    "Could not parse: Could not find attribute \"{seg}\" on type {} in the query segment \"{}\"",
                    cur.name(),
                    path[..=i].join(".")
                ));
            }
            if i + 1 < path.len() {
                // Follow the reference's type for dotted paths.
                cur = match (cur, seg.as_str()) {
                    (_, "Project") => Type::Project,
                    (_, "Workspace") => Type::Workspace,
                    (_, "TestCase") => Type::TestCase,
                    (_, "TestSet") => Type::TestSet,
                    (_, "Tester") | (_, "Owner") | (_, "User") => Type::User,
                    (_, "LastResult") => Type::TestCaseResult,
                    (_, "Subscription") => Type::Subscription,
                    (_, "UserProfile") => Type::UserProfile,
                    (_, "WorkProduct") => Type::HierarchicalRequirement,
                    _ => return Ok(()),
                };
            }
        }
    }
    Ok(())
}

fn in_scope(store: &Store, ctx: &Ctx, obj: &Obj) -> bool {
    if obj.fields.get("Recycled").and_then(Value::as_bool) == Some(true) {
        return false;
    }
    if obj.visible_at.is_some_and(|t| t > ctx.instant) {
        return false;
    }
    let project = obj.get_ref("Project").map(|(_, p)| p);
    if let Some(p) = project {
        // Items of closed projects are never returned by queries (KB 131267).
        if matches!(
            obj.ty,
            Type::TestCase | Type::TestCaseResult | Type::TestSet
        ) && !store.project_open(p)
        {
            return false;
        }
        if let Some(scope) = ctx.param("project")
            && scope != "null"
            && !scope.is_empty()
            && let Some((_, want)) = store.parse_ref(&Value::String(scope.to_string()))
        {
            return want == p;
        }
    }
    true
}

/// A query over `candidates` (all objects of a type, or a collection's members).
pub fn query(store: &Store, ctx: &Ctx, ty: Type, candidates: Option<Vec<i64>>) -> Done {
    let expr = match ctx.param("query").map(str::trim).filter(|q| !q.is_empty()) {
        None => None,
        Some(q) => match query::parse(q).and_then(|e| check_paths(store, ty, &e).map(|_| e)) {
            Ok(e) => Some(e),
            Err(msg) => return err(Envelope::Query, msg),
        },
    };
    let mut items: Vec<&Obj> = match candidates {
        Some(oids) => oids.iter().filter_map(|o| store.objects.get(o)).collect(),
        None => store.objects_of(ty).collect(),
    };
    items.retain(|o| in_scope(store, ctx, o));
    if let Some(expr) = &expr {
        items.retain(|o| query::eval(expr, &|p| lookup(store, o, p)));
    }
    if let Some(order) = ctx.param("order") {
        let keys: Vec<(Vec<String>, bool)> = order
            .split(',')
            .filter_map(|k| {
                let mut parts = k.split_whitespace();
                let field = parts.next()?;
                let desc = parts.next().is_some_and(|d| d.eq_ignore_ascii_case("desc"));
                Some((field.split('.').map(str::to_string).collect(), desc))
            })
            .collect();
        items.sort_by(|a, b| {
            for (path, desc) in &keys {
                let (va, vb) = (lookup(store, a, path), lookup(store, b, path));
                let ord = cmp_seen(&va, &vb);
                let ord = if *desc { ord.reverse() } else { ord };
                if ord != std::cmp::Ordering::Equal {
                    return ord;
                }
            }
            a.oid.cmp(&b.oid)
        });
    }
    let total = items.len();
    let start = ctx
        .param("start")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let pagesize = ctx
        .param("pagesize")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(20)
        .clamp(1, 2000);
    let fetch = ctx.fetch();
    let r = Renderer {
        store,
        origin: ctx.origin,
        now: ctx.now,
    };
    let results: Vec<Value> = items
        .iter()
        .skip(start - 1)
        .take(pagesize)
        .map(|o| r.object(o, &fetch, false))
        .collect();
    done(json!({"QueryResult": {
        "_rallyAPIMajor": "2", "_rallyAPIMinor": "0", "Errors": [], "Warnings": [],
        "TotalResultCount": total, "StartIndex": start, "PageSize": pagesize, "Results": results,
    }}))
}

fn cmp_seen(a: &Seen, b: &Seen) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a, b) {
        (Seen::Number(x), Seen::Number(y)) => x.partial_cmp(y).unwrap_or(Equal),
        (Seen::Text(x), Seen::Text(y)) => match (parse_date(x), parse_date(y)) {
            (Some(p), Some(q)) => p.cmp(&q),
            _ => x.cmp(y),
        },
        (Seen::Null, Seen::Null) => Equal,
        (Seen::Null, _) => Less,
        (_, Seen::Null) => Greater,
        _ => format!("{a:?}").cmp(&format!("{b:?}")),
    }
}

/// Finds the single attribute map under a case-insensitive root key.
pub fn body_fields(body: &Value, ty: Type) -> Result<(String, Map<String, Value>), String> {
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

/// Applies client-sent attributes to `fields`; returns warnings, or the first error.
fn apply_fields(
    store: &Store,
    ty: Type,
    root: &str,
    input: &Map<String, Value>,
    fields: &mut Map<String, Value>,
) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    let custom = store.custom_fields(ty);
    for (k, v) in input {
        let known = schema::has_attribute(ty, k, &custom) || k.starts_with("c_");
        if !known || schema::read_only(ty, k) {
            warnings.push(format!(
                "Ignored JSON element {root}.{k} during processing of this request."
            ));
            continue;
        }
        match schema::attribute_type(ty, k) {
            Some("OBJECT") => {
                if v.is_null() || v.as_str() == Some("") {
                    fields.insert(k.clone(), Value::Null);
                    continue;
                }
                match store.parse_ref(v) {
                    Some((rty, oid)) => {
                        fields.insert(k.clone(), make_ref(rty, oid));
                    }
                    None => {
                        return Err(format!(
                            "Could not convert: Cannot parse object reference from \"{}\"",
                            v.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string())
                        ));
                    }
                }
            }
            Some("DATE") => match v.as_str() {
                Some(s) if !s.is_empty() => match parse_date(s) {
                    Some(d) => {
                        fields.insert(k.clone(), json!(format_date(d)));
                    }
                    None => {
                        return Err(format!(
                            "Validation error: {}.{k} must be a valid ISO 8601 date: \"{s}\"",
                            ty.name()
                        ));
                    }
                },
                _ => {
                    fields.insert(k.clone(), Value::Null);
                }
            },
            Some("DECIMAL") | Some("INTEGER") => {
                let n = match v {
                    Value::Number(_) | Value::Null => v.clone(),
                    Value::String(s) if s.is_empty() => Value::Null,
                    Value::String(s) => match s.parse::<f64>() {
                        Ok(n) => json!(n),
                        Err(_) => {
                            return Err(format!(
                                "Validation error: {}.{k} must be a number",
                                ty.name()
                            ));
                        }
                    },
                    _ => {
                        return Err(format!(
                            "Validation error: {}.{k} must be a number",
                            ty.name()
                        ));
                    }
                };
                fields.insert(k.clone(), n);
            }
            _ => {
                fields.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(warnings)
}

fn missing(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        _ => false,
    }
}

/// Validates a TestCaseResult's attributes and the caller's right to write it.
fn check_result(
    store: &Store,
    ctx: &Ctx,
    fields: &Map<String, Value>,
    action: &str,
) -> Result<i64, String> {
    for required in ["TestCase", "Build", "Date", "Verdict"] {
        if missing(fields.get(required)) {
            return Err(format!(
                "Validation error: TestCaseResult.{required} should not be null"
            ));
        }
    }
    let verdict = fields.get("Verdict").and_then(Value::as_str).unwrap_or("");
    if !store.fixtures.verdicts.iter().any(|v| v == verdict) {
        return Err(format!(
            "Validation error: TestCaseResult.Verdict contains an invalid value: \"{verdict}\""
        ));
    }
    let (_, tc) = fields
        .get("TestCase")
        .and_then(super::model::ref_target)
        .ok_or("Validation error: TestCaseResult.TestCase should not be null")?;
    let Some(test_case) = store.visible(Some(Type::TestCase), tc, ctx.instant) else {
        return Err(format!(
            "Could not read: Object not found for Object ID: {tc}"
        ));
    };
    let project = test_case.get_ref("Project").map(|(_, p)| p).unwrap_or(0);
    let role = store.project_role(ctx.principal.user, project);
    if !store.project_open(project) || !matches!(role.as_deref(), Some("Editor") | Some("Admin")) {
        return Err(format!("Not authorized to {action}: TestCaseResult"));
    }
    Ok(project)
}

/// `POST|PUT /<type>/create`.
pub fn create(store: &mut Store, ctx: &Ctx, ty: Type, body: &Value, persist: bool) -> Done {
    let (root, input) = match body_fields(body, ty) {
        Ok(x) => x,
        Err(e) => return err(Envelope::Create, e),
    };
    let mut fields = Map::new();
    let warnings = match apply_fields(store, ty, &root, &input, &mut fields) {
        Ok(w) => w,
        Err(e) => return err(Envelope::Create, e),
    };
    fields
        .entry("Workspace")
        .or_insert_with(|| make_ref(Type::Workspace, oids::WORKSPACE));
    match ty {
        Type::TestCaseResult => match check_result(store, ctx, &fields, "create") {
            Ok(project) => {
                fields.insert("Project".into(), make_ref(Type::Project, project));
                for k in ["Tester", "TestSet", "Duration", "Notes"] {
                    fields.entry(k).or_insert(Value::Null);
                }
            }
            Err(e) => return err(Envelope::Create, e),
        },
        Type::TestCase | Type::TestSet | Type::HierarchicalRequirement | Type::Defect => {
            if missing(fields.get("Name")) {
                return err(
                    Envelope::Create,
                    format!("Validation error: {}.Name should not be null", ty.name()),
                );
            }
            let project = fields
                .get("Project")
                .and_then(super::model::ref_target)
                .map(|(_, p)| p)
                .unwrap_or(oids::SIM_PROJECT);
            let role = store.project_role(ctx.principal.user, project);
            if !store.project_open(project)
                || !matches!(role.as_deref(), Some("Editor") | Some("Admin"))
            {
                return err(
                    Envelope::Create,
                    format!("Not authorized to create: {}", ty.name()),
                );
            }
            fields.insert("Project".into(), make_ref(Type::Project, project));
            let prefix = ty.id_prefix().unwrap_or("X");
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
            if ty == Type::TestCase {
                fields.insert("Recycled".into(), json!(false));
                for k in ["LastVerdict", "LastBuild", "LastRun", "LastResult"] {
                    fields.insert(k.into(), Value::Null);
                }
            }
        }
        _ => {
            return err(
                Envelope::Create,
                format!("Not authorized to create: {}", ty.name()),
            );
        }
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
    let r = Renderer {
        store,
        origin: ctx.origin,
        now: ctx.now,
    };
    let rendered = r.created(&obj, &ctx.fetch());
    let tc = obj.get_ref("TestCase").map(|(_, t)| t);
    if persist {
        let oid = obj.oid;
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
pub fn update(store: &mut Store, ctx: &Ctx, ty: Type, id: &str, body: &Value) -> Done {
    let Some(oid) = store
        .resolve_id(id)
        .filter(|o| store.visible(Some(ty), *o, ctx.instant).is_some())
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
    let Some(existing) = store.objects.get(&oid).cloned() else {
        return err(Envelope::Operation, "Cannot find object to read");
    };
    let mut fields = existing.fields.clone();
    let warnings = match apply_fields(store, ty, &root, &input, &mut fields) {
        Ok(w) => w,
        Err(e) => return err(Envelope::Operation, e),
    };
    let old_tc = existing.get_ref("TestCase").map(|(_, t)| t);
    match ty {
        Type::TestCaseResult => match check_result(store, ctx, &fields, "update") {
            Ok(project) => {
                fields.insert("Project".into(), make_ref(Type::Project, project));
            }
            Err(e) => return err(Envelope::Operation, e),
        },
        _ => {
            let project = existing.get_ref("Project").map(|(_, p)| p);
            let allowed = match project {
                Some(p) => {
                    store.project_open(p)
                        && matches!(
                            store.project_role(ctx.principal.user, p).as_deref(),
                            Some("Editor") | Some("Admin")
                        )
                }
                None => oid == ctx.principal.user,
            };
            if !allowed {
                return err(
                    Envelope::Operation,
                    format!("Not authorized to update: {} {oid}", ty.name()),
                );
            }
        }
    }
    let mut obj = existing;
    obj.fields = fields;
    obj.version += 1;
    let new_tc = obj.get_ref("TestCase").map(|(_, t)| t);
    store.insert(obj);
    for tc in [old_tc, new_tc].into_iter().flatten() {
        store.update_rollup(tc);
    }
    let Some(obj) = store.objects.get(&oid) else {
        return err(Envelope::Operation, "Cannot find object to read");
    };
    let r = Renderer {
        store,
        origin: ctx.origin,
        now: ctx.now,
    };
    let object = r.object(obj, &Fetch::All, false);
    Done {
        body: json!({"OperationResult": {
            "_rallyAPIMajor": "2", "_rallyAPIMinor": "0", "Errors": [], "Warnings": warnings, "Object": object,
        }}),
        stored: (ty == Type::TestCaseResult).then_some(oid),
    }
}

/// `DELETE /<type>/<id>`: artifacts go to the recycle bin, results are removed.
pub fn delete(store: &mut Store, ctx: &Ctx, ty: Type, id: &str) -> Done {
    let Some(oid) = store
        .resolve_id(id)
        .filter(|o| store.visible(Some(ty), *o, ctx.instant).is_some())
    else {
        return err(Envelope::Operation, "Cannot find object to delete");
    };
    let project = store
        .objects
        .get(&oid)
        .and_then(|o| o.get_ref("Project"))
        .map(|(_, p)| p);
    let allowed = project.is_some_and(|p| {
        store.project_open(p)
            && matches!(
                store.project_role(ctx.principal.user, p).as_deref(),
                Some("Editor") | Some("Admin")
            )
    });
    if !allowed {
        return err(
            Envelope::Operation,
            format!("Not authorized to delete: {} {oid}", ty.name()),
        );
    }
    if ty.id_prefix().is_some() {
        if let Some(obj) = store.objects.get_mut(&oid) {
            obj.fields.insert("Recycled".into(), json!(true));
            obj.version += 1;
        }
    } else {
        store.remove(oid);
    }
    done(error_envelope(Envelope::Operation, &[], &[]))
}

/// `POST /<type>/<id>/<Collection>/add|remove` (TestCase Results: new-object maps create results).
pub fn collection_edit(
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
    match (ty, collection.to_ascii_lowercase().as_str(), add) {
        (Type::TestCase, "results", true) => {
            for item in items {
                let mut map = item.as_object().cloned().unwrap_or_default();
                map.insert("TestCase".into(), json!(format!("/testcase/{oid}")));
                let d = create(
                    store,
                    ctx,
                    Type::TestCaseResult,
                    &json!({"TestCaseResult": map}),
                    true,
                );
                match d.body["CreateResult"]["Errors"].as_array() {
                    Some(e) if !e.is_empty() => {
                        errors.extend(e.iter().filter_map(|x| x.as_str().map(str::to_string)))
                    }
                    _ => results.push(d.body["CreateResult"]["Object"].clone()),
                }
            }
        }
        (Type::TestSet, "testcases", _) => {
            let refs: Vec<i64> = items
                .iter()
                .filter_map(|i| store.parse_ref(i))
                .map(|(_, o)| o)
                .collect();
            if let Some(ts) = store.objects.get_mut(&oid) {
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
