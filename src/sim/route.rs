//! Routing: which service a path belongs to (WSAPI, its schema service, the `/__sim/` control
//! API), which API version the client spoke (`v2.0` or `v2.x`, echoed in every `_ref`), and
//! which WSAPI operation a method + path is. A GET is always a read: nothing here lets a read
//! reach the write path, whatever the type segment says. A type segment the simulator does not
//! know is routed as [`Route::UnknownType`] so the answer can use Rally's wording.

use std::collections::HashMap;

use http::Method;

use super::model::Type;
use crate::wsapi::{self, Envelope};

/// The service a request path belongs to.
pub(super) enum Target<'a> {
    /// `/slm/webservice/<version>/<rest>`.
    Service {
        version: &'a str,
        rest: &'a str,
    },
    /// `/slm/schema/<version>/<rest>`.
    Schema {
        version: &'a str,
        rest: &'a str,
    },
    /// `/__sim/<rest>`.
    Control(&'a str),
    Elsewhere,
}

pub(super) fn target(path: &str) -> Target<'_> {
    if let Some(rest) = path.strip_prefix("/__sim/") {
        return Target::Control(rest);
    }
    if let Some((version, rest)) = wsapi::split_service_path(path) {
        return Target::Service { version, rest };
    }
    if let Some((version, rest)) = wsapi::split_schema_path(path) {
        return Target::Schema { version, rest };
    }
    Target::Elsewhere
}

/// `<origin>/slm/webservice/<version>`: the prefix of every `_ref` in an answer.
pub(super) fn service_base(origin: &str, version: &str) -> String {
    format!("{origin}/slm/webservice/{version}")
}

/// What the request is, after routing.
#[derive(Debug, PartialEq)]
pub(super) enum Route<'a> {
    Authorize,
    Batch,
    Singleton(Type),
    Query(Type),
    Read(Type, &'a str),
    Create(Type),
    Update(Type, &'a str),
    Delete(Type, &'a str),
    Collection(Type, &'a str, &'a str),
    CollectionEdit(Type, &'a str, &'a str, bool),
    /// The type segment names no type the simulator has; `read` keeps GETs out of the write
    /// path (no security token asked, no read-only refusal).
    UnknownType {
        name: String,
        kind: Envelope,
        read: bool,
    },
    /// A known type with a path shape WSAPI does not have.
    Unroutable {
        path: String,
        read: bool,
    },
}

impl Route<'_> {
    /// Reads never need a security token and are open to read-only keys.
    pub(super) fn is_read(&self) -> bool {
        match self {
            Route::Authorize
            | Route::Singleton(_)
            | Route::Query(_)
            | Route::Read(..)
            | Route::Collection(..) => true,
            Route::UnknownType { read, .. } | Route::Unroutable { read, .. } => *read,
            _ => false,
        }
    }

    /// The envelope an error about this request is answered in.
    pub(super) fn envelope(&self) -> Envelope {
        match self {
            Route::Create(_) => Envelope::Create,
            Route::Query(_) | Route::Collection(..) => Envelope::Query,
            Route::Batch => Envelope::Batch,
            Route::UnknownType { kind, .. } => *kind,
            _ => Envelope::Operation,
        }
    }
}

/// Classifies `method` + path segments (after the version). `form_get` marks the .NET
/// toolkit's `POST <type>.js` with `_method=GET` in a form body, which is a query.
pub(super) fn route<'a>(
    method: &Method,
    segments: &[&'a str],
    has_query: bool,
    form_get: bool,
) -> Route<'a> {
    let seg: Vec<&'a str> = segments.iter().map(|s| wsapi::strip_js(s)).collect();
    let read = *method == Method::GET || form_get;
    match (method, seg.as_slice()) {
        (&Method::GET, ["security", "authorize"]) => return Route::Authorize,
        (&Method::POST, ["batch"]) => return Route::Batch,
        _ => {}
    }
    let Some((first, rest)) = seg.split_first() else {
        return Route::Unroutable {
            path: String::new(),
            read,
        };
    };
    let Some(t) = Type::parse(first) else {
        let kind = match (read, rest) {
            (true, []) => Envelope::Query,
            (false, [c]) if c.eq_ignore_ascii_case("create") => Envelope::Create,
            _ => Envelope::Operation,
        };
        return Route::UnknownType {
            name: (*first).to_string(),
            kind,
            read,
        };
    };
    if read {
        return match rest {
            [] => {
                let singular = !first.to_ascii_lowercase().ends_with('s');
                if matches!(t, Type::User | Type::Subscription) && singular && !has_query {
                    Route::Singleton(t)
                } else {
                    Route::Query(t)
                }
            }
            [id] => Route::Read(t, id),
            [id, coll] => Route::Collection(t, id, coll),
            _ => Route::Unroutable {
                path: seg.join("/"),
                read,
            },
        };
    }
    match (method, rest) {
        (&Method::POST | &Method::PUT, [c]) if c.eq_ignore_ascii_case("create") => Route::Create(t),
        (&Method::POST | &Method::PUT, [id]) => Route::Update(t, id),
        (&Method::DELETE, [id]) => Route::Delete(t, id),
        (&Method::POST, [id, coll, op])
            if op.eq_ignore_ascii_case("add") || op.eq_ignore_ascii_case("remove") =>
        {
            Route::CollectionEdit(t, id, coll, op.eq_ignore_ascii_case("add"))
        }
        _ => Route::Unroutable {
            path: seg.join("/"),
            read,
        },
    }
}

/// Percent-decodes a query string into lower-cased names → values (first occurrence wins).
pub(super) fn parse_params(query: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            let s = s.replace('+', " ");
            percent_encoding::percent_decode_str(&s)
                .decode_utf8_lossy()
                .into_owned()
        };
        out.entry(decode(k).to_ascii_lowercase())
            .or_insert_with(|| decode(v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(method: Method, path: &str) -> Route<'_> {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        route(&method, &segs, false, false)
    }

    #[test]
    fn a_get_is_a_read_whatever_the_type() {
        for path in [
            "iteration",
            "task/5",
            "nosuchtype",
            "nosuchtype/1/2/3",
            "testcase/1/a/b",
        ] {
            assert!(r(Method::GET, path).is_read(), "{path}");
        }
        assert!(!r(Method::POST, "iteration/create").is_read());
        assert!(!r(Method::POST, "nosuchtype/create").is_read());
    }

    #[test]
    fn unknown_types_keep_the_operations_envelope() {
        let Route::UnknownType { name, kind, .. } = r(Method::GET, "Payjammas.js") else {
            panic!("unknown type expected");
        };
        assert_eq!((name.as_str(), kind), ("Payjammas", Envelope::Query));
        assert_eq!(r(Method::PUT, "bucky/create").envelope(), Envelope::Create);
        assert_eq!(r(Method::GET, "bucky/1").envelope(), Envelope::Operation);
    }

    #[test]
    fn known_shapes() {
        assert_eq!(r(Method::GET, "user"), Route::Singleton(Type::User));
        assert_eq!(r(Method::GET, "users"), Route::Query(Type::User));
        assert_eq!(r(Method::PUT, "Task/create.js"), Route::Create(Type::Task));
        assert_eq!(r(Method::PUT, "task/7"), Route::Update(Type::Task, "7"));
        assert_eq!(
            r(Method::POST, "testcase/1/Results/add"),
            Route::CollectionEdit(Type::TestCase, "1", "Results", true)
        );
    }

    #[test]
    fn targets_carry_the_version() {
        assert!(matches!(
            target("/slm/webservice/v2.x/defect"),
            Target::Service {
                version: "v2.x",
                rest: "/defect"
            }
        ));
        assert!(matches!(
            target("/slm/schema/v2.0/workspace/1"),
            Target::Schema {
                version: "v2.0",
                ..
            }
        ));
        assert!(matches!(
            target("/slm/webservice/v3.0/defect"),
            Target::Elsewhere
        ));
    }
}
