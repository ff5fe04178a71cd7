//! The build context's shapes: a change (`PUT /context`'s body) and the whole context
//! (`GET /context`). Operators set the context at run time; the sidecar keeps it in memory
//! (`intercept::context::BuildContext`) and, in fleet mode, in PostgreSQL for every pod
//! (`fleet::SharedContext`) — both hold these, so they live here, below both.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Body of `PUT /context`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetContext {
    pub build: String,
    /// A workspace ref or ObjectID: the build applies only to writes in that workspace.
    #[serde(default)]
    pub workspace: Option<String>,
    /// A project ref or ObjectID: the build applies only to results of that project.
    #[serde(default)]
    pub project: Option<String>,
}

/// What `GET /context` shows.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ContextView {
    pub build: Option<String>,
    pub workspaces: BTreeMap<String, String>,
    pub projects: BTreeMap<String, String>,
}
