//! `rally-sidecar summary --build <B>`: the one answer a CI pipeline needs at the end of a run —
//! did every result of this build land? It reads the journal (never changes a row, never runs
//! recovery), optionally waits for pending writes to settle, and reports what was written,
//! confirmed, refused (with reasons), left unconfirmed or still pending, the duplicates the
//! sidecar adopted instead of writing twice, and the test cases involved. The verdict is an
//! exit code a pipeline can gate on; the same report is served as `GET /builds/<B>` on the
//! admin listener. Renderings (text, Markdown for a job summary, JUnit XML) are in [`render`].

pub mod render;

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::journal::{BuildCounts, Journal, JournalError, State, WriteView};

/// At most this many rows are read for one build (no bodies: a few hundred bytes each).
const MAX_ROWS: usize = 100_000;

/// How often `--wait` looks again.
const POLL: Duration = Duration::from_millis(500);

/// Exit codes, most serious first when several apply.
pub mod exit {
    /// Every write of the build confirmed, none pending.
    pub const OK: u8 = 0;
    /// The journal could not be read.
    pub const FAILURE: u8 = 1;
    /// At least one result was refused (by the sidecar) or rejected (by Rally): not in Rally.
    pub const REFUSED: u8 = 2;
    /// At least one write is unconfirmed: it may or may not be in Rally (`journal replay`).
    pub const UNCONFIRMED: u8 = 3;
    /// At least one write is still pending (after `--wait`, if given).
    pub const PENDING: u8 = 4;
    /// Nothing was journaled for this build: a wrong build name or another journal.
    pub const EMPTY: u8 = 5;
    /// No build given and none configured.
    pub const USAGE: u8 = 64;
}

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
    /// For a CI job's summary page (`$GITHUB_STEP_SUMMARY`, a GitLab report).
    Markdown,
    /// JUnit XML: one test case per result; refused and unconfirmed ones fail.
    Junit,
}

/// The build's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    AllConfirmed,
    Refused,
    Unconfirmed,
    Pending,
    Empty,
}

impl Verdict {
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::AllConfirmed => exit::OK,
            Verdict::Refused => exit::REFUSED,
            Verdict::Unconfirmed => exit::UNCONFIRMED,
            Verdict::Pending => exit::PENDING,
            Verdict::Empty => exit::EMPTY,
        }
    }

    /// Decided from the counts, most serious first: a result that is certainly not in Rally
    /// outranks one that may not be, which outranks one not yet known.
    pub fn of(c: &BuildCounts) -> Verdict {
        if c.total == 0 {
            Verdict::Empty
        } else if c.refused + c.rejected > 0 {
            Verdict::Refused
        } else if c.unconfirmed > 0 {
            Verdict::Unconfirmed
        } else if c.pending > 0 {
            Verdict::Pending
        } else {
            Verdict::AllConfirmed
        }
    }
}

/// A test case the build wrote results for.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TestCaseLine {
    /// FormattedID (`TC4`) where known, else the ObjectID.
    pub name: String,
    pub object_id: Option<String>,
    pub results: usize,
    /// The newest result's verdict and state.
    pub verdict: Option<String>,
    pub state: State,
}

/// The report for one build.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub build: String,
    pub verdict: Verdict,
    pub exit_code: u8,
    pub counts: BuildCounts,
    /// Refused, rejected, unconfirmed and pending writes, each with its reason.
    pub problems: Vec<WriteView>,
    pub test_cases: Vec<TestCaseLine>,
    /// Every write of the build, oldest first (the JUnit test cases).
    pub writes: Vec<WriteView>,
    /// Something the reader should know (why pending writes will not settle, an empty build).
    pub notes: Vec<String>,
}

impl Summary {
    fn of(build: &str, writes: Vec<WriteView>) -> Summary {
        let mut counts = BuildCounts {
            build: Some(build.to_string()),
            ..BuildCounts::default()
        };
        let mut test_cases: Vec<TestCaseLine> = Vec::new();
        let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for w in &writes {
            counts.count(w);
            let name = w.test_case_label();
            match index.get(&name).and_then(|&i| test_cases.get_mut(i)) {
                Some(t) => {
                    t.results += 1;
                    t.verdict = w.verdict.clone();
                    t.state = w.state;
                }
                None => {
                    index.insert(name.clone(), test_cases.len());
                    test_cases.push(TestCaseLine {
                        name,
                        object_id: w.test_case.clone(),
                        results: 1,
                        verdict: w.verdict.clone(),
                        state: w.state,
                    });
                }
            }
        }
        let problems = writes
            .iter()
            .filter(|w| w.state != State::Confirmed)
            .cloned()
            .collect();
        let verdict = Verdict::of(&counts);
        let mut notes = Vec::new();
        if verdict == Verdict::Empty {
            notes.push(format!(
                "nothing was journaled for build {build:?}: check the Build the results carry and that journal.path is the sidecar's journal"
            ));
        }
        Summary {
            build: build.to_string(),
            verdict,
            exit_code: verdict.exit_code(),
            counts,
            problems,
            test_cases,
            writes,
            notes,
        }
    }
}

/// The report for `build` as the journal has it now.
pub async fn summarize(journal: &Journal, build: &str) -> Result<Summary, JournalError> {
    Ok(Summary::of(
        build,
        journal.build_writes(build, MAX_ROWS).await?,
    ))
}

/// [`summarize`], after waiting up to `wait` for the build's pending writes to settle. Stops
/// waiting early when no live sidecar owns the journal: nothing would settle them.
pub async fn summarize_after(
    journal: &Journal,
    build: &str,
    wait: Duration,
) -> Result<Summary, JournalError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let mut s = summarize(journal, build).await?;
        if s.counts.pending == 0 {
            return Ok(s);
        }
        if journal.live_owner().await?.is_none() {
            s.notes.push(
                "no running sidecar owns the journal, so its pending writes will not settle; \
                 start the sidecar (it marks them unconfirmed) and use `journal replay`"
                    .into(),
            );
            return Ok(s);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            if !wait.is_zero() {
                s.notes.push(format!(
                    "still pending after waiting {}",
                    humantime::format_duration(wait)
                ));
            }
            return Ok(s);
        }
        tokio::time::sleep(POLL.min(deadline - now)).await;
    }
}

/// The command: finds the build (the flag, else `context.build`, else the CI variable the
/// sidecar would use), reads the journal at `journal.path`, prints the report on stdout and
/// returns the exit code. Errors go to stderr.
pub fn cli(cfg: &Config, build: Option<String>, wait: Option<Duration>, format: Format) -> u8 {
    let build = build
        .filter(|b| !b.trim().is_empty())
        .or_else(|| cfg.context.build.clone())
        .or_else(|| cfg.context.build_from_env.clone().map(|(_, v)| v));
    let Some(build) = build else {
        eprintln!(
            "rally-sidecar summary: give --build (or set context.build, or one of the CI variables {})",
            cfg.context.build_env.join(", ")
        );
        return exit::USAGE;
    };
    let path = cfg.journal.path.as_path();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rally-sidecar summary: cannot start the runtime: {e}");
            return exit::FAILURE;
        }
    };
    match rt.block_on(report(path, &build, wait.unwrap_or_default())) {
        Ok(s) => {
            print!("{}", render::render(&s, format));
            s.exit_code
        }
        Err(e) => {
            eprintln!("rally-sidecar summary: {e}");
            exit::FAILURE
        }
    }
}

/// Opens the journal only if it exists: opening creates a missing file, and a summary must not
/// leave an empty journal behind a mistyped path.
async fn report(path: &Path, build: &str, wait: Duration) -> Result<Summary, String> {
    if !path.exists() {
        return Err(format!(
            "no journal at {} (set journal.path, or RALLY_SIDECAR_JOURNAL_PATH, to the sidecar's)",
            path.display()
        ));
    }
    let journal = Journal::open(path).map_err(|e| e.to_string())?;
    summarize_after(&journal, build, wait)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
