//! The build context operators set through the admin API (`PUT /context`), globally or for one
//! workspace or project, so test runners that cannot change their scripts still get a Build.
//! Held in memory: a restart clears it (the journal, not this, is what must survive).

use std::sync::RwLock;

// The shapes of a change and of the whole context live in `config::context`, below both this
// module and the fleet's shared context, which carry them.
pub use crate::config::context::{ContextView, SetContext};

/// Workspace and project entries the context holds at most, together, and the longest build
/// it accepts (Rally's own limit on `Build`): the admin API cannot be used to grow memory.
pub const MAX_SCOPES: usize = 1000;
pub const MAX_BUILD_LEN: usize = 256;

#[derive(Default)]
pub struct BuildContext {
    state: RwLock<ContextView>,
}

pub use crate::wsapi::scope_id;

impl BuildContext {
    pub fn set(&self, c: SetContext) -> Result<ContextView, String> {
        if c.build.trim().is_empty() {
            return Err("build must not be empty".into());
        }
        if c.build.chars().count() > MAX_BUILD_LEN || c.build.chars().any(char::is_control) {
            return Err(format!(
                "build must be at most {MAX_BUILD_LEN} characters, without control characters"
            ));
        }
        if c.workspace.is_some() && c.project.is_some() {
            return Err("give a workspace or a project, not both".into());
        }
        let mut st = self
            .state
            .write()
            .map_err(|_| "context unavailable".to_string())?;
        let full = st.workspaces.len() + st.projects.len() >= MAX_SCOPES;
        let refuse_new = |known: bool| {
            (full && !known).then(|| {
                format!("the context holds {MAX_SCOPES} workspace and project builds already; DELETE some first")
            })
        };
        match (c.workspace.as_deref(), c.project.as_deref()) {
            (Some(w), _) => {
                let id = scope_id(w).ok_or_else(|| format!("{w:?} is not a workspace ref"))?;
                if let Some(e) = refuse_new(st.workspaces.contains_key(&id)) {
                    return Err(e);
                }
                st.workspaces.insert(id, c.build);
            }
            (_, Some(p)) => {
                let id = scope_id(p).ok_or_else(|| format!("{p:?} is not a project ref"))?;
                if let Some(e) = refuse_new(st.projects.contains_key(&id)) {
                    return Err(e);
                }
                st.projects.insert(id, c.build);
            }
            _ => st.build = Some(c.build),
        }
        Ok(st.clone())
    }

    /// Clears one scope (`workspace=` or `project=`) or everything.
    pub fn clear(&self, workspace: Option<&str>, project: Option<&str>) -> ContextView {
        let Ok(mut st) = self.state.write() else {
            return ContextView::default();
        };
        match (workspace.and_then(scope_id), project.and_then(scope_id)) {
            (Some(w), _) => {
                st.workspaces.remove(&w);
            }
            (_, Some(p)) => {
                st.projects.remove(&p);
            }
            _ => *st = ContextView::default(),
        }
        st.clone()
    }

    /// Takes the whole context from elsewhere: in fleet mode, each snapshot of the fleet's
    /// shared context (`crate::fleet::SharedContext::watch`), so lookups stay in memory.
    pub fn replace(&self, view: ContextView) {
        if let Ok(mut st) = self.state.write() {
            *st = view;
        }
    }

    pub fn view(&self) -> ContextView {
        self.state.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// (project, workspace, global) builds for a write in these scopes.
    pub fn lookup(
        &self,
        workspace: Option<&str>,
        project: Option<&str>,
    ) -> (Option<String>, Option<String>, Option<String>) {
        let Ok(st) = self.state.read() else {
            return (None, None, None);
        };
        (
            project.and_then(|p| st.projects.get(p).cloned()),
            workspace.and_then(|w| st.workspaces.get(w).cloned()),
            st.build.clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        let c = BuildContext::default();
        c.set(SetContext {
            build: "g".into(),
            workspace: None,
            project: None,
        })
        .expect("set");
        c.set(SetContext {
            build: "w".into(),
            workspace: Some("/workspace/200".into()),
            project: None,
        })
        .expect("set");
        c.set(SetContext {
            build: "p".into(),
            workspace: None,
            project: Some("https://h/slm/webservice/v2.0/project/300".into()),
        })
        .expect("set");
        assert_eq!(
            c.lookup(Some("200"), Some("300")),
            (Some("p".into()), Some("w".into()), Some("g".into()))
        );
        assert_eq!(
            c.lookup(Some("201"), Some("301")),
            (None, None, Some("g".into()))
        );
        c.clear(None, Some("300"));
        assert_eq!(c.lookup(Some("200"), Some("300")).0, None);
        c.clear(None, None);
        assert_eq!(c.view(), ContextView::default());
        assert!(
            c.set(SetContext {
                build: " ".into(),
                workspace: None,
                project: None
            })
            .is_err()
        );
    }
}
