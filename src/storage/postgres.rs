//! [`PostgresStorage`]: the [`Storage`] seam over a PostgreSQL database (the
//! **PostgreSQL backend**, feature `postgres`, [`Config::postgres`](crate::Config::postgres)).
//! The only file that names the `postgres` crate: its errors become
//! [`Error`]s here, its types never leave this module.
//!
//! Tables (created by open, inside one transaction, versioned by
//! `millpond_schema`; see DESIGN.md, "PostgreSQL backend"):
//! - `millpond_schema (id = 1, version, syncs)`: the table layout's version
//!   ([`SCHEMA_VERSION`]; another one is refused with
//!   [`Error::UnsupportedFormat`]) and a counter that [`Storage::sync`]
//!   bumps so that its transaction has a commit record to wait for;
//! - `millpond_meta (key bytea, record bytea)`: user key -> metadata record;
//! - `millpond_deadline (key bytea, record bytea)`: the deadline index;
//! - `millpond_sys (key bytea, value bytea)`: system records ([`SysKey`]);
//! - `millpond_blob (id bigint, bytes bytea)`: the blob tree;
//! - `millpond_durable (id = 1, record bytea)`: the durable record.
//!
//! What it keeps of the [`Storage`] promises:
//! - an atomic commit: [`Storage::commit`] is one PostgreSQL transaction
//!   (nothing to settle after a failure: it rolled back whole);
//! - ordering: every transaction commits with `synchronous_commit = off`
//!   (the commit returns once its WAL record is in the server's WAL buffer,
//!   before the WAL is flushed); the server's WAL is one sequence, and its
//!   recovery replays a prefix of it, so a server crash loses a suffix of
//!   the commits, never an earlier one while keeping a later one. A blob
//!   committed before a cycle's commit began precedes it in the WAL, so
//!   [`Storage::flush`] (the barrier) has nothing to do. The death of the
//!   engine's process loses nothing committed;
//! - durability: [`Storage::sync`] commits a small write with
//!   `synchronous_commit = on`, which returns only once the WAL is flushed up
//!   to its commit record, and so past every commit made before it;
//!   [`Storage::write_durable`] commits the durable record the same way;
//! - one engine per database: open takes a session-level advisory lock on a
//!   connection held for as long as the storage is open
//!   ([`Error::Locked`] while another engine has it).
//!
//! Connections: a small pool (`Pool`), one connection per concurrent call;
//! a connection that returned an error is dropped, never reused. A lost
//! connection, or a connection to a server that restarted since open, makes
//! the storage **broken**: every later write fails (reads go on), so the
//! flush coordinator's retries end in the keeper's reopen, whose recovery
//! checks what the server kept against what was committed and durable (a
//! crashed server may have lost commits made with `synchronous_commit =
//! off`: the keeper then poisons the engine).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use postgres::{Client, NoTls};

use super::{Backend, BlobId, Commit, DeadlineOp, MetaOp, Storage, SysKey};
use crate::codec::{self, DurableRecord};
use crate::error::{Error, Result};

/// The version of the table layout this build creates and reads.
pub(crate) const SCHEMA_VERSION: i32 = 1;

/// The advisory lock key that marks a database in use by an engine
/// ("millpond" in ASCII).
const LOCK_KEY: i64 = 0x6d69_6c6c_706f_6e64;

/// How long open waits for another engine's lock to go (a connection just
/// closed by a crashed or halted engine is released by the server a moment
/// later).
const LOCK_PATIENCE: Duration = Duration::from_secs(2);

/// Connections kept idle for reuse.
const POOL_IDLE: usize = 8;

/// How long a connection attempt may take when the connection string does
/// not say.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A PostgreSQL database named by a connection string, as parsed once by
/// `Config::postgres`.
pub(crate) struct Target {
    /// `postgres:<dbname>`: what `Engine::dir` and messages show (never the
    /// password).
    name: PathBuf,
    /// The parsed connection string, or why it does not parse (reported by
    /// `Config::validate`).
    config: std::result::Result<postgres::Config, String>,
}

impl Target {
    pub(crate) fn parse(conninfo: &str) -> Arc<Target> {
        let config = conninfo
            .parse::<postgres::Config>()
            .map_err(|e| format!("the PostgreSQL connection string does not parse: {e}"));
        let db = match &config {
            Ok(c) => c
                .get_dbname()
                .or(c.get_user())
                .unwrap_or("postgres")
                .to_owned(),
            Err(_) => "?".to_owned(),
        };
        let config = config.map(|mut c| {
            if c.get_connect_timeout().is_none() {
                c.connect_timeout(CONNECT_TIMEOUT);
            }
            c.application_name("millpond");
            c
        });
        Arc::new(Target {
            name: PathBuf::from(format!("postgres:{db}")),
            config,
        })
    }

    /// `postgres:<dbname>`.
    pub(crate) fn name(&self) -> &Path {
        &self.name
    }

    /// Why the connection string is unusable, if it is.
    pub(crate) fn invalid(&self) -> Option<&str> {
        self.config.as_ref().err().map(String::as_str)
    }

    fn connect(&self) -> Result<Client> {
        let config = self.config.as_ref().map_err(|e| Error::Config(e.clone()))?;
        let mut client = config.connect(NoTls).map_err(|e| pg_error(&self.name, e))?;
        // Every transaction commits without waiting for the WAL flush unless
        // it says otherwise (sync and the durable record do).
        client
            .batch_execute("SET synchronous_commit TO off")
            .map_err(|e| pg_error(&self.name, e))?;
        Ok(client)
    }
}

/// A postgres error as an [`Error`]: what the server refused is
/// [`Error::Storage`] (with its SQLSTATE), a lost or failed connection is
/// [`Error::Io`].
fn pg_error(name: &Path, e: postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        return Error::Storage(format!(
            "{}: {} (SQLSTATE {})",
            name.display(),
            db.message(),
            db.code().code()
        ));
    }
    let kind = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
    match kind {
        Some(kind) => Error::Io(std::io::Error::new(
            kind,
            format!("{}: {e}", name.display()),
        )),
        None if e.is_closed() => Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            format!("{}: {e}", name.display()),
        )),
        None => Error::Storage(format!("{}: {e}", name.display())),
    }
}

/// Opens a PostgreSQL store (see [`Backend`]).
pub(crate) struct PostgresBackend {
    pub target: Arc<Target>,
}

impl Backend for PostgresBackend {
    fn open(&self) -> Result<Arc<dyn Storage>> {
        Ok(Arc::new(PostgresStorage::open(&self.target)?))
    }

    fn probe(&self) -> Result<()> {
        let mut client = self.target.connect()?;
        client
            .simple_query("SELECT 1")
            .map_err(|e| pg_error(&self.target.name, e))?;
        Ok(())
    }
}

/// Whether a postgres error means the connection (or the server) was lost,
/// rather than a statement refused: SQLSTATE classes 08 (connection
/// exception) and 57 (operator intervention: shutdown, crash recovery), or
/// no server answer at all.
fn connection_lost(e: &postgres::Error) -> bool {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            code.starts_with("08") || code.starts_with("57")
        }
        None => true,
    }
}

/// Idle connections to one database, and whether the connection to the
/// server was lost since the storage opened.
struct Pool {
    target: Arc<Target>,
    idle: Mutex<Vec<Client>>,
    /// When the server last started, as seen by open: a connection to a
    /// server that started since then (it crashed, or was restarted) marks
    /// the storage broken.
    started: String,
    /// Set when a connection was lost or the server restarted: writes are
    /// refused from then on (reads go on), until the keeper replaces the
    /// storage, which retakes the lock and checks what the server kept.
    broken: Mutex<Option<String>>,
}

impl Pool {
    /// Runs `f` on a connection of the pool (a new one if none is idle); the
    /// connection goes back to the pool only if `f` succeeded.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Client) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        let idle = self.idle.lock().pop();
        let mut client = match idle {
            Some(c) if !c.is_closed() => c,
            Some(_) => {
                self.break_off("a connection to the server was closed".into());
                self.connect()?
            }
            None => self.connect()?,
        };
        let out = f(&mut client).map_err(|e| {
            if connection_lost(&e) || client.is_closed() {
                self.break_off(format!("a connection to the server was lost: {e}"));
            }
            pg_error(&self.target.name, e)
        })?;
        let mut idle = self.idle.lock();
        if idle.len() < POOL_IDLE && !client.is_closed() {
            idle.push(client);
        }
        Ok(out)
    }

    /// [`Pool::with`] for a write: refused once the storage is broken.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut Client) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        self.check()?;
        self.with(f)
    }

    /// A new connection, checked to be to the server open saw.
    fn connect(&self) -> Result<Client> {
        let mut client = self.target.connect()?;
        let started = server_started(&mut client).map_err(|e| pg_error(&self.target.name, e))?;
        if started != self.started {
            self.break_off(format!(
                "the server restarted (at {started}; it was up since {})",
                self.started
            ));
        }
        Ok(client)
    }

    fn break_off(&self, reason: String) {
        let mut broken = self.broken.lock();
        if broken.is_none() {
            log::warn!("millpond: {}: {reason}", self.target.name.display());
            *broken = Some(reason);
        }
    }

    /// [`Error::Io`] once the storage is broken.
    fn check(&self) -> Result<()> {
        match &*self.broken.lock() {
            None => Ok(()),
            Some(reason) => Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                format!(
                    "{}: {reason}; writes wait for the storage to be reopened",
                    self.target.name.display()
                ),
            ))),
        }
    }
}

/// When the server last started (`pg_postmaster_start_time()`), as text.
fn server_started(client: &mut Client) -> std::result::Result<String, postgres::Error> {
    client
        .query_one("SELECT pg_postmaster_start_time()::text", &[])?
        .try_get(0)
}

/// An open PostgreSQL store. Dropping it releases the database for the next
/// open.
pub(crate) struct PostgresStorage {
    pool: Pool,
    /// The connection holding the advisory lock for as long as the storage
    /// is open.
    lock: Mutex<Client>,
}

impl PostgresStorage {
    /// Connects, takes the database's lock (or [`Error::Locked`]), and
    /// creates the tables of a new store or checks the version of an
    /// existing one.
    pub(crate) fn open(target: &Arc<Target>) -> Result<PostgresStorage> {
        let name = &target.name;
        let mut lock = target.connect()?;
        let started = Instant::now();
        loop {
            let row = lock
                .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY])
                .map_err(|e| pg_error(name, e))?;
            let taken: bool = row.try_get(0).map_err(|e| pg_error(name, e))?;
            if taken {
                break;
            }
            if started.elapsed() >= LOCK_PATIENCE {
                return Err(Error::Locked { path: name.clone() });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let started = server_started(&mut lock).map_err(|e| pg_error(name, e))?;
        let storage = PostgresStorage {
            pool: Pool {
                target: Arc::clone(target),
                idle: Mutex::new(Vec::new()),
                started,
                broken: Mutex::new(None),
            },
            lock: Mutex::new(lock),
        };
        storage.create_tables()?;
        Ok(storage)
    }

    /// Creates the tables if they are missing (one transaction), after
    /// checking the version of a layout that exists.
    fn create_tables(&self) -> Result<()> {
        let found = self.pool.with(|c| {
            let mut tx = c.transaction()?;
            let exists: Option<String> = tx
                .query_one("SELECT to_regclass('millpond_schema')::text", &[])?
                .try_get(0)?;
            let version: Option<i32> = match exists {
                Some(_) => tx
                    .query_opt("SELECT version FROM millpond_schema WHERE id = 1", &[])?
                    .map(|row| row.try_get(0))
                    .transpose()?,
                None => None,
            };
            if version.is_none() {
                tx.batch_execute(
                    "CREATE TABLE IF NOT EXISTS millpond_schema (
                         id integer PRIMARY KEY CHECK (id = 1),
                         version integer NOT NULL,
                         syncs bigint NOT NULL DEFAULT 0);
                     CREATE TABLE IF NOT EXISTS millpond_meta (
                         key bytea PRIMARY KEY, record bytea NOT NULL);
                     CREATE TABLE IF NOT EXISTS millpond_deadline (
                         key bytea PRIMARY KEY, record bytea NOT NULL);
                     CREATE TABLE IF NOT EXISTS millpond_sys (
                         key bytea PRIMARY KEY, value bytea NOT NULL);
                     CREATE TABLE IF NOT EXISTS millpond_blob (
                         id bigint PRIMARY KEY, bytes bytea NOT NULL);
                     CREATE TABLE IF NOT EXISTS millpond_durable (
                         id integer PRIMARY KEY CHECK (id = 1), record bytea NOT NULL);",
                )?;
                tx.execute(
                    "INSERT INTO millpond_schema (id, version) VALUES (1, $1)
                     ON CONFLICT (id) DO NOTHING",
                    &[&SCHEMA_VERSION],
                )?;
            }
            tx.commit()?;
            Ok(version)
        })?;
        match found {
            Some(v) if v != SCHEMA_VERSION => Err(Error::UnsupportedFormat {
                found: u32::try_from(v).unwrap_or(0),
                supported: SCHEMA_VERSION as u32,
            }),
            _ => Ok(()),
        }
    }

    /// Rows of `(key, value)` as `Bytes` pairs.
    fn pairs(
        &self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<(Bytes, Bytes)>> {
        self.pool.with(|c| {
            c.query(sql, params)?
                .into_iter()
                .map(|row| {
                    let k: Vec<u8> = row.try_get(0)?;
                    let v: Vec<u8> = row.try_get(1)?;
                    Ok((Bytes::from(k), Bytes::from(v)))
                })
                .collect()
        })
    }

    fn one_bytes(
        &self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Option<Bytes>> {
        self.pool.with(|c| {
            c.query_opt(sql, params)?
                .map(|row| row.try_get::<_, Vec<u8>>(0).map(Bytes::from))
                .transpose()
        })
    }

    fn exists(&self, sql: &str) -> Result<bool> {
        self.pool
            .with(|c| c.query_one(sql, &[])?.try_get::<_, bool>(0))
    }

    /// Commits a small write with `synchronous_commit = on`, with `f` inside
    /// the transaction: when it returns, the WAL is flushed past every commit
    /// made before it.
    fn synchronously(
        &self,
        f: impl FnOnce(&mut postgres::Transaction<'_>) -> std::result::Result<(), postgres::Error>,
    ) -> Result<()> {
        self.pool.write(|c| {
            let mut tx = c.transaction()?;
            tx.batch_execute("SET LOCAL synchronous_commit TO on")?;
            f(&mut tx)?;
            tx.commit()
        })
    }
}

impl Drop for PostgresStorage {
    fn drop(&mut self) {
        // Released at once, so that a reopen right after does not wait for
        // the server to notice the closed connection.
        let _ = self
            .lock
            .get_mut()
            .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY]);
    }
}

/// A blob id as the `bigint` it is stored as (ids stay far below 2^63).
fn blob_id(id: BlobId) -> Result<i64> {
    i64::try_from(id).map_err(|_| Error::Storage(format!("blob id {id} is out of range")))
}

/// A `LIMIT` as a `bigint`.
fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A system record's key in `millpond_sys`.
fn sys_key(key: SysKey) -> Vec<u8> {
    match key {
        SysKey::Format => b"format".to_vec(),
        SysKey::State => b"state".to_vec(),
        SysKey::Gc(id) => {
            let mut k = b"gc".to_vec();
            k.extend_from_slice(&id.to_be_bytes());
            k
        }
    }
}

/// Changes to one keyed table, gathered for two set-based statements.
#[derive(Default)]
struct Changes<'a> {
    put_keys: Vec<&'a [u8]>,
    put_values: Vec<&'a [u8]>,
    removed: Vec<&'a [u8]>,
}

impl<'a> Changes<'a> {
    fn put(&mut self, key: &'a [u8], value: &'a [u8]) {
        self.put_keys.push(key);
        self.put_values.push(value);
    }

    fn deadline(&mut self, key: &'a [u8], op: &'a DeadlineOp) {
        match op {
            DeadlineOp::Keep => {}
            DeadlineOp::Set(record) => self.put(key, record),
            DeadlineOp::Clear => self.removed.push(key),
        }
    }

    /// Applies them to `table` (whose columns are `key` and `column`).
    fn apply(
        &self,
        tx: &mut postgres::Transaction<'_>,
        table: &str,
        column: &str,
    ) -> std::result::Result<(), postgres::Error> {
        if !self.removed.is_empty() {
            tx.execute(
                &format!("DELETE FROM {table} WHERE key = ANY($1)"),
                &[&self.removed],
            )?;
        }
        if !self.put_keys.is_empty() {
            tx.execute(
                &format!(
                    "INSERT INTO {table} (key, {column})
                     SELECT * FROM unnest($1::bytea[], $2::bytea[])
                     ON CONFLICT (key) DO UPDATE SET {column} = EXCLUDED.{column}"
                ),
                &[&self.put_keys, &self.put_values],
            )?;
        }
        Ok(())
    }
}

impl Storage for PostgresStorage {
    fn get_meta(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.one_bytes("SELECT record FROM millpond_meta WHERE key = $1", &[&key])
    }

    fn scan_meta(&self, from: &[u8], n: usize) -> Result<Vec<(Bytes, Bytes)>> {
        self.pairs(
            "SELECT key, record FROM millpond_meta WHERE key >= $1 ORDER BY key LIMIT $2",
            &[&from, &limit(n)],
        )
    }

    fn scan_meta_rev(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        n: usize,
    ) -> Result<Vec<(Bytes, Bytes)>> {
        self.pairs(
            "SELECT key, record FROM millpond_meta
             WHERE key >= $1 AND ($2::bytea IS NULL OR key < $2)
             ORDER BY key DESC LIMIT $3",
            &[&from, &to, &limit(n)],
        )
    }

    fn scan_deadlines(&self, from: &[u8], n: usize) -> Result<Vec<(Bytes, Bytes)>> {
        self.pairs(
            "SELECT key, record FROM millpond_deadline WHERE key >= $1 ORDER BY key LIMIT $2",
            &[&from, &limit(n)],
        )
    }

    fn scan_blobs(&self, from: BlobId, n: usize) -> Result<Vec<(BlobId, Bytes)>> {
        let from = blob_id(from)?;
        let rows: Vec<(i64, Bytes)> = self.pool.with(|c| {
            c.query(
                "SELECT id, bytes FROM millpond_blob WHERE id >= $1 ORDER BY id LIMIT $2",
                &[&from, &limit(n)],
            )?
            .into_iter()
            .map(|row| {
                let id: i64 = row.try_get(0)?;
                let v: Vec<u8> = row.try_get(1)?;
                Ok((id, Bytes::from(v)))
            })
            .collect()
        })?;
        rows.into_iter()
            .map(|(id, v)| {
                // Scanned from `from >= 0`: never negative.
                u64::try_from(id)
                    .map(|id| (id, v))
                    .map_err(|_| Error::corrupt(None, format!("a blob has the id {id}")))
            })
            .collect()
    }

    fn get_blob(&self, id: BlobId) -> Result<Option<Bytes>> {
        let id = blob_id(id)?;
        self.one_bytes("SELECT bytes FROM millpond_blob WHERE id = $1", &[&id])
    }

    fn put_blob(&self, id: BlobId, value: &[u8]) -> Result<()> {
        let id = blob_id(id)?;
        self.pool.write(|c| {
            c.execute(
                "INSERT INTO millpond_blob (id, bytes) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET bytes = EXCLUDED.bytes",
                &[&id, &value],
            )
            .map(drop)
        })
    }

    fn remove_blobs(&self, ids: &[BlobId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = ids
            .iter()
            .map(|&id| blob_id(id))
            .collect::<Result<Vec<_>>>()?;
        self.pool.write(|c| {
            c.execute("DELETE FROM millpond_blob WHERE id = ANY($1)", &[&ids])
                .map(drop)
        })
    }

    fn remove_blobs_from(&self, first: BlobId) -> Result<usize> {
        let Ok(first) = i64::try_from(first) else {
            // No stored id is that high.
            return Ok(0);
        };
        let n = self
            .pool
            .write(|c| c.execute("DELETE FROM millpond_blob WHERE id >= $1", &[&first]))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn path(&self) -> PathBuf {
        self.pool.target.name.clone()
    }

    fn is_blank(&self) -> Result<bool> {
        self.exists(
            "SELECT NOT (EXISTS (SELECT 1 FROM millpond_meta)
                      OR EXISTS (SELECT 1 FROM millpond_deadline)
                      OR EXISTS (SELECT 1 FROM millpond_sys)
                      OR EXISTS (SELECT 1 FROM millpond_blob))",
        )
    }

    fn blobs_empty(&self) -> Result<bool> {
        self.exists("SELECT NOT EXISTS (SELECT 1 FROM millpond_blob)")
    }

    fn commit(&self, commit: Commit) -> Result<()> {
        let mut meta = Changes::default();
        let mut deadlines = Changes::default();
        for op in &commit.ops {
            match op {
                MetaOp::Put {
                    key,
                    record,
                    deadline,
                } => {
                    meta.put(key, record);
                    deadlines.deadline(key, deadline);
                }
                MetaOp::Remove { key, deadline } => {
                    meta.removed.push(key);
                    deadlines.deadline(key, deadline);
                }
            }
        }
        let sys_keys: Vec<Vec<u8>> = commit.sys.iter().map(|(k, _)| sys_key(*k)).collect();
        let mut sys = Changes::default();
        for ((_, value), key) in commit.sys.iter().zip(&sys_keys) {
            match value {
                Some(v) => sys.put(key, v),
                None => sys.removed.push(key),
            }
        }
        if self.lock.lock().is_closed() {
            self.pool
                .break_off("the connection holding the database's lock was lost".into());
        }
        self.pool.write(|c| {
            let mut tx = c.transaction()?;
            meta.apply(&mut tx, "millpond_meta", "record")?;
            deadlines.apply(&mut tx, "millpond_deadline", "record")?;
            sys.apply(&mut tx, "millpond_sys", "value")?;
            tx.commit()
        })
    }

    fn get_sys(&self, key: SysKey) -> Result<Option<Bytes>> {
        let key = sys_key(key);
        self.one_bytes("SELECT value FROM millpond_sys WHERE key = $1", &[&key])
    }

    fn put_sys(&self, key: SysKey, value: Option<&[u8]>) -> Result<()> {
        let key = sys_key(key);
        self.pool.write(|c| {
            match value {
                Some(v) => c.execute(
                    "INSERT INTO millpond_sys (key, value) VALUES ($1, $2)
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    &[&key, &v],
                ),
                None => c.execute("DELETE FROM millpond_sys WHERE key = $1", &[&key]),
            }
            .map(drop)
        })
    }

    fn gc_ids(&self) -> Result<Vec<u64>> {
        let keys: Vec<Vec<u8>> = self.pool.with(|c| {
            c.query("SELECT key FROM millpond_sys ORDER BY key", &[])?
                .into_iter()
                .map(|row| row.try_get(0))
                .collect()
        })?;
        Ok(keys
            .iter()
            .filter_map(|k| {
                let id: [u8; 8] = k.strip_prefix(b"gc")?.try_into().ok()?;
                Some(u64::from_be_bytes(id))
            })
            .collect())
    }

    fn flush(&self) -> Result<()> {
        // A committed transaction is in the server's WAL sequence: it
        // outlives this process, and a server crash keeps a prefix.
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        self.synchronously(|tx| {
            tx.execute("UPDATE millpond_schema SET syncs = syncs + 1", &[])
                .map(drop)
        })
    }

    fn settle(&self) -> Result<()> {
        // A failed transaction rolled back whole.
        Ok(())
    }

    fn read_durable(&self) -> Result<Option<DurableRecord>> {
        match self.one_bytes("SELECT record FROM millpond_durable WHERE id = 1", &[])? {
            None => Ok(None),
            Some(raw) => codec::decode_durable(&raw).map(Some).ok_or_else(|| {
                Error::corrupt(
                    None,
                    format!(
                        "the durable record in {} is damaged",
                        self.pool.target.name.display()
                    ),
                )
            }),
        }
    }

    fn durable_exists(&self) -> Result<bool> {
        self.exists("SELECT EXISTS (SELECT 1 FROM millpond_durable)")
    }

    fn write_durable(&self, record: &DurableRecord) -> Result<()> {
        let raw = codec::encode_durable(record).to_vec();
        self.synchronously(|tx| {
            tx.execute(
                "INSERT INTO millpond_durable (id, record) VALUES (1, $1)
                 ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
                &[&raw],
            )
            .map(drop)
        })
    }
}
