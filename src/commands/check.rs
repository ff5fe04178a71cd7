//! `rally-sidecar check`: can this credential write TestCaseResults? It reaches the configured
//! upstream (TLS, corporate proxy) exactly as `serve` does, authenticates with `RALLY_API_KEY`
//! or `RALLY_USERNAME`/`RALLY_PASSWORD`, and reports the key's owner, its roles in the
//! configured workspace and projects, whether each project is open, and a verdict per project.
//!
//! A read-only API key cannot be told from a full-access one by reading; the check sends one
//! harmless write — a TestCaseResult create with no attributes, which Rally refuses with a
//! validation error and never stores — and a read-only key gets 401 instead.

use http::{Method, StatusCode};
use serde::Serialize;
use serde_json::Value;

use crate::config::Config;

/// Exit codes, for scripts.
pub mod exit {
    /// Every configured project can receive results.
    pub const OK: u8 = 0;
    /// At least one project cannot.
    pub const SOME_PROJECTS_REFUSED: u8 = 1;
    /// Rally could not be reached (network, TLS, proxy).
    pub const UNREACHABLE: u8 = 2;
    /// The credential was refused.
    pub const AUTH_FAILED: u8 = 3;
    /// The API key is read-only.
    pub const READ_ONLY: u8 = 4;
    /// The workspace was not found.
    pub const NO_WORKSPACE: u8 = 5;
    /// No project was given and the user has no permission in any project of the workspace
    /// and no default project: nothing could be checked.
    pub const NO_PROJECTS: u8 = 6;
}

pub use crate::rally::credential::Operator as Credential;

/// One project's verdict.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProjectVerdict {
    pub project: String,
    pub found: bool,
    pub state: Option<String>,
    pub role: Option<String>,
    pub can_write: bool,
    pub why: String,
}

/// The whole report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub upstream: String,
    pub route: String,
    pub user: Option<String>,
    pub display_name: Option<String>,
    pub key: String,
    pub workspace: Option<String>,
    pub workspace_role: Option<String>,
    pub projects: Vec<ProjectVerdict>,
    pub exit_code: u8,
    pub problem: Option<String>,
}

fn results(v: &Value) -> Vec<Value> {
    v["QueryResult"]["Results"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn quote_name(name: &str) -> String {
    percent_encoding::utf8_percent_encode(
        &format!("(Name = \"{}\")", name.replace('"', "")),
        percent_encoding::NON_ALPHANUMERIC,
    )
    .to_string()
}

fn oid_of(v: &Value) -> Option<i64> {
    v.get("ObjectID").and_then(|o| {
        o.as_i64()
            .or_else(|| o.as_str().and_then(|s| s.parse().ok()))
    })
}

/// A workspace/project given by name, ref or ObjectID: the query path to find it.
pub fn lookup_path(kind: &str, given: &str, workspace: Option<i64>) -> String {
    let scope = workspace
        .map(|w| format!("&workspace=/workspace/{w}"))
        .unwrap_or_default();
    match crate::wsapi::scope_id(given).filter(|id| id.bytes().all(|b| b.is_ascii_digit())) {
        Some(id) if given.contains('/') || given.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{kind}?query=(ObjectID%20%3D%20{id})&fetch=ObjectID,Name,State{scope}")
        }
        _ => format!(
            "{kind}?query={}&fetch=ObjectID,Name,State{scope}",
            quote_name(given)
        ),
    }
}

/// Runs the check. `workspace`/`projects` override `[scope]`.
pub async fn run(
    cfg: &Config,
    cred: Credential,
    workspace: Option<String>,
    projects: Vec<String>,
) -> Report {
    let mut report = Report {
        upstream: cfg.upstream.origin_string(),
        route: "direct".into(),
        user: None,
        display_name: None,
        key: match &cred {
            Credential::ApiKey(_) => "API key".into(),
            Credential::Basic { .. } => "basic auth".into(),
        },
        workspace: None,
        workspace_role: None,
        projects: vec![],
        exit_code: exit::OK,
        problem: None,
    };
    let rally = match crate::rally::Session::new(cfg, &cred) {
        Ok(x) => x,
        Err(e) => {
            report.exit_code = exit::UNREACHABLE;
            report.problem = Some(e);
            return report;
        }
    };
    report.route = rally.route.to_string();
    let fail = |mut r: Report, code: u8, why: String| {
        r.exit_code = code;
        r.problem = Some(why);
        r
    };

    let me = match rally
        .call(
            Method::GET,
            "user?fetch=ObjectID,UserName,DisplayName,SubscriptionAdmin",
            None,
        )
        .await
    {
        Err(e) => {
            return fail(
                report,
                exit::UNREACHABLE,
                format!("cannot reach {}: {e}", cfg.upstream.origin_string()),
            );
        }
        Ok((StatusCode::UNAUTHORIZED, _)) | Ok((StatusCode::FORBIDDEN, _)) => {
            return fail(
                report,
                exit::AUTH_FAILED,
                "Rally refused the credential (401): wrong, disabled or expired".into(),
            );
        }
        Ok((status, v)) => match v.get("User") {
            Some(u) => u.clone(),
            None => {
                return fail(
                    report,
                    exit::UNREACHABLE,
                    format!(
                        "{} answered {status} without the current user: is it Rally?",
                        cfg.upstream.origin_string()
                    ),
                );
            }
        },
    };
    report.user = me["UserName"].as_str().map(str::to_string);
    report.display_name = me["DisplayName"].as_str().map(str::to_string);
    let user_oid = oid_of(&me).unwrap_or(0);
    let sub_admin = me["SubscriptionAdmin"].as_bool() == Some(true);

    // The harmless write: an empty create is refused by validation, or with 401 for a read-only key.
    let probe = serde_json::json!({"TestCaseResult": {}});
    if let Ok((StatusCode::UNAUTHORIZED, _)) = rally
        .call(Method::POST, "testcaseresult/create", Some(&probe))
        .await
    {
        let r = fail(
            report,
            exit::READ_ONLY,
            "the credential can read but not write (a read-only API key): create a full-access key"
                .into(),
        );
        return r;
    }

    let ws_name = workspace.or_else(|| cfg.scope.workspace.clone());
    let ws = match &ws_name {
        Some(w) => match rally
            .call(Method::GET, &lookup_path("workspace", w, None), None)
            .await
        {
            Ok((_, v)) => results(&v).into_iter().next(),
            Err(e) => return fail(report, exit::UNREACHABLE, e),
        },
        None => {
            // The user's default workspace.
            let (_, v) = rally
                .call(
                    Method::GET,
                    &format!("user/{user_oid}?fetch=UserProfile"),
                    None,
                )
                .await
                .unwrap_or_default();
            let profile = v["User"]["UserProfile"]["_ref"]
                .as_str()
                .and_then(crate::wsapi::scope_id);
            match profile {
                Some(p) => {
                    let (_, v) = rally
                        .call(
                            Method::GET,
                            &format!("userprofile/{p}?fetch=DefaultWorkspace,ObjectID,Name"),
                            None,
                        )
                        .await
                        .unwrap_or_default();
                    v["UserProfile"].get("DefaultWorkspace").cloned()
                }
                None => None,
            }
        }
    };
    let Some(ws) = ws else {
        return fail(
            report,
            exit::NO_WORKSPACE,
            format!(
                "workspace {:?} not found or not visible to this user",
                ws_name.unwrap_or_default()
            ),
        );
    };
    let ws_oid = oid_of(&ws).or_else(|| {
        ws["_ref"]
            .as_str()
            .and_then(crate::wsapi::scope_id)
            .and_then(|s| s.parse().ok())
    });
    report.workspace = ws["Name"]
        .as_str()
        .or(ws["_refObjectName"].as_str())
        .map(str::to_string);

    let (_, perms) = rally
        .call(
            Method::GET,
            &format!(
                "User/{user_oid}/UserPermissions?fetch=Role,Workspace,Project,Name&pagesize=2000"
            ),
            None,
        )
        .await
        .unwrap_or_default();
    let perms = results(&perms);
    let ref_oid = |v: &Value| {
        v["_ref"]
            .as_str()
            .and_then(crate::wsapi::scope_id)
            .and_then(|s| s.parse::<i64>().ok())
    };
    let ws_role = perms
        .iter()
        .find(|p| p["_type"] == "WorkspacePermission" && ref_oid(&p["Workspace"]) == ws_oid)
        .and_then(|p| p["Role"].as_str().map(str::to_string));
    report.workspace_role = if sub_admin {
        Some("Subscription Admin".into())
    } else {
        ws_role.clone()
    };
    let admin = sub_admin || ws_role.as_deref() == Some("Admin");

    let mut wanted = if projects.is_empty() {
        cfg.scope.projects.clone()
    } else {
        projects
    };
    // Without projects to check, every project the user has a permission in (in this
    // workspace), else the user's default project: "yes" must mean somewhere real.
    let discovered = wanted.is_empty();
    if discovered {
        wanted = perms
            .iter()
            .filter(|x| x["_type"] == "ProjectPermission")
            .filter(|x| x["Workspace"].is_null() || ref_oid(&x["Workspace"]) == ws_oid)
            .filter_map(|x| ref_oid(&x["Project"]))
            .map(|oid| format!("/project/{oid}"))
            .collect();
        wanted.sort();
        wanted.dedup();
        if wanted.is_empty()
            && let Some(p) = default_project(&rally, user_oid).await
        {
            wanted.push(p);
        }
    }
    for name in wanted {
        let (_, v) = rally
            .call(Method::GET, &lookup_path("project", &name, ws_oid), None)
            .await
            .unwrap_or_default();
        let Some(p) = results(&v).into_iter().next() else {
            report.projects.push(ProjectVerdict {
                project: name.clone(),
                found: false,
                state: None,
                role: None,
                can_write: false,
                why: "not found in the workspace, or not visible to this user".into(),
            });
            continue;
        };
        let p_oid = oid_of(&p);
        let state = p["State"].as_str().map(str::to_string);
        let role = if admin {
            Some(
                report
                    .workspace_role
                    .clone()
                    .unwrap_or_else(|| "Admin".into()),
            )
        } else {
            perms
                .iter()
                .find(|x| x["_type"] == "ProjectPermission" && ref_oid(&x["Project"]) == p_oid)
                .and_then(|x| x["Role"].as_str().map(str::to_string))
        };
        let (can_write, why) = match (state.as_deref(), role.as_deref()) {
            (Some("Closed"), _) => (
                false,
                "the project is Closed: Rally refuses writes to it".to_string(),
            ),
            (_, Some("Editor"))
            | (_, Some("Admin"))
            | (_, Some("Subscription Admin"))
            | (_, Some("Workspace Admin")) => (
                true,
                format!("{} on an open project", role.clone().unwrap_or_default()),
            ),
            (_, Some("Viewer")) => (
                false,
                "Viewer: may read, may not write results (needs Editor)".into(),
            ),
            _ => (false, "no permission on this project".into()),
        };
        report.projects.push(ProjectVerdict {
            project: p["Name"].as_str().unwrap_or(&name).to_string(),
            found: true,
            state,
            role,
            can_write,
            why,
        });
    }
    let writable = report.projects.iter().filter(|p| p.can_write).count();
    if report.projects.is_empty() {
        report.exit_code = exit::NO_PROJECTS;
        report.problem = Some(
            "no project to check: none given (--project, scope.projects), no permission in any project of the workspace, no default project".into(),
        );
    } else if writable == 0 || (!discovered && writable < report.projects.len()) {
        // Projects named by the operator must all take results; discovered ones are what the
        // user may reach, and one that takes results is a yes.
        report.exit_code = exit::SOME_PROJECTS_REFUSED;
    }
    report
}

/// The user's default project, as a ref.
async fn default_project(rally: &crate::rally::Session, user_oid: i64) -> Option<String> {
    let (_, v) = rally
        .call(
            Method::GET,
            &format!("user/{user_oid}?fetch=UserProfile"),
            None,
        )
        .await
        .ok()?;
    let profile = v["User"]["UserProfile"]["_ref"]
        .as_str()
        .and_then(crate::wsapi::scope_id)?;
    let (_, v) = rally
        .call(
            Method::GET,
            &format!("userprofile/{profile}?fetch=DefaultProject"),
            None,
        )
        .await
        .ok()?;
    let oid = v["UserProfile"]["DefaultProject"]["_ref"]
        .as_str()
        .and_then(crate::wsapi::scope_id)?;
    Some(format!("/project/{oid}"))
}

/// The report as text.
pub fn render(r: &Report) -> String {
    // Names and texts from Rally are escaped: they cannot write to the operator's terminal.
    use crate::telemetry::redact::escape_controls as esc;
    let mut s = format!("upstream:   {} ({})\n", esc(&r.upstream), esc(&r.route));
    if let Some(u) = &r.user {
        s.push_str(&format!(
            "credential: {} of {} ({})\n",
            esc(&r.key),
            esc(u),
            esc(r.display_name.as_deref().unwrap_or(""))
        ));
    }
    if let Some(w) = &r.workspace {
        s.push_str(&format!(
            "workspace:  {} — role {}\n",
            esc(w),
            esc(r.workspace_role.as_deref().unwrap_or("none"))
        ));
    }
    for p in &r.projects {
        s.push_str(&format!(
            "project:    {:<24} {:<7} role {:<10} {} — {}\n",
            esc(&p.project),
            esc(p.state.as_deref().unwrap_or("?")),
            esc(p.role.as_deref().unwrap_or("none")),
            if p.can_write {
                "CAN write results"
            } else {
                "CANNOT write results"
            },
            esc(&p.why)
        ));
    }
    if let Some(problem) = &r.problem {
        s.push_str(&format!("problem:    {}\n", esc(problem)));
    }
    s
}

/// `rally-sidecar check`.
pub fn cli(
    serve: super::ConfigArgs,
    workspace: Option<String>,
    projects: Vec<String>,
    json: bool,
) -> u8 {
    let cfg = match serve.load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(cred) = Credential::from_env() else {
        eprintln!("rally-sidecar check: set RALLY_API_KEY, or RALLY_USERNAME and RALLY_PASSWORD");
        return super::EX_USAGE;
    };
    super::block_on(async move {
        let report = run(&cfg, cred, workspace, projects).await;
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
        } else {
            print!("{}", render(&report));
        }
        report.exit_code
    })
}
