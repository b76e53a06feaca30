//! Test helpers: a private ClickHouse server, and a fresh database on it for each test.
//!
//! Tests use the server named by `METER_TEST_CLICKHOUSE` (`http://HOST:PORT`, as
//! `deploy/test.sh` starts one), or else start a private `clickhouse-server` (Debian's package;
//! `deploy/clickhouse.sh` installs it) that dies with the test process.

use crate::ClickHouseUrl;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A `clickhouse-server` process of a test's own, on free ports, with its data in a directory that
/// outlives restarts.
pub struct ClickHouseServer {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

impl ClickHouseServer {
    /// Starts a server keeping its data under `dir`, and waits until it answers.
    pub fn start(dir: &Path) -> Self {
        let mut server = Self { dir: dir.to_path_buf(), port: free_port(), child: None };
        server.restart();
        server
    }

    /// `http://127.0.0.1:PORT`.
    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        self.stop_wrapper();
        // The wrapper forwards the kill; wait until the port is free again.
        let deadline = Instant::now() + Duration::from_secs(30);
        while ping(self.port) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the server again on the same data and port, and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let d = self.dir.display();
        for sub in ["data", "tmp", "user_files", "format_schemas", "log"] {
            std::fs::create_dir_all(self.dir.join(sub)).expect("server directories");
        }
        let (tcp, inter) = (free_port(), free_port());
        // The shell waits on the server and kills it when it is killed itself or when the test
        // process is gone, so no server outlives its test.
        let script = format!(
            "clickhouse-server --config-file=/etc/clickhouse-server/config.xml -- --path={d}/data/ --tmp_path={d}/tmp/ \
             --user_files_path={d}/user_files/ --format_schema_path={d}/format_schemas/ --http_port={port} \
             --tcp_port={tcp} --interserver_http_port={inter} --listen_host=127.0.0.1 --mark_cache_size=268435456 \
             --logger.log={d}/log/server.log --logger.errorlog={d}/log/error.log --logger.console=0 \
             >>{d}/log/stdout.log 2>&1 & server=$!; trap 'kill -9 $server; exit' TERM INT KILL; \
             while kill -0 {parent} 2>/dev/null && kill -0 $server 2>/dev/null; do sleep 0.2; done; kill -9 $server",
            port = self.port,
            parent = std::process::id(),
        );
        let child =
            Command::new("sh").arg("-c").arg(script).stdin(Stdio::null()).spawn().expect("sh starts clickhouse-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ping(self.port) {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "clickhouse-server exited ({status}); is it installed (deploy/clickhouse.sh installs it)? see {d}/log"
                );
            }
            assert!(Instant::now() < deadline, "clickhouse-server did not answer within 60 s; see {d}/log");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl ClickHouseServer {
    /// SIGTERM to the wrapper shell, whose trap SIGKILLs the server (a shell cannot trap SIGKILL
    /// itself, so killing it outright would orphan the server).
    fn stop_wrapper(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }
}

impl Drop for ClickHouseServer {
    fn drop(&mut self) {
        self.stop_wrapper();
    }
}

fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /ping HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.ends_with("Ok.\n")
}

/// The ClickHouse server tests share: `METER_TEST_CLICKHOUSE`, or one started for this process.
pub fn shared_http() -> String {
    static SHARED: OnceLock<(String, Option<(ClickHouseServer, tempfile::TempDir)>)> = OnceLock::new();
    let (http, _) = SHARED.get_or_init(|| match std::env::var("METER_TEST_CLICKHOUSE") {
        Ok(url) if !url.is_empty() => (url.trim_end_matches('/').to_string(), None),
        _ => {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let server = ClickHouseServer::start(dir.path());
            (server.http(), Some((server, dir)))
        }
    });
    http.clone()
}

/// A database of its own on `http` for one test: `clickhouse://HOST:PORT/meter_test_…`.
pub fn fresh_database(http: &str) -> ClickHouseUrl {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let name = format!("meter_test_{}_{}_{nanos}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
    ClickHouseUrl::parse(&format!("clickhouse://{}/{name}", http.trim_start_matches("http://")))
        .expect("a valid test URL")
}
