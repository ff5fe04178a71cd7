//! Turning stored objects into WSAPI JSON: `fetch` handling (shell, full, a field list — which
//! also applies to nested objects, as in Rally), nested references and collections, and the
//! metadata every object carries (`_rallyAPIMajor`/`_rallyAPIMinor`, `_ref`, `_refObjectUUID`,
//! `_objectVersion`, `_refObjectName`, `_CreatedAt`, ...). Every `_ref` is absolute and built
//! from the origin and API version the client used, so clients that follow refs come back to
//! the simulator, at the version they spoke.

use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::model::{Obj, Type, format_date, ref_target};
use super::store::{Store, public_fields};

/// The `fetch` parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Fetch {
    /// Absent or `false`: shell objects.
    Shell,
    /// `true`: every attribute.
    All,
    /// A field list (pyral sometimes wraps it in literal double quotes).
    Fields(Vec<String>),
}

impl Fetch {
    pub(super) fn parse(raw: Option<&str>) -> Fetch {
        let Some(raw) = raw else { return Fetch::Shell };
        let raw = raw.trim().trim_matches('"').trim();
        match raw.to_ascii_lowercase().as_str() {
            "" | "false" => Fetch::Shell,
            "true" => Fetch::All,
            _ => Fetch::Fields(
                raw.split(',')
                    .map(|f| f.trim().split(':').next().unwrap_or("").trim().to_string())
                    .filter(|f| !f.is_empty())
                    .collect(),
            ),
        }
    }

    fn wants(&self, field: &str) -> bool {
        match self {
            Fetch::Shell => false,
            Fetch::All => true,
            Fetch::Fields(f) => f.iter().any(|x| x == field),
        }
    }
}

pub(super) struct Renderer<'a> {
    pub store: &'a Store,
    /// `<origin>/slm/webservice/<version>`.
    pub base: &'a str,
    pub now: OffsetDateTime,
}

fn meta() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("_rallyAPIMajor".into(), json!("2"));
    m.insert("_rallyAPIMinor".into(), json!("0"));
    m
}

impl Renderer<'_> {
    pub(super) fn object_ref(&self, ty: Type, oid: i64) -> String {
        format!("{}/{}/{oid}", self.base, ty.path())
    }

    /// A nested reference, with the fetched fields that apply to the target. Hydrated by a
    /// field list, it also carries `_objectVersion`, as Rally's do; a shell (`fetch=true`) does
    /// not, as in the captures.
    pub(super) fn nested(&self, ty: Type, oid: i64, fetch: &Fetch) -> Value {
        let mut m = meta();
        m.insert("_ref".into(), json!(self.object_ref(ty, oid)));
        let obj = self.store.objects.get(&oid);
        if let Some(obj) = obj {
            m.insert("_refObjectUUID".into(), json!(obj.uuid));
            m.insert("_refObjectName".into(), json!(obj.name()));
        }
        m.insert("_type".into(), json!(ty.name()));
        if let (Fetch::Fields(_), Some(obj)) = (fetch, obj) {
            m.insert("_objectVersion".into(), json!(obj.version.to_string()));
            for (k, v) in public_fields(obj) {
                if fetch.wants(k) && ref_target(v).is_none() {
                    m.insert(k.clone(), v.clone());
                }
            }
            if fetch.wants("ObjectID") {
                m.insert("ObjectID".into(), json!(obj.oid));
            }
        }
        Value::Object(m)
    }

    fn value(&self, v: &Value, fetch: &Fetch) -> Value {
        match ref_target(v) {
            Some((ty, oid)) => self.nested(ty, oid, fetch),
            None => v.clone(),
        }
    }

    /// Renders `obj`. `root` = the single-object form (no `_type`; Errors/Warnings added by the
    /// caller). `fetch` decides which attributes appear.
    pub(super) fn object(&self, obj: &Obj, fetch: &Fetch, root: bool) -> Value {
        let mut m = meta();
        m.insert("_ref".into(), json!(self.object_ref(obj.ty, obj.oid)));
        m.insert("_refObjectUUID".into(), json!(obj.uuid));
        m.insert("_objectVersion".into(), json!(obj.version.to_string()));
        m.insert("_refObjectName".into(), json!(obj.name()));
        let full = matches!(fetch, Fetch::All);
        if full {
            m.insert("CreationDate".into(), json!(format_date(obj.created)));
            m.insert("_CreatedAt".into(), json!(humanise(obj.created, self.now)));
            m.insert("ObjectID".into(), json!(obj.oid));
            m.insert("ObjectUUID".into(), json!(obj.uuid));
            m.insert("VersionId".into(), json!(obj.version.to_string()));
            if obj.ty != Type::Subscription {
                m.insert(
                    "Subscription".into(),
                    self.nested(Type::Subscription, super::model::oids::SUBSCRIPTION, fetch),
                );
            }
        } else {
            for (name, value) in [
                ("ObjectID", json!(obj.oid)),
                ("ObjectUUID", json!(obj.uuid)),
                ("VersionId", json!(obj.version.to_string())),
                ("CreationDate", json!(format_date(obj.created))),
            ] {
                if fetch.wants(name) {
                    m.insert(name.into(), value);
                }
            }
        }
        for (k, v) in public_fields(obj) {
            if fetch.wants(k) {
                m.insert(k.clone(), self.value(v, fetch));
            }
        }
        for (name, member_type) in Store::collection_names(obj.ty) {
            if fetch.wants(name) {
                let count = self
                    .store
                    .collection(obj, name)
                    .map(|(_, v)| v.len())
                    .unwrap_or(0);
                let mut c = meta();
                c.insert(
                    "_ref".into(),
                    json!(format!(
                        "{}/{}/{}/{name}",
                        self.base,
                        obj.ty.name(),
                        obj.oid
                    )),
                );
                c.insert("_type".into(), json!(member_type));
                c.insert("Count".into(), json!(count));
                m.insert((*name).to_string(), Value::Object(c));
            }
        }
        if !root {
            m.insert("_type".into(), json!(obj.ty.name()));
        }
        Value::Object(m)
    }

    /// `{"<Type>": {..., "Errors": [], "Warnings": []}}` — a single-object read.
    pub(super) fn single(&self, obj: &Obj, fetch: &Fetch) -> Value {
        let mut o = self.object(obj, fetch, true);
        if let Some(m) = o.as_object_mut() {
            m.insert("Errors".into(), json!([]));
            m.insert("Warnings".into(), json!([]));
        }
        let mut outer = Map::new();
        outer.insert(obj.ty.name().into(), o);
        Value::Object(outer)
    }

    /// The compact object a create answers with (metadata + ObjectID + VersionId, plus fetch).
    pub(super) fn created(&self, obj: &Obj, fetch: &Fetch) -> Value {
        let mut o = self.object(obj, fetch, false);
        if let Some(m) = o.as_object_mut() {
            m.insert("_CreatedAt".into(), json!("just now"));
            m.insert("ObjectID".into(), json!(obj.oid));
            m.insert("VersionId".into(), json!(obj.version.to_string()));
        }
        o
    }
}

/// Rally's `_CreatedAt`: "just now", "N minutes ago", "N hours ago", else "Mon D, YYYY".
pub(super) fn humanise(t: OffsetDateTime, now: OffsetDateTime) -> String {
    let secs = (now - t).whole_seconds();
    match secs {
        s if s < 60 => "just now".into(),
        s if s < 3600 => format!("{} minutes ago", s / 60),
        s if s < 86_400 => format!("{} hours ago", s / 3600),
        _ => {
            let month = format!("{:?}", t.month());
            format!("{} {}, {}", &month[..3], t.day(), t.year())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_forms() {
        assert_eq!(Fetch::parse(None), Fetch::Shell);
        assert_eq!(Fetch::parse(Some("false")), Fetch::Shell);
        assert_eq!(Fetch::parse(Some("true")), Fetch::All);
        assert_eq!(
            Fetch::parse(Some("\"ObjectID,Name,State\"")),
            Fetch::Fields(vec!["ObjectID".into(), "Name".into(), "State".into()])
        );
        assert_eq!(
            Fetch::parse(Some("Tasks:summary[State;Owner],Name")),
            Fetch::Fields(vec!["Tasks".into(), "Name".into()])
        );
    }
}
