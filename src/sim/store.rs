//! The simulator's state: every object, the credentials of the fixture users, basic-auth
//! sessions with their security tokens, the collections each type exposes, and the roll-ups
//! Rally maintains on TestCases.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::model::{Fixtures, Obj, Type, make_ref, oids, parse_date, ref_target};

/// Who is calling, after authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Principal {
    pub user: i64,
    /// Authenticated with a read-only API key (writes refused).
    pub read_only: bool,
    /// Authenticated with basic auth (writes need the security token).
    pub basic: bool,
}

/// A basic-auth HTTP session, keyed by its `JSESSIONID`: the token `/security/authorize` issued
/// is bound to it. Rally also sets `ZSESSIONID` and `SUBBUCKETID` cookies (KB 57528).
#[derive(Debug, Clone)]
pub(super) struct Session {
    pub user: i64,
    pub token: Option<String>,
    pub zsession: String,
    pub subbucket: u32,
}

pub(super) struct Store {
    pub objects: BTreeMap<i64, Obj>,
    by_uuid: HashMap<String, i64>,
    next_oid: i64,
    pub fixtures: Fixtures,
    pub sessions: HashMap<String, Session>,
    session_counter: u64,
}

/// Deterministic UUID for an object id (stable across runs, so fixtures are too).
pub(super) fn uuid_for(oid: i64) -> String {
    format!(
        "5a1e0000-0000-4000-8000-{:012x}",
        oid as u64 & 0xffff_ffff_ffff
    )
}

impl Store {
    pub(super) fn new(fixtures: Fixtures) -> Store {
        let mut s = Store {
            objects: BTreeMap::new(),
            by_uuid: HashMap::new(),
            next_oid: oids::FIRST_DYNAMIC,
            fixtures: fixtures.clone(),
            sessions: HashMap::new(),
            session_counter: 0,
        };
        s.seed(&fixtures);
        s
    }

    pub(super) fn allocate(&mut self) -> i64 {
        let oid = self.next_oid;
        self.next_oid += 1;
        oid
    }

    pub(super) fn insert(&mut self, obj: Obj) {
        self.by_uuid.insert(obj.uuid.clone(), obj.oid);
        self.objects.insert(obj.oid, obj);
    }

    pub(super) fn remove(&mut self, oid: i64) -> Option<Obj> {
        let obj = self.objects.remove(&oid)?;
        self.by_uuid.remove(&obj.uuid);
        if obj.ty == Type::TestCaseResult
            && let Some((_, tc)) = obj.get_ref("TestCase")
        {
            self.update_rollup(tc);
        }
        Some(obj)
    }

    /// Looks an id up as an ObjectID or an ObjectUUID (with or without dashes).
    pub(super) fn resolve_id(&self, id: &str) -> Option<i64> {
        if let Ok(oid) = id.parse::<i64>() {
            return Some(oid);
        }
        let lower = id.to_ascii_lowercase();
        if let Some(oid) = self.by_uuid.get(&lower) {
            return Some(*oid);
        }
        if lower.len() == 32 {
            let dashed = format!(
                "{}-{}-{}-{}-{}",
                &lower[0..8],
                &lower[8..12],
                &lower[12..16],
                &lower[16..20],
                &lower[20..]
            );
            return self.by_uuid.get(&dashed).copied();
        }
        None
    }

    /// An object that a client may see now: exists, right type, not recycled, past its read lag.
    pub(super) fn visible(
        &self,
        ty: Option<Type>,
        oid: i64,
        now: tokio::time::Instant,
    ) -> Option<&Obj> {
        let obj = self.objects.get(&oid)?;
        if ty.is_some_and(|t| t != obj.ty) {
            return None;
        }
        if obj.fields.get("Recycled").and_then(Value::as_bool) == Some(true) {
            return None;
        }
        if obj.visible_at.is_some_and(|t| t > now) {
            return None;
        }
        Some(obj)
    }

    /// Parses a reference in any of its four spellings (full URL, `/type/oid`, `type/oid`,
    /// `{"_ref": ...}`), with optional `.js`. Returns the type named and the object id.
    pub(super) fn parse_ref(&self, v: &Value) -> Option<(Type, i64)> {
        let text = match v {
            Value::String(s) => s.as_str(),
            Value::Object(m) => {
                if let Some(r) = ref_target(v) {
                    return Some(r);
                }
                m.get("_ref").and_then(Value::as_str)?
            }
            _ => return None,
        };
        let path = match text.find("/slm/webservice/") {
            Some(i) => &text[i..],
            None => text,
        };
        let path = path.split(['?', '#']).next().unwrap_or(path);
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        // .../<type>/<id>[.js]
        let id = crate::wsapi::strip_js(segments.last()?);
        let ty = Type::parse(segments.get(segments.len().checked_sub(2)?)?)?;
        Some((ty, self.resolve_id(id)?))
    }

    /// Members of a collection attribute (`Results`, `Projects`, ...), as object ids.
    pub(super) fn collection(&self, obj: &Obj, name: &str) -> Option<(Type, Vec<i64>)> {
        let by_ref = |ty: Type, field: &str| -> Vec<i64> {
            self.objects
                .values()
                .filter(|o| o.ty == ty && o.get_ref(field) == Some((obj.ty, obj.oid)))
                .map(|o| o.oid)
                .collect()
        };
        let name_l = name.to_ascii_lowercase();
        Some(match (obj.ty, name_l.as_str()) {
            (Type::Subscription, "workspaces") => {
                (Type::Workspace, by_ref(Type::Workspace, "Subscription"))
            }
            (Type::Workspace, "projects") => (Type::Project, by_ref(Type::Project, "Workspace")),
            (Type::Project, "testcases") => (Type::TestCase, by_ref(Type::TestCase, "Project")),
            (Type::Project, "iterations") => (Type::Iteration, by_ref(Type::Iteration, "Project")),
            (Type::Project, "releases") => (Type::Release, by_ref(Type::Release, "Project")),
            (Type::TestCase, "results") => (
                Type::TestCaseResult,
                by_ref(Type::TestCaseResult, "TestCase"),
            ),
            (Type::TestCase, "testsets") => (
                Type::TestSet,
                self.objects
                    .values()
                    .filter(|o| o.ty == Type::TestSet && members(o).contains(&obj.oid))
                    .map(|o| o.oid)
                    .collect(),
            ),
            (Type::TestSet, "testcases") => (Type::TestCase, members(obj)),
            (Type::TestSet, "results") => (
                Type::TestCaseResult,
                by_ref(Type::TestCaseResult, "TestSet"),
            ),
            (Type::HierarchicalRequirement | Type::Defect, "tasks") => {
                (Type::Task, by_ref(Type::Task, "WorkProduct"))
            }
            (t, "discussion") if t.is_artifact() => (
                Type::ConversationPost,
                by_ref(Type::ConversationPost, "Artifact"),
            ),
            (t, "attachments") if t.is_artifact() => {
                (Type::Attachment, by_ref(Type::Attachment, "Artifact"))
            }
            (Type::TestCaseResult, "attachments") => {
                (Type::Attachment, by_ref(Type::Attachment, "TestCaseResult"))
            }
            (Type::User, "userpermissions") => {
                let mut v = by_ref(Type::WorkspacePermission, "User");
                v.extend(by_ref(Type::ProjectPermission, "User"));
                (Type::WorkspacePermission, v)
            }
            (Type::User, "teammemberships") => (Type::Project, vec![]),
            _ => return None,
        })
    }

    /// Collection attributes rendered on each type, with the `_type` of their members.
    pub(super) fn collection_names(ty: Type) -> &'static [(&'static str, &'static str)] {
        const ARTIFACT: &[(&str, &str)] = &[
            ("Attachments", "Attachment"),
            ("Discussion", "ConversationPost"),
        ];
        match ty {
            Type::Subscription => &[("Workspaces", "Workspace")],
            Type::Workspace => &[("Projects", "Project")],
            Type::Project => &[
                ("TestCases", "TestCase"),
                ("Iterations", "Iteration"),
                ("Releases", "Release"),
            ],
            Type::TestCase => &[
                ("Results", "TestCaseResult"),
                ("TestSets", "TestSet"),
                ("Attachments", "Attachment"),
                ("Discussion", "ConversationPost"),
            ],
            Type::TestSet => &[
                ("TestCases", "TestCase"),
                ("Results", "TestCaseResult"),
                ("Attachments", "Attachment"),
                ("Discussion", "ConversationPost"),
            ],
            Type::HierarchicalRequirement | Type::Defect => &[
                ("Tasks", "Task"),
                ("Attachments", "Attachment"),
                ("Discussion", "ConversationPost"),
            ],
            Type::Task => ARTIFACT,
            Type::TestCaseResult => &[("Attachments", "Attachment")],
            Type::User => &[
                ("UserPermissions", "UserPermission"),
                ("TeamMemberships", "Project"),
            ],
            _ => &[],
        }
    }

    /// Recomputes LastVerdict/LastBuild/LastRun/LastResult of a TestCase from its results:
    /// the result with the latest Date wins (ties: the later created). Which result Rally
    /// uses is not documented; docs/simulator.md lists this among the known differences.
    pub(super) fn update_rollup(&mut self, tc: i64) {
        let latest = self
            .objects
            .values()
            .filter(|o| {
                o.ty == Type::TestCaseResult && o.get_ref("TestCase") == Some((Type::TestCase, tc))
            })
            .max_by(|a, b| {
                let da = a.str_field("Date").and_then(parse_date);
                let db = b.str_field("Date").and_then(parse_date);
                da.cmp(&db).then(a.oid.cmp(&b.oid))
            })
            .map(|o| {
                (
                    o.oid,
                    o.fields.get("Verdict").cloned().unwrap_or(Value::Null),
                    o.fields.get("Build").cloned().unwrap_or(Value::Null),
                    o.fields.get("Date").cloned().unwrap_or(Value::Null),
                )
            });
        if let Some(obj) = self.objects.get_mut(&tc) {
            let f = &mut obj.fields;
            match latest {
                Some((oid, verdict, build, date)) => {
                    f.insert("LastVerdict".into(), verdict);
                    f.insert("LastBuild".into(), build);
                    f.insert("LastRun".into(), date);
                    f.insert("LastResult".into(), make_ref(Type::TestCaseResult, oid));
                }
                None => {
                    for k in ["LastVerdict", "LastBuild", "LastRun", "LastResult"] {
                        f.insert(k.into(), Value::Null);
                    }
                }
            }
            obj.version += 1;
        }
    }

    /// [`Store::update_rollup`] after `result` was created for `tc`, without scanning every
    /// result: the roll-up was right before, and the new result (the newest ObjectID) wins when
    /// its Date is not older than the current LastRun. Keeps long runs linear.
    pub(super) fn rollup_after_create(&mut self, tc: i64, result: i64) {
        let Some(new) = self.objects.get(&result) else {
            return;
        };
        let new_date = new.str_field("Date").and_then(parse_date);
        let values = (
            new.fields.get("Verdict").cloned().unwrap_or(Value::Null),
            new.fields.get("Build").cloned().unwrap_or(Value::Null),
            new.fields.get("Date").cloned().unwrap_or(Value::Null),
        );
        let Some(obj) = self.objects.get_mut(&tc) else {
            return;
        };
        let current = obj
            .fields
            .get("LastRun")
            .and_then(Value::as_str)
            .and_then(parse_date);
        let has_last = !obj.fields.get("LastResult").is_none_or(Value::is_null);
        if has_last && new_date < current {
            return;
        }
        let f = &mut obj.fields;
        f.insert("LastVerdict".into(), values.0);
        f.insert("LastBuild".into(), values.1);
        f.insert("LastRun".into(), values.2);
        f.insert("LastResult".into(), make_ref(Type::TestCaseResult, result));
        obj.version += 1;
    }

    /// Role of `user` on `project`: Admin for workspace admins, else the project permission.
    pub(super) fn project_role(&self, user: i64, project: i64) -> Option<String> {
        if self.objects.values().any(|o| {
            o.ty == Type::WorkspacePermission
                && o.get_ref("User") == Some((Type::User, user))
                && o.str_field("Role") == Some("Admin")
        }) {
            return Some("Admin".into());
        }
        self.objects
            .values()
            .find(|o| {
                o.ty == Type::ProjectPermission
                    && o.get_ref("User") == Some((Type::User, user))
                    && o.get_ref("Project") == Some((Type::Project, project))
            })
            .and_then(|o| o.str_field("Role").map(str::to_string))
    }

    /// The project an object belongs to: its own `Project`, or for posts and attachments the
    /// project of what they are attached to.
    pub(super) fn project_of(&self, obj: &Obj) -> Option<i64> {
        if let Some((_, p)) = obj.get_ref("Project") {
            return Some(p);
        }
        let (_, parent) = match obj.ty {
            Type::ConversationPost => obj.get_ref("Artifact"),
            Type::Attachment => obj
                .get_ref("Artifact")
                .or_else(|| obj.get_ref("TestCaseResult")),
            _ => None,
        }?;
        self.objects
            .get(&parent)
            .and_then(|o| o.get_ref("Project"))
            .map(|(_, p)| p)
    }

    pub(super) fn project_open(&self, project: i64) -> bool {
        self.objects
            .get(&project)
            .and_then(|p| p.str_field("State"))
            != Some("Closed")
    }

    /// Finds the user an API key belongs to.
    pub(super) fn user_for_key(&self, key: &str) -> Option<Principal> {
        self.fixtures.users.iter().find_map(|u| {
            u.api_keys.iter().find(|k| k.key == key).map(|k| Principal {
                user: u.oid,
                read_only: k.read_only,
                basic: false,
            })
        })
    }

    /// Checks a basic-auth user name and password.
    pub(super) fn user_for_password(&self, username: &str, password: &str) -> Option<Principal> {
        self.fixtures
            .users
            .iter()
            .find(|u| {
                u.username.eq_ignore_ascii_case(username) && u.password.as_deref() == Some(password)
            })
            .map(|u| Principal {
                user: u.oid,
                read_only: false,
                basic: true,
            })
    }

    /// Opens a new session for a basic-auth user; returns its JSESSIONID.
    pub(super) fn new_session(&mut self, user: i64) -> String {
        self.session_counter += 1;
        let id = format!("simsession{:08x}{:08x}", user, self.session_counter);
        let session = Session {
            user,
            token: None,
            zsession: format!("{:016x}{:016x}", user, self.session_counter),
            subbucket: 1 + (self.session_counter % 4) as u32,
        };
        self.sessions.insert(id.clone(), session);
        id
    }

    pub(super) fn objects_of(&self, ty: Type) -> impl Iterator<Item = &Obj> {
        self.objects.values().filter(move |o| o.ty == ty)
    }

    pub(super) fn custom_fields(&self, ty: Type) -> Vec<String> {
        self.fixtures
            .custom_fields
            .get(ty.name())
            .cloned()
            .unwrap_or_default()
    }
}

fn members(obj: &Obj) -> Vec<i64> {
    obj.fields
        .get("__members")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(ref_target).map(|(_, o)| o).collect())
        .unwrap_or_default()
}

/// Attributes present on `obj` (without internal ones).
pub(super) fn public_fields(obj: &Obj) -> impl Iterator<Item = (&String, &Value)> {
    obj.fields.iter().filter(|(k, _)| !k.starts_with("__"))
}
