//! A real PostgreSQL server for the tests of the PostgreSQL backend, never a
//! mock: PostgreSQL 15 from the Debian package `postgresql` (`.ci/run`
//! installs it when missing).
//!
//! [`PgServer::start`] runs `initdb` into a temporary directory as the
//! `postgres` user (initdb refuses root; the directory is chowned to it),
//! then `pg_ctl start` on a free port of 127.0.0.1 with the socket in that
//! directory. [`PgServer::database`] creates one database per test (or per
//! property case). [`PgServer::crash`] is `pg_ctl stop -m immediate` (the
//! server dies without a checkpoint: what is not in its WAL on disk is
//! lost), [`PgServer::restart`] starts it again on the same port, and drop
//! crashes it and removes the directory. A guard process stops the server
//! and removes its directory when the test process exits, however it exits
//! (so the shared server of [`PgServer::shared`], which is never dropped,
//! neither outlives its tests nor leaves its data behind).
//!
//! Where the binaries are missing, or this is not root with `runuser` and a
//! `postgres` user, `start` prints why and returns `None`: the tests that
//! need a server then pass without running.
//!
//! The server runs with `fsync = off`: the tests crash the server, never the
//! machine, so what the server wrote to the operating system survives
//! either way, and the tests cost far less disk time on a shared machine.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// Where the Debian package puts PostgreSQL 15's server binaries.
pub const BIN: &str = "/usr/lib/postgresql/15/bin";

/// The superuser `initdb` creates (connections need no password: trust).
pub const USER: &str = "millpond";

/// A running PostgreSQL server in a temporary directory.
pub struct PgServer {
    dir: tempfile::TempDir,
    port: u16,
    options: String,
    databases: AtomicU32,
}

fn bin(name: &str) -> PathBuf {
    Path::new(BIN).join(name)
}

/// Why a server cannot be started here, if it cannot.
fn unavailable() -> Option<String> {
    if !bin("initdb").exists() || !bin("pg_ctl").exists() {
        return Some(format!(
            "{BIN}/initdb or pg_ctl is missing (apt-get install postgresql)"
        ));
    }
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("initdb must run as the postgres user: these tests need root".into());
    }
    let runuser = Command::new("runuser").arg("--help").output();
    if runuser.is_err() {
        return Some("runuser is missing".into());
    }
    let user = Command::new("id").args(["-u", "postgres"]).output().ok()?;
    if !user.status.success() {
        return Some("there is no postgres user".into());
    }
    None
}

/// Runs `args` as the postgres user; panics with its output if it fails.
fn as_postgres(program: &Path, args: &[&str]) {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run runuser");
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl PgServer {
    /// Starts a new server, or says why it cannot and returns `None`.
    pub fn start() -> Option<PgServer> {
        PgServer::start_with("")
    }

    /// [`PgServer::start`] with more server options (`-c name=value ...`),
    /// kept for restarts.
    pub fn start_with(options: &str) -> Option<PgServer> {
        if let Some(why) = unavailable() {
            eprintln!("skipping: no PostgreSQL server can be started here: {why}");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("millpond-pg-")
            .tempdir()
            .expect("tempdir");
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(status.success(), "chown of {} failed", dir.path().display());
        let data = dir
            .path()
            .to_str()
            .expect("a UTF-8 temporary path")
            .to_owned();
        as_postgres(
            &bin("initdb"),
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                USER,
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let server = PgServer {
            dir,
            port: free_port(),
            options: options.to_owned(),
            databases: AtomicU32::new(0),
        };
        server.restart();
        server.guard();
        Some(server)
    }

    /// One server for the whole test process (never dropped: its guard
    /// stops it when the process exits), or `None` as for [`start`].
    pub fn shared() -> Option<&'static PgServer> {
        static SERVER: OnceLock<Option<PgServer>> = OnceLock::new();
        SERVER.get_or_init(PgServer::start).as_ref()
    }

    /// A process that waits for this test process to end, then crashes the
    /// server (a no-op if it is stopped already) and removes its directory:
    /// the shared server is never dropped, so nothing else would, and a
    /// leaked data directory is a quarter of a gigabyte of a shared disk.
    #[expect(
        clippy::zombie_processes,
        reason = "the guard outlives this process on purpose: it stops the server when it ends"
    )]
    fn guard(&self) {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             runuser -u postgres -- {pg_ctl} -D '{dir}' stop -m immediate >/dev/null 2>&1; \
             rm -rf '{dir}'",
            pid = std::process::id(),
            pg_ctl = bin("pg_ctl").display(),
            dir = self.data(),
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the server's guard");
    }

    fn data(&self) -> &str {
        self.dir.path().to_str().expect("a UTF-8 temporary path")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts the server (again, after [`crash`]), waiting until it accepts
    /// connections.
    pub fn restart(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300 \
             -c shared_buffers=32MB {}",
            self.port,
            self.data(),
            self.options
        );
        let log = format!("{}/server.log", self.data());
        as_postgres(
            &bin("pg_ctl"),
            &[
                "-D",
                self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "-t",
                "120",
                "start",
            ],
        );
    }

    /// Kills the server as a crash would: `pg_ctl stop -m immediate` (no
    /// shutdown checkpoint; the next start recovers from its WAL).
    pub fn crash(&self) {
        as_postgres(
            &bin("pg_ctl"),
            &["-D", self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    /// The connection string of database `name`.
    pub fn conninfo(&self, name: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={USER} dbname={name}",
            self.port
        )
    }

    /// Creates a new, empty database; returns its connection string.
    pub fn database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("test{n}");
        let out = Command::new(bin("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
            .arg(&name)
            .stdin(Stdio::null())
            .output()
            .expect("run createdb");
        assert!(
            out.status.success(),
            "createdb {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.conninfo(&name)
    }

    /// Runs SQL in database `conninfo`'s with psql; returns its unaligned
    /// output.
    pub fn psql(&self, conninfo: &str, sql: &str) -> String {
        let out = Command::new(bin("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                conninfo,
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin("pg_ctl"))
            .args(["-D", self.data(), "-m", "immediate", "-w", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
