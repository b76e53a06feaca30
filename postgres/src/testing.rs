//! Test helpers: a private Postgres cluster, and a fresh database on it for each test.
//!
//! Tests use the server named by `METER_TEST_POSTGRES` (`postgres://USER:PASSWORD@HOST:PORT/DB`
//! of a user who may create databases, as `deploy/test.sh` starts one), or else start a private
//! cluster (Debian's `postgresql` package; `deploy/postgres.sh` installs it) that dies with the
//! test process. Postgres refuses to run as root; as root, the cluster runs as `postgres`.

use crate::{Pg, PgUrl};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A Postgres cluster of a test's own, on a free port, with its data in a directory that
/// outlives restarts.
pub struct PostgresServer {
    dir: PathBuf,
    port: u16,
    password: String,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Debian's newest installed server binaries.
fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|p| p.join("postgres").exists()).collect()
        })
        .unwrap_or_default();
    dirs.sort_by_key(|p| {
        p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok())
    });
    dirs.pop().expect("a Postgres server in /usr/lib/postgresql/*/bin: run deploy/postgres.sh, which installs one")
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// The command prefix that runs a program as the `postgres` user when this process is root.
fn as_postgres() -> &'static str {
    static PREFIX: OnceLock<&'static str> = OnceLock::new();
    PREFIX.get_or_init(|| if is_root() { "setpriv --reuid=postgres --regid=postgres --init-groups " } else { "" })
}

fn sh(script: &str) {
    let out = Command::new("sh").arg("-c").arg(script).output().expect("sh runs");
    assert!(
        out.status.success(),
        "{script}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PostgresServer {
    /// Creates a cluster under `dir` (superuser `meter` with a password), starts it and waits
    /// until it answers.
    pub fn start(dir: &Path) -> Self {
        let password = format!("pw{}{}", std::process::id(), free_port());
        let bin = bin_dir();
        let d = dir.display();
        if is_root() {
            sh(&format!("chown -R postgres:postgres {d}"));
        }
        std::fs::write(dir.join("password"), &password).expect("the password file");
        sh(&format!(
            "{prefix}{bin}/initdb -D {d}/data -U meter --pwfile={d}/password --auth=scram-sha-256 --locale=C \
             --encoding=UTF8 --no-sync >{d}/initdb.log 2>&1 || {{ tail -20 {d}/initdb.log; exit 1; }}",
            prefix = as_postgres(),
            bin = bin.display()
        ));
        let mut server = Self { dir: dir.to_path_buf(), port: free_port(), password, child: None };
        server.restart();
        server
    }

    /// `postgres://meter:PASSWORD@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> PgUrl {
        PgUrl::parse(&format!("postgres://meter:{}@127.0.0.1:{}/postgres", self.password, self.port))
            .expect("a valid URL")
    }

    /// Kills the server at once (SIGKILL), as a crash would, and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the server again on the same data and port, and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(60);
        // A start right after a kill can find the old backends' shared memory still held for a
        // moment, and the server exits; try again until the deadline.
        while !self.start_once(deadline) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts the server; true once it answers, false when it exited before the deadline.
    fn start_once(&mut self, deadline: Instant) -> bool {
        let bin = bin_dir();
        let d = self.dir.display();
        // The shell waits on the server and kills it when it is killed itself or when the test
        // process is gone, so no server outlives its test. `setpriv` execs, so `$!` is the
        // postmaster; its backends exit when it dies.
        let script = format!(
            "{prefix}{bin}/postgres -D {d}/data -p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories= \
             -c fsync=off -c max_connections=300 >>{d}/server.log 2>&1 & server=$!; \
             trap 'kill -9 $server; exit' TERM INT; \
             while kill -0 {parent} 2>/dev/null && kill -0 $server 2>/dev/null; do sleep 0.2; done; kill -9 $server",
            prefix = as_postgres(),
            bin = bin.display(),
            port = self.port,
            parent = std::process::id(),
        );
        let mut child =
            Command::new("sh").arg("-c").arg(script).stdin(Stdio::null()).spawn().expect("sh starts postgres");
        loop {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                self.child = Some(child);
                return true;
            }
            if let Ok(Some(status)) = child.try_wait() {
                assert!(Instant::now() < deadline, "postgres exited ({status}); see {d}/server.log");
                return false;
            }
            assert!(Instant::now() < deadline, "postgres did not answer within 60 s; see {d}/server.log");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }
}

/// The Postgres server tests share: `METER_TEST_POSTGRES`, or one started for this process.
pub fn shared_url() -> PgUrl {
    static SHARED: OnceLock<(PgUrl, Option<(PostgresServer, tempfile::TempDir)>)> = OnceLock::new();
    let (url, _) = SHARED.get_or_init(|| match std::env::var("METER_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => (PgUrl::parse(&url).expect("METER_TEST_POSTGRES is a postgres:// URL"), None),
        _ => {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let server = PostgresServer::start(dir.path());
            (server.url(), Some((server, dir)))
        }
    });
    url.clone()
}

/// A database of its own on the server of `url` for one test, created empty.
pub fn fresh_database(url: &PgUrl) -> PgUrl {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let name = format!("meter_test_{}_{}_{nanos}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
    let admin = Pg::connect(url, 1).expect("the test server answers");
    admin
        .block(async {
            let c = admin.client().await?;
            c.batch_execute(&format!("CREATE DATABASE {name}")).await?;
            Ok::<_, crate::Error>(())
        })
        .expect("a test database");
    url.with_database(&name)
}

/// A fresh database, migrated for `component` with `migrations`, and a pool on it.
pub fn fresh(component: &str, migrations: &[&str]) -> Pg {
    let pg = Pg::connect(&fresh_database(&shared_url()), crate::MAX_CONNECTIONS).expect("the test database answers");
    crate::migrate(&pg, component, migrations).expect("migrations apply");
    pg
}
