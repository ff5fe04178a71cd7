//! The read side of WSAPI on the store: read by ObjectID or UUID, the caller's own User and
//! Subscription, and queries (query language, `fetch`, `order` on known attributes only,
//! paging, project scope, collections), plus the request context every operation shares. Each
//! returns the JSON envelope Rally would; writes live in `write`, HTTP plumbing in `pipeline`.

use std::collections::HashMap;

use serde_json::{Value, json};
use time::OffsetDateTime;

use super::Switches;
use super::model::{Obj, Type, format_date, oids, parse_date};
use super::query::{self, Seen};
use super::render::{Fetch, Renderer};
use super::schema;
use super::store::{Principal, Store};
use crate::wsapi::{Envelope, error_envelope};

/// Request context shared by the operations.
pub(super) struct Ctx<'a> {
    /// `<origin>/slm/webservice/<version>`: every `_ref` starts with it.
    pub base: &'a str,
    pub principal: &'a Principal,
    /// Query parameters, names lower-cased, percent-decoded once.
    pub params: &'a HashMap<String, String>,
    pub now: OffsetDateTime,
    pub instant: tokio::time::Instant,
    pub read_lag: Option<std::time::Duration>,
    pub switches: &'a Switches,
}

impl Ctx<'_> {
    pub(super) fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    pub(super) fn fetch(&self) -> Fetch {
        Fetch::parse(self.param("fetch"))
    }

    pub(super) fn renderer<'s>(&'s self, store: &'s Store) -> Renderer<'s> {
        Renderer {
            store,
            base: self.base,
            now: self.now,
        }
    }
}

/// The result of an operation: its envelope, and whether a TestCaseResult was stored.
pub(super) struct Done {
    pub body: Value,
    pub stored: Option<i64>,
}

pub(super) fn done(body: Value) -> Done {
    Done { body, stored: None }
}

pub(super) fn err(kind: Envelope, msg: impl Into<String>) -> Done {
    done(error_envelope(kind, &[msg.into()], &[]))
}

/// `GET /<type>/<id>`.
pub(super) fn read(store: &Store, ctx: &Ctx, ty: Type, id: &str) -> Done {
    let found = store
        .resolve_id(id)
        .and_then(|oid| store.visible(Some(ty), oid, ctx.instant));
    match found {
        Some(obj) => {
            let r = ctx.renderer(store);
            // A by-OID read without fetch returns the full object, as the captures show
            // (docs/simulator.md, "Known differences" 4).
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
pub(super) fn singleton(store: &Store, ctx: &Ctx, ty: Type) -> Done {
    let oid = match ty {
        Type::User => ctx.principal.user,
        _ => oids::SUBSCRIPTION,
    };
    match store.objects.get(&oid) {
        Some(obj) => {
            let r = ctx.renderer(store);
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

/// The first segment of a dotted attribute path that `ty` (or the type a reference before it
/// points at) does not have: its index and the type it was looked up on.
fn unknown_segment(store: &Store, ty: Type, path: &[String]) -> Option<(usize, Type)> {
    let mut cur = ty;
    for (i, seg) in path.iter().enumerate() {
        let custom = store.custom_fields(cur);
        if !schema::has_attribute(cur, seg, &custom) && !seg.starts_with("c_") {
            return Some((i, cur));
        }
        if i + 1 < path.len() {
            // Follow the reference's type for dotted paths; past a non-reference, stop checking.
            cur = *schema::ref_targets(cur, seg).first()?;
        }
    }
    None
}

fn check_paths(store: &Store, ty: Type, expr: &query::Expr) -> Result<(), String> {
    for path in expr.paths() {
        if let Some((i, on)) = unknown_segment(store, ty, path) {
            return Err(format!(
                "Could not parse: Could not find attribute \"{}\" on type {} in the query segment \"{}\"",
                path[i],
                on.name(),
                path[..=i].join(".")
            ));
        }
    }
    Ok(())
}

/// Sort keys of `order` (`Date desc,ObjectID`): Rally refuses an attribute the type does not
/// have, with the attribute as written (the Ruby toolkit's live tests assert the wording).
fn order_keys(store: &Store, ty: Type, order: &str) -> Result<Vec<(Vec<String>, bool)>, String> {
    let mut keys = Vec::new();
    for k in order.split(',') {
        let mut parts = k.split_whitespace();
        let Some(field) = parts.next() else { continue };
        let desc = parts.next().is_some_and(|d| d.eq_ignore_ascii_case("desc"));
        let path: Vec<String> = field.split('.').map(str::to_string).collect();
        if unknown_segment(store, ty, &path).is_some() {
            return Err(format!("Cannot sort using unknown attribute {field}"));
        }
        keys.push((path, desc));
    }
    Ok(keys)
}

fn in_scope(store: &Store, ctx: &Ctx, obj: &Obj) -> bool {
    if obj.fields.get("Recycled").and_then(Value::as_bool) == Some(true) {
        return false;
    }
    if obj.visible_at.is_some_and(|t| t > ctx.instant) {
        return false;
    }
    if let Some(p) = store.project_of(obj) {
        // Items of closed projects are never returned by queries (KB 131267).
        let project_item = obj.ty.is_artifact()
            || matches!(
                obj.ty,
                Type::TestCaseResult
                    | Type::Iteration
                    | Type::Release
                    | Type::ConversationPost
                    | Type::Attachment
            );
        if project_item && !store.project_open(p) {
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
pub(super) fn query(store: &Store, ctx: &Ctx, ty: Type, candidates: Option<Vec<i64>>) -> Done {
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
    let keys = match ctx.param("order").map(|o| order_keys(store, ty, o)) {
        None => None,
        Some(Ok(k)) => Some(k),
        Some(Err(msg)) => return err(Envelope::Query, msg),
    };
    if let Some(keys) = keys {
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
    let r = ctx.renderer(store);
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
