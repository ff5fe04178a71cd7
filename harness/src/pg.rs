//! A real PostgreSQL for the fleet tests, started by the harness in a temporary directory and
//! reachable only through a Unix socket there. The server binaries are Debian's
//! (`/usr/lib/postgresql/<version>/bin`); where they are missing and we are root they are
//! installed with apt (`postgresql-15`), the way the e2e clients are installed on first use.
//! PostgreSQL refuses to run as root, so as root the server runs as `nobody` (65534).
//!
//! One shared server per test binary run, a fresh database per test ([`PgServer::fresh_db`]);
//! tests that stop the server start a private one. Nothing leaks: a watchdog process holds the
//! read end of a pipe whose write end only this process has; when it exits — even by `kill -9`
//! — the watchdog stops the server and removes its directory. An `owner` file per server lets
//! the next run reap anything a killed watchdog left behind.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;
const PORT: u16 = 5432;
const PACKAGE: &str = "postgresql-15";

pub struct PgServer {
    dir: PathBuf,
    bin: PathBuf,
    as_nobody: bool,
    postmaster: Mutex<Option<Child>>,
    // Dropping this closes the pipe and so stops the server.
    _watchdog: Mutex<Option<ChildStdin>>,
}

/// The shared server of this test run.
pub fn shared() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(PgServer::start)
}

fn root_dir() -> PathBuf {
    std::env::temp_dir().join("rally-sidecar-pg")
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The directory of the newest installed PostgreSQL server, installing one if we may.
fn bindir() -> PathBuf {
    let find = || -> Option<PathBuf> {
        let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                (v >= 13 && bin.join("postgres").is_file() && bin.join("initdb").is_file())
                    .then_some((v, bin))
            })
            .collect();
        found.sort();
        found.pop().map(|(_, b)| b)
    };
    if let Some(b) = find() {
        return b;
    }
    assert!(
        is_root(),
        "the fleet tests need PostgreSQL's server binaries (13 or newer) in \
         /usr/lib/postgresql/<version>/bin: install them, e.g. `sudo apt-get install {PACKAGE}`"
    );
    install();
    find().unwrap_or_else(|| panic!("{PACKAGE} installed but no server binaries found"))
}

/// `apt-get install postgresql-15`, without the default cluster Debian would create and start.
fn install() {
    // The repository's .e2e, beside the e2e clients (this crate lives in harness/).
    let e2e = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.e2e");
    std::fs::create_dir_all(&e2e).expect(".e2e");
    let lock = std::fs::File::create(e2e.join(".pg-lock")).expect("lock");
    lock.lock().expect("lock");
    let conf = Path::new("/etc/postgresql-common/createcluster.conf");
    if !conf.exists() {
        std::fs::create_dir_all("/etc/postgresql-common").expect("conf dir");
        std::fs::write(conf, "create_main_cluster = false\n").expect("createcluster.conf");
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let install = [
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "-o",
        "Dpkg::Options::=--force-confold",
        PACKAGE,
    ];
    if !apt(&install) {
        assert!(apt(&["update", "-q"]), "apt-get update failed");
        assert!(apt(&install), "apt-get install {PACKAGE} failed");
    }
}

/// Runs a server binary, as `nobody` when we are root.
fn command(bin: &Path, name: &str, as_nobody: bool, cwd: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(bin.join(name));
    c.current_dir(cwd).env("LC_ALL", "C").stdin(Stdio::null());
    if as_nobody {
        c.uid(NOBODY).gid(NOBODY);
    }
    c
}

/// Stops what earlier runs left running when their process and watchdog both died.
fn reap_stale() {
    let Ok(entries) = std::fs::read_dir(root_dir()) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let owner = std::fs::read_to_string(e.path().join("owner")).unwrap_or_default();
        // A server being set up this very moment (by another test, or another test process)
        // has no owner file yet: only an old directory without one is stale.
        let young = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|d| d < Duration::from_secs(120)));
        if owner.trim().is_empty() && young {
            continue;
        }
        let alive = owner
            .trim()
            .parse::<u32>()
            .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if alive {
            continue;
        }
        let pidfile = e.path().join("data/postmaster.pid");
        if let Some(pid) = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|t| t.lines().next().map(str::to_string))
        {
            let _ = Command::new("kill").args(["-QUIT", &pid]).status();
        }
        let _ = std::fs::remove_dir_all(e.path());
    }
}

impl PgServer {
    /// Initialises and starts a server of its own (blocking; seconds).
    pub fn start() -> PgServer {
        let bin = bindir();
        reap_stale();
        let as_nobody = is_root();
        let dir = root_dir().join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(dir.join("sock")).expect("server dir");
        std::fs::write(dir.join("owner"), std::process::id().to_string()).expect("owner");
        if as_nobody {
            for p in [&dir, &dir.join("sock")] {
                std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).expect("chown");
            }
        }
        let out = command(&bin, "initdb", as_nobody, &dir)
            .args(["-D", "data", "-U", "postgres", "--auth=trust", "--no-sync"])
            .args(["-E", "UTF8", "--locale=C"])
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let server = PgServer {
            _watchdog: Mutex::new(Some(watchdog(&dir))),
            dir,
            bin,
            as_nobody,
            postmaster: Mutex::new(None),
        };
        server.run();
        server
    }

    fn run(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))
            .expect("log");
        let child = command(&self.bin, "postgres", self.as_nobody, &self.dir)
            .args(["-D", "data", "-k"])
            .arg(self.dir.join("sock"))
            .args(["-p", &PORT.to_string(), "-c", "listen_addresses="])
            // A test database need not survive a power cut.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=400"])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("postgres");
        *self.postmaster.lock().expect("postmaster") = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = command(&self.bin, "pg_isready", false, &self.dir)
                .arg("-h")
                .arg(self.dir.join("sock"))
                .args(["-p", &PORT.to_string(), "-U", "postgres", "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start; its log: {}",
                std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fast shutdown (SIGINT), waiting for the server to exit: the database becomes unreachable.
    pub fn stop(&self) {
        if let Some(mut child) = self.postmaster.lock().expect("postmaster").take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same directory and socket.
    pub fn restart(&self) {
        self.run();
    }

    /// A connection string for `db` (tokio-postgres key=value form).
    pub fn url(&self, db: &str) -> String {
        format!(
            "host={} port={PORT} user=postgres dbname={db}",
            self.dir.join("sock").display()
        )
    }

    /// A new, empty database for one test.
    pub async fn fresh_db(&self) -> String {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let (client, conn) = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
            .await
            .expect("connect to the test server");
        let task = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        drop(client);
        let _ = task.await;
        self.url(&name)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        // Closing the pipe lets the watchdog remove the directory.
        self._watchdog.lock().expect("watchdog").take();
    }
}

/// A process that waits for EOF on its stdin — when this process exits, however it exits —
/// and then stops the server and removes its directory. It must outlive this process, so it is
/// never waited for (init reaps it).
#[allow(clippy::zombie_processes)]
fn watchdog(dir: &Path) -> ChildStdin {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(
            "cat >/dev/null; \
             pid=$(head -n 1 \"$1/data/postmaster.pid\" 2>/dev/null); \
             [ -n \"$pid\" ] && kill -INT \"$pid\" 2>/dev/null; \
             for _ in 1 2 3 4 5 6 7 8 9 10; do [ -e \"$1/data/postmaster.pid\" ] || break; sleep 0.5; done; \
             [ -n \"$pid\" ] && kill -KILL \"$pid\" 2>/dev/null; \
             rm -rf \"$1\"",
        )
        .arg("watchdog")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("watchdog");
    let mut stdin = child.stdin.take().expect("watchdog stdin");
    // Nothing to say; the pipe itself is the signal. Writing nothing checks it is open.
    stdin.write_all(b"").expect("watchdog pipe");
    stdin
}
