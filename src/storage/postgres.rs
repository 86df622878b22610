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
//! - `millpond_durable (owner bigint, record bytea)`: each engine's durable
//!   record;
//! - `millpond_lease (part integer, owner bigint, epoch bigint, expires
//!   timestamptz, pid integer)`: the partition leases (`pid`: the holder's
//!   presence connection);
//! - `millpond_partitioning (id = 1, name text)`: the name of the key
//!   grouping every engine of the database must use ([`Partitioning`]);
//! - the sequence `millpond_owner`: owner ids, one per engine open.
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
//! - many engines per database, with **leases and fencing** ([`Leases`]):
//!   the keyspace is split into [`PARTITIONS`] partitions by a hash of the
//!   keyspace and the key's group ([`Partitioning`]: the whole key unless
//!   `Config::partition_by` says otherwise); `millpond_lease (part, owner, epoch, expires)` says which
//!   engine may write each; every flush transaction first renews the leases
//!   this engine holds (`owner = me AND epoch = my epoch`) and rolls back
//!   unless every partition it writes was renewed. Each engine that opens the
//!   database gets an owner id from the sequence `millpond_owner`, and its own
//!   **lane** of the records that are one per store in the sled backend: the
//!   state record (`state` ++ owner), gc records (`gc` ++ owner ++ id), the
//!   durable record (`millpond_durable.owner`) and blob ids (`owner << 40`
//!   and up). No advisory lock (CockroachDB has none).
//!
//! Connections: a small pool (`Pool`), one connection per concurrent call;
//! a connection that returned an error is dropped, never reused. A lost
//! connection, or a connection to a server that restarted since open, makes
//! the storage **broken**: every later write fails (reads go on), so the
//! flush coordinator's retries end in the keeper's reopen, whose recovery
//! checks what the server kept against what was committed and durable (a
//! crashed server may have lost commits made with `synchronous_commit =
//! off`: the keeper then poisons the engine).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use postgres::{Client, NoTls, Row, Statement};

use super::{Backend, BlobId, Commit, DeadlineOp, MetaOp, Storage, SysKey};
use crate::codec::{self, Digest, DurableRecord, StateRecord};
use crate::error::{Error, Result};

/// The version of the table layout this build creates and reads (2: the
/// lease table, per-owner lanes; version 1 had one engine per database and is
/// refused).
pub(crate) const SCHEMA_VERSION: i32 = 2;

/// The number of partitions the keyspace is split into for leases.
pub(crate) const PARTITIONS: u32 = 64;

/// Blob ids of owner `n` are `n << BLOB_LANE_BITS` and up (2^40 ids per
/// engine open, 2^23 owners).
const BLOB_LANE_BITS: u32 = 40;

/// How long a claim waits for a lease row locked by another engine's flush
/// before it answers [`Error::NotOwner`], in milliseconds.
const CLAIM_LOCK_WAIT_MS: u32 = 1000;

/// How many times open tries to create the tables when a concurrent open of
/// another engine makes the attempt fail.
const CREATE_ATTEMPTS: u32 = 5;

/// Keys read by one statement of [`Storage::get_metas`].
const BATCH_KEYS: usize = 4096;

/// Blob bytes written by one statement of [`Storage::put_blobs`] (a blob
/// larger than this goes alone).
const BATCH_BYTES: usize = 8 << 20;

/// Connections kept idle for reuse.
const POOL_IDLE: usize = 8;

/// How often an engine between cycles looks for other engines' requests
/// for the partitions it holds ([`Leases::poll`]).
const HANDOVER_POLL: Duration = Duration::from_millis(200);

/// Attempts at a claim refused with a serialization failure or deadlock
/// (SQLSTATE 40001, 40P01).
const CLAIM_ATTEMPTS: u32 = 3;

/// How long the request poll waits after it failed.
const POLL_BACKOFF: Duration = Duration::from_secs(2);

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

    /// A connection of an engine whose leases last `ttl`.
    fn connect(&self, ttl: Duration) -> Result<Client> {
        let config = self.config.as_ref().map_err(|e| Error::Config(e.clone()))?;
        let mut client = config.connect(NoTls).map_err(|e| pg_error(&self.name, e))?;
        // Every transaction commits without waiting for the WAL flush unless
        // it says otherwise (sync and the durable record do). A session left
        // idle inside a transaction for a lease's length (its engine paused
        // in the middle of a flush) is ended by the server, so that the
        // lease rows it locked can be taken over once they expire.
        client
            .batch_execute(&format!(
                "SET synchronous_commit TO off;
                 SET idle_in_transaction_session_timeout TO {}",
                ttl.as_millis().max(1)
            ))
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

/// Opens a PostgreSQL store (see [`Backend`]). One per `Engine::open`: it
/// keeps the engine's owner id and leases across the keeper's reopens of the
/// storage.
pub(crate) struct PostgresBackend {
    target: Arc<Target>,
    leases: Arc<Leases>,
}

impl PostgresBackend {
    pub(crate) fn new(
        target: Arc<Target>,
        ttl: Duration,
        partitioning: Partitioning,
    ) -> PostgresBackend {
        PostgresBackend {
            leases: Arc::new(Leases::new(Arc::clone(&target), ttl, partitioning)),
            target,
        }
    }
}

impl Backend for PostgresBackend {
    fn open(&self) -> Result<Arc<dyn Storage>> {
        Ok(Arc::new(PostgresStorage::open(
            &self.target,
            Arc::clone(&self.leases),
        )?))
    }

    fn probe(&self) -> Result<()> {
        let mut client = self.target.connect(self.leases.ttl)?;
        client
            .simple_query("SELECT 1")
            .map_err(|e| pg_error(&self.target.name, e))?;
        Ok(())
    }

    fn claim(&self, key: &[u8], request: bool) -> Result<()> {
        self.leases
            .claim(self.leases.partitioning.partition_of(key), request)
    }

    fn admit_write(&self, key: &[u8], freezes: u64, expected: Option<u64>) -> Result<Option<u64>> {
        self.leases.admit_write(
            self.leases.partitioning.partition_of(key),
            freezes,
            expected,
        )
    }

    fn cycle_done(&self, freezes: u64) -> bool {
        self.leases.cycle_done(freezes)
    }

    fn handing_over(&self) -> bool {
        self.leases.handing_over()
    }

    fn handover_poll(&self) -> Option<Duration> {
        Some(HANDOVER_POLL)
    }

    fn poll_requests(&self) -> bool {
        self.leases.poll()
    }

    fn exclusive(&self) -> bool {
        false
    }

    fn taken_deadlines(&self) -> Result<Vec<(Bytes, Bytes)>> {
        self.leases.taken_deadlines()
    }

    fn ownership_changes(&self) -> u64 {
        self.leases.changes.load(Ordering::SeqCst)
    }

    fn cache_token(&self, key: &[u8]) -> Option<u64> {
        self.leases
            .held_token(self.leases.partitioning.partition_of(key))
    }

    fn release(&self) -> Result<()> {
        self.leases.release()
    }
}

/// How keys are grouped into partitions (`Config::partition_by`): by a
/// named function of the user's key; by default the whole key, named `key`.
#[derive(Clone)]
pub(crate) struct Partitioning {
    name: Arc<str>,
    group: fn(&[u8]) -> &[u8],
}

impl Default for Partitioning {
    fn default() -> Partitioning {
        Partitioning::new("key", |key| key)
    }
}

impl Partitioning {
    pub(crate) fn new(name: &str, group: fn(&[u8]) -> &[u8]) -> Partitioning {
        Partitioning {
            name: Arc::from(name),
            group,
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The partition of an internal key: XXH3 of its keyspace prefix and
    /// of what the grouping returns for the user's key, modulo
    /// [`PARTITIONS`] (stable across builds and machines). With the default
    /// grouping this is the XXH3 of the whole internal key (streamed XXH3
    /// equals XXH3 of the concatenation), as before `partition_by`.
    pub(crate) fn partition_of(&self, key: &[u8]) -> u32 {
        let (prefix, user) = crate::tree::split_internal(key);
        let mut hash = xxhash_rust::xxh3::Xxh3::new();
        hash.update(prefix);
        hash.update((self.group)(user));
        (hash.digest() % u64::from(PARTITIONS)) as u32
    }
}

/// Records the database's grouping (the first engine's) and refuses an
/// engine whose grouping has another name.
fn check_partitioning(pool: &Pool, partitioning: &Partitioning) -> Result<()> {
    let name = partitioning.name();
    let stored: String = pool.with(|c| {
        c.execute(
            "INSERT INTO millpond_partitioning (id, name) VALUES (1, $1)
             ON CONFLICT (id) DO NOTHING",
            &[&name],
        )?;
        c.query_one("SELECT name FROM millpond_partitioning WHERE id = 1", &[])?
            .try_get(0)
    })?;
    if stored == name {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{}: the database's keys are partitioned by {stored:?}, this engine's by {name:?} \
             (Config::partition_by): every engine of a database must group keys alike",
            pool.target.name.display()
        )))
    }
}

/// Gives every deadline entry without a partition (written by an earlier
/// build) its key's, in batches; nothing to do once done.
fn fill_deadline_parts(pool: &Pool, partitioning: &Partitioning) -> Result<()> {
    loop {
        let keys: Vec<Vec<u8>> = pool.with(|c| {
            c.query(
                "SELECT key FROM millpond_deadline WHERE part IS NULL LIMIT $1",
                &[&(BATCH_KEYS as i64)],
            )?
            .into_iter()
            .map(|row| row.try_get(0))
            .collect()
        })?;
        if keys.is_empty() {
            return Ok(());
        }
        let parts: Vec<i32> = keys
            .iter()
            .map(|key| partitioning.partition_of(key) as i32)
            .collect();
        pool.write(|c| {
            c.execute(
                "UPDATE millpond_deadline d SET part = m.part
                 FROM unnest($1::bytea[], $2::int[]) AS m(key, part)
                 WHERE d.key = m.key",
                &[&keys, &parts],
            )
            .map(drop)
        })?;
    }
}

/// What this engine knows of one partition's lease.
#[derive(Clone, Debug)]
enum Lease {
    /// Not held: never taken, handed over, or taken over while this engine
    /// had nothing unflushed of it. A claim may take it.
    Free,
    /// Taken (or last renewed) at `epoch`; by this process's clock, no other
    /// engine can take it before `valid_until` (the instant before the
    /// renewing statement was sent, plus the TTL: the server's expiry is
    /// later than that). With `handing_over`, another engine asked for it:
    /// no new write of it is admitted, and it is released once every write
    /// admitted before is committed ([`Leases::cycle_done`]).
    Held {
        epoch: i64,
        valid_until: Instant,
        handing_over: bool,
    },
    /// Taken over by another engine while this one still had unflushed
    /// writes of it: refused for the life of this engine, since those writes
    /// may be older than the new owner's.
    Lost { reason: String },
}

/// One partition as this engine sees it.
#[derive(Clone, Debug)]
struct Part {
    lease: Lease,
    /// The dirty map's freeze count when this engine last admitted a write
    /// of the partition ([`Leases::admit_write`]): that write is in a frozen
    /// map numbered at most one more, so it is committed once a cycle that
    /// froze past it has. `None`: never written.
    last_write: Option<u64>,
}

impl Part {
    /// Whether every write this engine admitted to the partition is
    /// committed, given that every freeze up to `flushed` is.
    fn all_flushed(&self, flushed: u64) -> bool {
        self.last_write.is_none_or(|w| w < flushed)
    }
}

/// The partitions, under one mutex.
struct LeaseState {
    parts: Vec<Part>,
    /// Every freeze up to this count has committed ([`Leases::cycle_done`]).
    flushed: u64,
    /// When handing partitions over last failed: no cycle is asked for a
    /// handover until [`HANDOVER_POLL`] has passed since.
    release_failed: Option<Instant>,
    /// Set by [`Leases::release`] at shutdown: no lease is taken after.
    closed: bool,
    /// Partitions taken at a new epoch whose stored deadlines the purger has
    /// not indexed yet ([`Leases::taken_deadlines`]).
    taken: Vec<u32>,
    /// When looking for requests last failed (the server unreachable, say):
    /// the next look waits [`POLL_BACKOFF`], so that the coordinator does
    /// not spend its time connecting.
    poll_failed: Option<Instant>,
}

impl LeaseState {
    /// What this engine knows of partition `p`'s lease.
    fn lease(&self, p: u32) -> Option<&Lease> {
        self.parts.get(p as usize).map(|part| &part.lease)
    }
}

/// This engine's owner id and leases (see DESIGN.md, "Leases").
struct Leases {
    target: Arc<Target>,
    ttl: Duration,
    /// Which partition each key is in.
    partitioning: Partitioning,
    /// Moves (under the `state` lock) whenever a lease is taken at a new
    /// epoch, lost, handed over or released: while it stays, every lease
    /// held now was held throughout, and no other engine wrote its
    /// partition.
    changes: AtomicU64,
    /// Taken from `millpond_owner` by the first open.
    owner: Mutex<Option<i64>>,
    state: Mutex<LeaseState>,
    /// The connection claims, requests and releases run on (one at a time).
    conn: Mutex<Option<Client>>,
    /// This engine's presence connection and its server pid
    /// ([`Leases::presence`]).
    presence: Mutex<Option<(Client, i32)>>,
}

/// The statements of a claim: renews the lease at `held` (this engine's
/// epoch) if nobody took it meanwhile, or takes it at the next epoch if it is
/// free, expired, or held by an engine whose presence connection is gone.
/// The new epoch, or `None` when another engine holds it.
fn take(
    client: &mut Client,
    p: u32,
    owner: i64,
    held: Option<i64>,
    ttl: f64,
    pid: i32,
) -> std::result::Result<Option<i64>, postgres::Error> {
    let part = p as i32;
    let row = match held {
        Some(epoch) => client.query_opt(
            "UPDATE millpond_lease SET expires = now() + make_interval(secs => $4), pid = $5
             WHERE part = $1 AND owner = $2 AND epoch = $3 RETURNING epoch",
            &[&part, &owner, &epoch, &ttl, &pid],
        )?,
        None => {
            let taken = client.query_opt(
                "UPDATE millpond_lease l
                 SET owner = $2, epoch = l.epoch + 1,
                     expires = now() + make_interval(secs => $3), pid = $4
                 WHERE l.part = $1
                   AND (l.expires < now()
                        OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = l.pid))
                 RETURNING l.epoch",
                &[&part, &owner, &ttl, &pid],
            )?;
            match taken {
                Some(row) => Some(row),
                None => client.query_opt(
                    "INSERT INTO millpond_lease (part, owner, epoch, expires, pid)
                     VALUES ($1, $2, 1, now() + make_interval(secs => $3), $4)
                     ON CONFLICT (part) DO NOTHING RETURNING epoch",
                    &[&part, &owner, &ttl, &pid],
                )?,
            }
        }
    };
    row.map(|row| row.try_get(0)).transpose()
}

/// Who holds partition `p`: owner, epoch, seconds left.
fn holder(client: &mut Client, p: u32) -> Option<(i64, i64, f64)> {
    let row = client
        .query_opt(
            "SELECT owner, epoch,
                    GREATEST(extract(epoch FROM expires - now()), 0)::float8
             FROM millpond_lease WHERE part = $1",
            &[&(p as i32)],
        )
        .ok()??;
    Some((
        row.try_get(0).ok()?,
        row.try_get(1).ok()?,
        row.try_get(2).ok()?,
    ))
}

fn not_owner(partition: u32, reason: impl Into<String>) -> Error {
    Error::NotOwner {
        partition,
        reason: reason.into(),
    }
}

/// Why a write of a partition being handed over is refused.
const HANDING_OVER: &str = "another engine asked for this partition: this engine hands it \
                            over after its next flush cycle and admits no new write of it";

impl Leases {
    fn new(target: Arc<Target>, ttl: Duration, partitioning: Partitioning) -> Leases {
        let free = Part {
            lease: Lease::Free,
            last_write: None,
        };
        Leases {
            target,
            ttl,
            partitioning,
            changes: AtomicU64::new(0),
            owner: Mutex::new(None),
            state: Mutex::new(LeaseState {
                parts: vec![free; PARTITIONS as usize],
                flushed: 0,
                release_failed: None,
                poll_failed: None,
                closed: false,
                taken: Vec::new(),
            }),
            conn: Mutex::new(None),
            presence: Mutex::new(None),
        }
    }

    fn owner(&self) -> Result<i64> {
        (*self.owner.lock()).ok_or(Error::Closed)
    }

    /// The TTL in seconds, as the server's `make_interval` takes it.
    fn ttl_secs(&self) -> f64 {
        self.ttl.as_secs_f64()
    }

    /// Whether the lease of `p` is held, not being handed over, with at
    /// least half its TTL left.
    fn owns(&self, p: u32) -> bool {
        match self.state.lock().lease(p) {
            Some(Lease::Held {
                valid_until,
                handing_over: false,
                ..
            }) => Instant::now() + self.ttl / 2 < *valid_until,
            _ => false,
        }
    }

    /// The ownership count ([`Leases::changes`]) while this engine holds
    /// partition `p` with its lease valid by this process's clock: no
    /// other engine can write `p` until the count moves (see
    /// [`Backend::cache_token`]).
    fn held_token(&self, p: u32) -> Option<u64> {
        let state = self.state.lock();
        match state.lease(p) {
            Some(Lease::Held { valid_until, .. }) if Instant::now() < *valid_until => {
                Some(self.changes.load(Ordering::SeqCst))
            }
            _ => None,
        }
    }

    /// [`Backend::admit_write`] for partition `p`.
    fn admit_write(&self, p: u32, freezes: u64, expected: Option<u64>) -> Result<Option<u64>> {
        let mut state = self.state.lock();
        let Some(part) = state.parts.get_mut(p as usize) else {
            return Err(not_owner(p, "no such partition"));
        };
        match &part.lease {
            Lease::Held {
                handing_over: true, ..
            } => Err(not_owner(p, HANDING_OVER)),
            Lease::Held {
                epoch, valid_until, ..
            } if expected.is_some_and(|e| i64::try_from(e) != Ok(*epoch)) => Err(not_owner(
                p,
                format!(
                    "the partition changed hands (now at epoch {epoch}) while this \
                     read-modify-write waited for room; nothing was written"
                ),
            )),
            Lease::Held {
                epoch, valid_until, ..
            } if Instant::now() < *valid_until => {
                let epoch = u64::try_from(*epoch).unwrap_or(0);
                part.last_write = Some(freezes);
                Ok(Some(epoch))
            }
            Lease::Lost { reason } => Err(not_owner(p, reason.clone())),
            Lease::Held { .. } | Lease::Free => Ok(None),
        }
    }

    /// Ok when this engine may write partition `p`: held with at least half
    /// its TTL left, or renewed (held before) or taken (free, expired on the
    /// server, or held by an engine whose presence connection is gone) now.
    /// When another engine holds it and `request`, asks that engine to hand
    /// it over (`millpond_handover`).
    fn claim(&self, p: u32, request: bool) -> Result<()> {
        if self.owns(p) {
            return Ok(());
        }
        if self.state.lock().closed {
            return Err(Error::Closed);
        }
        let owner = self.owner()?;
        let mut conn = self.conn.lock();
        // A lease found taken over while this engine had nothing unflushed
        // of it becomes free, and is then taken again if it can be.
        let mut renewals = 0;
        loop {
            // Another thread may have claimed it while this one waited.
            let held = match self.state.lock().lease(p) {
                Some(Lease::Held {
                    handing_over: true, ..
                }) => return Err(not_owner(p, HANDING_OVER)),
                Some(Lease::Held {
                    epoch, valid_until, ..
                }) => {
                    if Instant::now() + self.ttl / 2 < *valid_until {
                        return Ok(());
                    }
                    Some(*epoch)
                }
                Some(Lease::Lost { reason }) => return Err(not_owner(p, reason.clone())),
                _ => None,
            };
            let (began, row) = self.run_take(&mut conn, p, owner, held)?;
            if let Some(epoch) = row {
                let mut state = self.state.lock();
                if held.is_none() {
                    state.taken.push(p);
                }
                if let Some(part) = state.parts.get_mut(p as usize) {
                    if !matches!(part.lease, Lease::Held { epoch: e, .. } if e == epoch) {
                        self.changes.fetch_add(1, Ordering::SeqCst);
                    }
                    part.lease = Lease::Held {
                        epoch,
                        valid_until: began + self.ttl,
                        handing_over: false,
                    };
                }
                drop(state);
                if held.is_none() {
                    // Requests for it are answered (a failure only leaves a
                    // request that lapses with the TTL).
                    if let Some(client) = conn.as_mut() {
                        if let Err(e) = client.execute(
                            "DELETE FROM millpond_handover WHERE part = $1",
                            &[&(p as i32)],
                        ) {
                            log::debug!("millpond: clearing handover requests failed: {e}");
                        }
                    }
                }
                return Ok(());
            }
            let who = conn
                .as_mut()
                .and_then(|client| holder(client, p))
                .map_or_else(
                    || "another engine holds it".to_owned(),
                    |(o, e, left)| {
                        format!("engine {o} holds it at epoch {e} for another {left:.1} s")
                    },
                );
            match held {
                Some(epoch) if renewals == 0 => {
                    renewals += 1;
                    let reason =
                        format!("this engine's lease (epoch {epoch}) was taken over: {who}");
                    if !self.lose(p, epoch, reason.clone()) {
                        return Err(not_owner(p, reason));
                    }
                    // Free now: try to take it, or ask for it.
                }
                _ => {
                    if !request {
                        return Err(not_owner(p, who));
                    }
                    let asked = conn.as_mut().map(|client| {
                        client.execute(
                            "INSERT INTO millpond_handover (part, requester, requested)
                             VALUES ($1, $2, now())
                             ON CONFLICT (part) DO UPDATE
                             SET requester = EXCLUDED.requester, requested = EXCLUDED.requested",
                            &[&(p as i32), &owner],
                        )
                    });
                    return Err(not_owner(
                        p,
                        match asked {
                            Some(Ok(_)) => format!(
                                "{who}; a handover was requested: that engine releases it \
                                 after its next flush cycle"
                            ),
                            _ => who,
                        },
                    ));
                }
            }
        }
    }

    /// Runs [`take`] on the claim connection (a fresh one if it is gone;
    /// once more on a fresh one if the connection was lost). Returns when
    /// the statement was sent and its outcome.
    fn run_take(
        &self,
        conn: &mut Option<Client>,
        p: u32,
        owner: i64,
        held: Option<i64>,
    ) -> Result<(Instant, Option<i64>)> {
        let pid = self.presence()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let client = self.connection(conn)?;
            let began = Instant::now();
            match take(client, p, owner, held, self.ttl_secs(), pid) {
                Ok(row) => return Ok((began, row)),
                // The lease row is locked by its holder's flush in progress
                // (or by a paused one): held, as far as this claim knows (a
                // take then asks for it).
                Err(e) if e.code() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                    if held.is_none() {
                        return Ok((began, None));
                    }
                    return Err(not_owner(
                        p,
                        "another engine holds it (its lease row is locked by a flush in progress)",
                    ));
                }
                // A serializable engine (CockroachDB) may refuse a claim
                // that raced another one's transaction: try again.
                Err(e)
                    if attempt < CLAIM_ATTEMPTS
                        && (e.code()
                            == Some(&postgres::error::SqlState::T_R_SERIALIZATION_FAILURE)
                            || e.code()
                                == Some(&postgres::error::SqlState::T_R_DEADLOCK_DETECTED)) => {}
                Err(e) => {
                    *conn = None;
                    // One more try on a fresh connection (the server may
                    // have restarted since the last claim).
                    if attempt >= 2 || !connection_lost(&e) {
                        return Err(pg_error(&self.target.name, e));
                    }
                }
            }
        }
    }

    /// The claim connection, opened if it is gone.
    fn connection<'c>(&self, conn: &'c mut Option<Client>) -> Result<&'c mut Client> {
        Ok(match conn.take() {
            Some(c) if !c.is_closed() => conn.insert(c),
            _ => {
                let mut c = self.target.connect(self.ttl)?;
                // A claim never waits long behind another engine's flush
                // (which holds the lease row's lock).
                c.batch_execute(&format!("SET lock_timeout TO {}", CLAIM_LOCK_WAIT_MS))
                    .map_err(|e| pg_error(&self.target.name, e))?;
                conn.insert(c)
            }
        })
    }

    /// The server pid of this engine's presence connection: a connection
    /// opened for nothing but being there, so that while it is open (the
    /// engine's process lives, even paused) its leases wait for their expiry,
    /// and once it is gone (the process died) another engine may take them
    /// at once.
    fn presence(&self) -> Result<i32> {
        let mut presence = self.presence.lock();
        if let Some((client, pid)) = &*presence {
            if !client.is_closed() {
                return Ok(*pid);
            }
        }
        let mut client = self.target.connect(self.ttl)?;
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .and_then(|row| row.try_get(0))
            .map_err(|e| pg_error(&self.target.name, e))?;
        *presence = Some((client, pid));
        Ok(pid)
    }

    /// Partition `p` was taken over by another engine. If every write this
    /// engine admitted to it is committed, it becomes free (this engine may
    /// take it again later) and this returns `true`; otherwise it is lost
    /// for the life of the engine.
    /// Only a lease still held at `epoch` (the one found taken over)
    /// changes: a claim may have taken the partition again meanwhile.
    fn lose(&self, p: u32, epoch: i64, reason: String) -> bool {
        let mut state = self.state.lock();
        let flushed = state.flushed;
        let Some(part) = state.parts.get_mut(p as usize) else {
            return false;
        };
        match part.lease {
            Lease::Lost { .. } => false,
            Lease::Held { epoch: now, .. } if now != epoch => true,
            Lease::Free => true,
            Lease::Held { .. } => {
                self.changes.fetch_add(1, Ordering::SeqCst);
                if part.all_flushed(flushed) {
                    log::info!("millpond: partition {p} passed to another engine: {reason}");
                    part.lease = Lease::Free;
                    true
                } else {
                    log::warn!(
                        "millpond: lost the lease of partition {p} with writes not yet \
                         flushed: {reason}"
                    );
                    part.lease = Lease::Lost { reason };
                    false
                }
            }
        }
    }

    /// The partitions held (being handed over or not), with their epochs.
    fn held(&self) -> (Vec<i32>, Vec<i64>) {
        self.state
            .lock()
            .parts
            .iter()
            .enumerate()
            .filter_map(|(p, part)| match part.lease {
                Lease::Held { epoch, .. } => Some((p as i32, epoch)),
                _ => None,
            })
            .unzip()
    }

    /// After a commit renewed the leases of `renewed` (from `began`; of
    /// `parts` at `epochs`, as they were held when it began): their
    /// validity moves on, and those another engine asked for (`wanted`)
    /// start being handed over. A lease held at another epoch by now is
    /// left alone.
    fn renewed(
        &self,
        parts: &[i32],
        epochs: &[i64],
        renewed: &BTreeSet<u32>,
        wanted: &BTreeSet<u32>,
        began: Instant,
    ) {
        let mut state = self.state.lock();
        for (&p, &epoch) in parts.iter().zip(epochs) {
            let p = p as u32;
            if !renewed.contains(&p) {
                continue;
            }
            if let Some(Lease::Held {
                epoch: now,
                valid_until,
                handing_over,
            }) = state.parts.get_mut(p as usize).map(|part| &mut part.lease)
            {
                if *now != epoch {
                    continue;
                }
                *valid_until = began + self.ttl;
                if wanted.contains(&p) && !*handing_over {
                    log::debug!("millpond: handing partition {p} over on request");
                    *handing_over = true;
                }
            }
        }
    }

    /// Whether a partition is being handed over (a cycle will release it),
    /// unless releasing failed a moment ago.
    fn handing_over(&self) -> bool {
        let state = self.state.lock();
        if state
            .release_failed
            .is_some_and(|t| t.elapsed() < HANDOVER_POLL)
        {
            return false;
        }
        state.parts.iter().any(|part| {
            matches!(
                part.lease,
                Lease::Held {
                    handing_over: true,
                    ..
                }
            )
        })
    }

    /// Between cycles: marks the held partitions another engine asked for
    /// as being handed over. Returns whether any is.
    fn poll(&self) -> bool {
        let Ok(owner) = self.owner() else {
            return false;
        };
        let (parts, _) = self.held();
        let backing_off = self
            .state
            .lock()
            .poll_failed
            .is_some_and(|t| t.elapsed() < POLL_BACKOFF);
        // A claim using the connection now: the next poll (or a commit)
        // sees the requests.
        let conn = (!parts.is_empty() && !backing_off)
            .then(|| self.conn.try_lock())
            .flatten();
        if let Some(mut conn) = conn {
            let wanted = self.connection(&mut conn).and_then(|client| {
                client
                    .query(
                        "SELECT part FROM millpond_handover
                         WHERE part = ANY($1) AND requester <> $2
                           AND requested > now() - make_interval(secs => $3)",
                        &[&parts, &owner, &self.ttl_secs()],
                    )
                    .and_then(|rows| {
                        rows.into_iter()
                            .map(|row| row.try_get::<_, i32>(0).map(|p| p as u32))
                            .collect::<std::result::Result<BTreeSet<u32>, _>>()
                    })
                    .map_err(|e| pg_error(&self.target.name, e))
            });
            match wanted {
                Ok(wanted) if !wanted.is_empty() => {
                    let mut state = self.state.lock();
                    for p in wanted {
                        if let Some(Lease::Held { handing_over, .. }) =
                            state.parts.get_mut(p as usize).map(|part| &mut part.lease)
                        {
                            *handing_over = true;
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    *conn = None;
                    self.state.lock().poll_failed = Some(Instant::now());
                    log::debug!("millpond: looking for handover requests failed: {e}");
                }
            }
        }
        self.handing_over()
    }

    /// After a successful cycle: every freeze up to `freezes` is committed.
    /// Releases the partitions being handed over whose every admitted write
    /// is committed. Returns whether any is still being handed over.
    fn cycle_done(&self, freezes: u64) -> bool {
        let ready: Vec<(i32, i64)> = {
            let mut state = self.state.lock();
            state.flushed = state.flushed.max(freezes);
            let flushed = state.flushed;
            state
                .parts
                .iter()
                .enumerate()
                .filter_map(|(p, part)| match part.lease {
                    Lease::Held {
                        epoch,
                        handing_over: true,
                        ..
                    } if part.all_flushed(flushed) => Some((p as i32, epoch)),
                    _ => None,
                })
                .collect()
        };
        if !ready.is_empty() {
            let (parts, epochs): (Vec<i32>, Vec<i64>) = ready.into_iter().unzip();
            match self.release_parts(&parts, &epochs) {
                Ok(()) => {
                    let mut state = self.state.lock();
                    state.release_failed = None;
                    for (&p, &epoch) in parts.iter().zip(&epochs) {
                        if let Some(part) = state.parts.get_mut(p as usize) {
                            if matches!(part.lease, Lease::Held { epoch: e, .. } if e == epoch) {
                                log::debug!("millpond: handed partition {p} over");
                                part.lease = Lease::Free;
                            }
                        }
                    }
                    self.changes.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => {
                    self.state.lock().release_failed = Some(Instant::now());
                    log::warn!("millpond: handing partitions over failed: {e}");
                }
            }
        }
        self.handing_over()
    }

    /// [`Backend::taken_deadlines`]: the stored deadline entries of the
    /// partitions taken since the last call, read on the claim connection.
    /// On an error the partitions are kept for the next call.
    fn taken_deadlines(&self) -> Result<Vec<(Bytes, Bytes)>> {
        let taken: Vec<i32> = {
            let mut state = self.state.lock();
            state.taken.sort_unstable();
            state.taken.dedup();
            state.taken.iter().map(|&p| p as i32).collect()
        };
        if taken.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.lock();
        let client = self.connection(&mut conn)?;
        let mut out = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        loop {
            let rows = client.query(
                "SELECT key, record FROM millpond_deadline
                 WHERE part = ANY($1) AND key >= $2 ORDER BY key LIMIT $3",
                &[&taken, &from, &(BATCH_KEYS as i64)],
            );
            let rows = match rows {
                Ok(rows) => rows,
                Err(e) => {
                    *conn = None;
                    return Err(pg_error(&self.target.name, e));
                }
            };
            let full = rows.len() == BATCH_KEYS;
            for row in &rows {
                let (k, v) = bytes_pair(row).map_err(|e| pg_error(&self.target.name, e))?;
                from.clear();
                from.extend_from_slice(&k);
                out.push((k, v));
            }
            if !full {
                break;
            }
            // The next key after the last one read.
            from.push(0);
        }
        let mut state = self.state.lock();
        state.taken.retain(|p| !taken.contains(&(*p as i32)));
        Ok(out)
    }

    /// Marks the leases of `parts` (at `epochs`) expired on the server (the
    /// next claim by another engine takes them at once) and clears the
    /// requests for them.
    fn release_parts(&self, parts: &[i32], epochs: &[i64]) -> Result<()> {
        let owner = self.owner()?;
        let mut conn = self.conn.lock();
        let client = self.connection(&mut conn)?;
        let outcome = client.batch_execute("BEGIN").and_then(|()| {
            client.execute(
                "UPDATE millpond_lease l SET expires = '-infinity'
                 FROM unnest($1::int[], $2::bigint[]) AS m(part, epoch)
                 WHERE l.part = m.part AND l.epoch = m.epoch AND l.owner = $3",
                &[&parts, &epochs, &owner],
            )?;
            client.execute(
                "DELETE FROM millpond_handover WHERE part = ANY($1)",
                &[&parts],
            )?;
            client.batch_execute("COMMIT")
        });
        if let Err(e) = outcome {
            *conn = None;
            return Err(pg_error(&self.target.name, e));
        }
        Ok(())
    }

    /// Releases every lease this engine holds, and forgets them (at
    /// shutdown, after the final flush).
    fn release(&self) -> Result<()> {
        self.state.lock().closed = true;
        if self.owner().is_err() {
            return Ok(());
        }
        let (parts, epochs) = self.held();
        if parts.is_empty() {
            return Ok(());
        }
        self.release_parts(&parts, &epochs)?;
        let mut state = self.state.lock();
        for part in state.parts.iter_mut() {
            if matches!(part.lease, Lease::Held { .. }) {
                part.lease = Lease::Lost {
                    reason: "released at shutdown".into(),
                };
            }
        }
        self.changes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// The first two columns of `row`, both `bytea`.
fn bytes_pair(row: &Row) -> std::result::Result<(Bytes, Bytes), postgres::Error> {
    let k: Vec<u8> = row.try_get(0)?;
    let v: Vec<u8> = row.try_get(1)?;
    Ok((Bytes::from(k), Bytes::from(v)))
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
/// A pooled connection and the statements prepared on it (by
/// [`Pool::query_prepared`]).
struct Pooled {
    client: Client,
    prepared: HashMap<&'static str, Statement>,
}

impl Pooled {
    fn new(client: Client) -> Pooled {
        Pooled {
            client,
            prepared: HashMap::new(),
        }
    }
}

struct Pool {
    target: Arc<Target>,
    idle: Mutex<Vec<Pooled>>,
    /// When the server last started, as seen by open: a connection to a
    /// server that started since then (it crashed, or was restarted) marks
    /// the storage broken.
    started: String,
    /// Set when a connection was lost or the server restarted: writes are
    /// refused from then on (reads go on), until the keeper replaces the
    /// storage, which retakes the lock and checks what the server kept.
    broken: Mutex<Option<String>>,
    /// The engine's lease length (see [`Target::connect`]).
    ttl: Duration,
}

impl Pool {
    /// Runs `f` on a connection of the pool (a new one if none is idle); the
    /// connection goes back to the pool only if `f` succeeded.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Client) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        self.with_pooled(false, |c| f(&mut c.client))
    }

    /// [`Pool::with`], with the connection's prepared statements. For a
    /// `write`, the storage is checked again once the connection is had: a
    /// new connection may just have found the server restarted (and broken
    /// the storage), and nothing may be written to a server that may have
    /// lost what this engine flushed before the keeper's reopen checked it.
    fn with_pooled<T>(
        &self,
        write: bool,
        f: impl FnOnce(&mut Pooled) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        let idle = self.idle.lock().pop();
        let mut conn = match idle {
            Some(c) if !c.client.is_closed() => c,
            Some(_) => {
                self.break_off("a connection to the server was closed".into());
                Pooled::new(self.connect()?)
            }
            None => Pooled::new(self.connect()?),
        };
        if write {
            if let Err(e) = self.check() {
                let mut idle = self.idle.lock();
                if idle.len() < POOL_IDLE && !conn.client.is_closed() {
                    idle.push(conn);
                }
                return Err(e);
            }
        }
        let out = f(&mut conn).map_err(|e| {
            if connection_lost(&e) || conn.client.is_closed() {
                self.break_off(format!("a connection to the server was lost: {e}"));
            }
            pg_error(&self.target.name, e)
        })?;
        let mut idle = self.idle.lock();
        if idle.len() < POOL_IDLE && !conn.client.is_closed() {
            idle.push(conn);
        }
        Ok(out)
    }

    /// Runs the read `sql` with a statement prepared once per connection
    /// (a plain query is two round trips: prepare, then execute).
    fn query_prepared(
        &self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        self.with_pooled(false, |c| {
            let statement = match c.prepared.get(sql) {
                Some(s) => s.clone(),
                None => {
                    let s = c.client.prepare(sql)?;
                    c.prepared.insert(sql, s.clone());
                    s
                }
            };
            c.client.query(&statement, params)
        })
    }

    /// [`Pool::with`] for a write: refused once the storage is broken.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut Client) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        self.check()?;
        self.with_pooled(true, |c| f(&mut c.client))
    }

    /// A new connection, checked to be to the server open saw.
    fn connect(&self) -> Result<Client> {
        let mut client = self.target.connect(self.ttl)?;
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

/// An open PostgreSQL store: one engine's view of a database that many
/// engines may share.
pub(crate) struct PostgresStorage {
    pool: Pool,
    leases: Arc<Leases>,
    /// This engine's owner id (its lane of per-engine records).
    owner: i64,
}

impl PostgresStorage {
    /// The state record of every engine that committed to this database
    /// (keys `state` ++ owner).
    fn all_state_records(&self) -> Result<Vec<Vec<u8>>> {
        self.pool.with(|c| {
            c.query(
                "SELECT value FROM millpond_sys
                 WHERE key >= 'state'::bytea AND key < 'statf'::bytea",
                &[],
            )?
            .into_iter()
            .map(|row| row.try_get(0))
            .collect()
        })
    }

    /// Connects, creates the tables of a new store or checks the version of
    /// an existing one, takes an owner id (the first open of an engine) and
    /// checks that the server kept every engine's last durable point.
    fn open(target: &Arc<Target>, leases: Arc<Leases>) -> Result<PostgresStorage> {
        let name = &target.name;
        let mut first = target.connect(leases.ttl)?;
        let started = server_started(&mut first).map_err(|e| pg_error(name, e))?;
        let pool = Pool {
            target: Arc::clone(target),
            idle: Mutex::new(vec![Pooled::new(first)]),
            started,
            broken: Mutex::new(None),
            ttl: leases.ttl,
        };
        create_tables(&pool)?;
        check_partitioning(&pool, &leases.partitioning)?;
        fill_deadline_parts(&pool, &leases.partitioning)?;
        let owner = {
            let mut owner = leases.owner.lock();
            match *owner {
                Some(o) => o,
                None => {
                    let o: i64 = pool.with(|c| {
                        c.query_one("SELECT nextval('millpond_owner')", &[])?
                            .try_get(0)
                    })?;
                    if !(1..1 << (63 - BLOB_LANE_BITS)).contains(&o) {
                        return Err(Error::Storage(format!(
                            "{}: owner id {o} is out of range (too many engine opens)",
                            name.display()
                        )));
                    }
                    *owner = Some(o);
                    o
                }
            }
        };
        let storage = PostgresStorage {
            pool,
            leases,
            owner,
        };
        storage.check_lanes()?;
        Ok(storage)
    }

    /// Every other engine's lane must hold at least what its durable record
    /// promised (a server that lost a completed checkpoint is refused, as
    /// recovery refuses it for this engine's own lane).
    fn check_lanes(&self) -> Result<()> {
        let rows: Vec<(Vec<u8>, Option<Vec<u8>>)> = self.pool.with(|c| {
            c.query(
                "SELECT d.record, s.value FROM millpond_durable d
                 LEFT JOIN millpond_sys s
                   ON s.key = 'state'::bytea || int8send(d.owner)
                 WHERE d.owner <> $1",
                &[&self.owner],
            )?
            .into_iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
        })?;
        for (durable, state) in rows {
            let Some(durable) = codec::decode_durable(&durable) else {
                return Err(self.damage("a durable record is damaged".into()));
            };
            let state = match state {
                Some(raw) => codec::decode_state(&raw)?,
                None if durable.seq == 0 => continue,
                None => {
                    return Err(self.damage(format!(
                        "an engine's state record is gone, though writes up to its seq {} \
                         were made durable",
                        durable.seq
                    )))
                }
            };
            let digest = state.digest.unwrap_or_default();
            if state.last_seq < durable.seq
                || (state.last_seq == durable.seq && digest != durable.digest)
            {
                return Err(self.damage(format!(
                    "an engine's records came back older than its last durable point: \
                     writes up to seq {} ({}) were made durable, the server holds seq {} ({})",
                    durable.seq, durable.digest, state.last_seq, digest
                )));
            }
        }
        Ok(())
    }

    fn damage(&self, detail: String) -> Error {
        Error::corrupt(
            None,
            format!("{}: {detail}", self.pool.target.name.display()),
        )
    }

    /// The first blob id of this engine's lane, and the first past it.
    fn blob_lane(&self) -> (u64, u64) {
        let start = (self.owner as u64) << BLOB_LANE_BITS;
        (start, start + (1 << BLOB_LANE_BITS))
    }

    /// A system record's key in `millpond_sys`: the format record is shared,
    /// the state and gc records are this engine's lane.
    fn sys_key(&self, key: SysKey) -> Vec<u8> {
        match key {
            SysKey::Format => b"format".to_vec(),
            SysKey::State => {
                let mut k = b"state".to_vec();
                k.extend_from_slice(&self.owner.to_be_bytes());
                k
            }
            SysKey::Gc(id) => {
                let mut k = self.gc_prefix();
                k.extend_from_slice(&id.to_be_bytes());
                k
            }
        }
    }

    fn gc_prefix(&self) -> Vec<u8> {
        let mut k = b"gc".to_vec();
        k.extend_from_slice(&self.owner.to_be_bytes());
        k
    }

    /// This engine's state record as recovery and the cycles read it: its
    /// blob ids in this engine's lane; for a lane with no record yet (an
    /// engine's first open of a store others wrote), an empty state whose seq
    /// continues from the highest any engine committed.
    fn lane_state(&self) -> Result<Option<Bytes>> {
        let key = self.sys_key(SysKey::State);
        let (start, _) = self.blob_lane();
        if let Some(raw) =
            self.one_bytes("SELECT value FROM millpond_sys WHERE key = $1", &[&key])?
        {
            return match codec::decode_state(&raw) {
                Ok(mut state) if state.next_blob < start && state.digest.is_some() => {
                    state.next_blob = start;
                    Ok(Some(Bytes::from(codec::encode_state(&state)?)))
                }
                // Damage is recovery's to report.
                _ => Ok(Some(raw)),
            };
        }
        let others = self.all_state_records()?;
        if others.is_empty() {
            // No engine committed anything yet (or a new store).
            return Ok(None);
        }
        let last_seq = others
            .iter()
            .filter_map(|raw| codec::decode_state(raw).ok())
            .map(|s| s.last_seq)
            .max()
            .unwrap_or(0);
        let state = StateRecord {
            last_seq,
            next_blob: start,
            digest: Some(Digest::default()),
        };
        // Stored at once: the durable record recovery writes next names
        // this seq, and another engine's open checks the two together.
        let raw = codec::encode_state(&state)?;
        self.pool.write(|c| {
            c.execute(
                "INSERT INTO millpond_sys (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO NOTHING",
                &[&key, &raw],
            )
        })?;
        Ok(Some(Bytes::from(raw)))
    }

    /// Rows of `(key, value)` as `Bytes` pairs.
    fn pairs(
        &self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<(Bytes, Bytes)>> {
        self.pool
            .with(|c| c.query(sql, params)?.iter().map(bytes_pair).collect())
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

    /// The first column of the first row of the read `sql`, run with a
    /// prepared statement ([`Pool::query_prepared`]).
    fn prepared_bytes(
        &self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Option<Bytes>> {
        let rows = self.pool.query_prepared(sql, params)?;
        rows.first()
            .map(|row| row.try_get::<_, Vec<u8>>(0).map(Bytes::from))
            .transpose()
            .map_err(|e| pg_error(&self.pool.target.name, e))
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

/// Creates the tables if they are missing (one transaction), after checking
/// the version of a layout that exists. Tried again when a concurrent open
/// by another engine made the attempt fail.
fn create_tables(pool: &Pool) -> Result<()> {
    let mut attempt = 0;
    let found = loop {
        attempt += 1;
        match try_create_tables(pool) {
            Ok(found) => break found,
            Err(Error::Storage(_)) if attempt < CREATE_ATTEMPTS => {
                std::thread::sleep(Duration::from_millis(20 * u64::from(attempt)));
            }
            Err(e) => return Err(e),
        }
    };
    match found {
        Some(v) if v != SCHEMA_VERSION => Err(Error::UnsupportedFormat {
            found: u32::try_from(v).unwrap_or(0),
            supported: SCHEMA_VERSION as u32,
        }),
        _ => Ok(()),
    }
}

fn try_create_tables(pool: &Pool) -> Result<Option<i32>> {
    pool.with(|c| {
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
                     owner bigint PRIMARY KEY, record bytea NOT NULL);
                 CREATE TABLE IF NOT EXISTS millpond_lease (
                     part integer PRIMARY KEY, owner bigint NOT NULL,
                     epoch bigint NOT NULL, expires timestamptz NOT NULL,
                     pid integer NOT NULL);
                 CREATE SEQUENCE IF NOT EXISTS millpond_owner;",
            )?;
            tx.execute(
                "INSERT INTO millpond_schema (id, version) VALUES (1, $1)
                 ON CONFLICT (id) DO NOTHING",
                &[&SCHEMA_VERSION],
            )?;
        }
        // Added after version 2 was released: made by every open, so that a
        // database created by an earlier build gets it too.
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS millpond_partitioning (
                 id integer PRIMARY KEY CHECK (id = 1), name text NOT NULL);
             CREATE TABLE IF NOT EXISTS millpond_handover (
                 part integer PRIMARY KEY, requester bigint NOT NULL,
                 requested timestamptz NOT NULL);",
        )?;
        // The partition of each deadline entry, so that an engine that takes
        // a partition indexes its keys' deadlines (`Leases::taken_deadlines`).
        // Checked first: `ALTER TABLE` and `CREATE INDEX` lock the table
        // even when there is nothing to do. Rows of an earlier build get
        // theirs at open (`PostgresStorage::fill_deadline_parts`).
        let has_part: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                 WHERE table_schema = current_schema()
                   AND table_name = 'millpond_deadline' AND column_name = 'part')",
                &[],
            )?
            .try_get(0)?;
        if !has_part {
            tx.batch_execute(
                "ALTER TABLE millpond_deadline ADD COLUMN IF NOT EXISTS part integer;
                 CREATE INDEX IF NOT EXISTS millpond_deadline_part
                     ON millpond_deadline (part, key);",
            )?;
        }
        tx.commit()?;
        Ok(version)
    })
}

/// A blob id as the `bigint` it is stored as (ids stay far below 2^63).
fn blob_id(id: BlobId) -> Result<i64> {
    i64::try_from(id).map_err(|_| Error::Storage(format!("blob id {id} is out of range")))
}

/// A `LIMIT` as a `bigint`.
fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
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

impl Changes<'_> {
    /// Applies them to `millpond_deadline`, each put with its key's
    /// partition (`parts`, one per put).
    fn apply_deadlines(
        &self,
        tx: &mut postgres::Transaction<'_>,
        parts: &[i32],
    ) -> std::result::Result<(), postgres::Error> {
        if !self.removed.is_empty() {
            tx.execute(
                "DELETE FROM millpond_deadline WHERE key = ANY($1)",
                &[&self.removed],
            )?;
        }
        if !self.put_keys.is_empty() {
            tx.execute(
                "INSERT INTO millpond_deadline (key, record, part)
                 SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::int[])
                 ON CONFLICT (key) DO UPDATE SET record = EXCLUDED.record, part = EXCLUDED.part",
                &[&self.put_keys, &self.put_values, &parts],
            )?;
        }
        Ok(())
    }
}

impl Storage for PostgresStorage {
    fn get_meta(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.prepared_bytes("SELECT record FROM millpond_meta WHERE key = $1", &[&key])
    }

    fn get_metas(&self, keys: &[&[u8]]) -> Result<Vec<Option<Bytes>>> {
        let mut found: HashMap<Bytes, Bytes> = HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(BATCH_KEYS) {
            let rows = self.pool.query_prepared(
                "SELECT key, record FROM millpond_meta WHERE key = ANY($1)",
                &[&chunk],
            )?;
            for row in &rows {
                let (k, v) = bytes_pair(row).map_err(|e| pg_error(&self.pool.target.name, e))?;
                found.insert(k, v);
            }
        }
        Ok(keys.iter().map(|key| found.get(*key).cloned()).collect())
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
        // Only this engine's lane (the other engines' are theirs to sweep).
        let (start, end) = self.blob_lane();
        let from = blob_id(from.max(start))?;
        let end = blob_id(end)?;
        let rows: Vec<(i64, Bytes)> = self.pool.with(|c| {
            c.query(
                "SELECT id, bytes FROM millpond_blob WHERE id >= $1 AND id < $2
                 ORDER BY id LIMIT $3",
                &[&from, &end, &limit(n)],
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
        self.prepared_bytes("SELECT bytes FROM millpond_blob WHERE id = $1", &[&id])
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

    fn put_blobs(&self, blobs: &[(BlobId, Bytes)]) -> Result<()> {
        // One statement (its own transaction) per batch of at most
        // `BATCH_BYTES`, so that no message grows without bound.
        let mut start = 0;
        while start < blobs.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < blobs.len() && (end == start || bytes + blobs[end].1.len() <= BATCH_BYTES) {
                bytes += blobs[end].1.len();
                end += 1;
            }
            let batch = &blobs[start..end];
            let ids = batch
                .iter()
                .map(|(id, _)| blob_id(*id))
                .collect::<Result<Vec<i64>>>()?;
            let values: Vec<&[u8]> = batch.iter().map(|(_, v)| &v[..]).collect();
            self.pool.write(|c| {
                c.execute(
                    "INSERT INTO millpond_blob (id, bytes)
                     SELECT * FROM unnest($1::bigint[], $2::bytea[])
                     ON CONFLICT (id) DO UPDATE SET bytes = EXCLUDED.bytes",
                    &[&ids, &values],
                )
                .map(drop)
            })?;
            start = end;
        }
        Ok(())
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
        // Only this engine's lane: another engine's blobs past this id are
        // its own, not orphans of this engine.
        let (_, end) = self.blob_lane();
        let end = blob_id(end)?;
        let n = self.pool.write(|c| {
            c.execute(
                "DELETE FROM millpond_blob WHERE id >= $1 AND id < $2",
                &[&first, &end],
            )
        })?;
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
        let sys_keys: Vec<Vec<u8>> = commit.sys.iter().map(|(k, _)| self.sys_key(*k)).collect();
        let mut sys = Changes::default();
        for ((_, value), key) in commit.sys.iter().zip(&sys_keys) {
            match value {
                Some(v) => sys.put(key, v),
                None => sys.removed.push(key),
            }
        }
        // Fencing: every partition this commit writes must be held, and is
        // renewed (with every other lease held) by the transaction's first
        // statement, which matches only rows still at this engine's epoch.
        let written: BTreeSet<u32> = commit
            .ops
            .iter()
            .map(|op| match op {
                MetaOp::Put { key, .. } | MetaOp::Remove { key, .. } => {
                    self.leases.partitioning.partition_of(key)
                }
            })
            .collect();
        {
            let state = self.leases.state.lock();
            for &p in &written {
                match state.lease(p) {
                    Some(Lease::Held { .. }) => {}
                    Some(Lease::Lost { reason }) => return Err(not_owner(p, reason.clone())),
                    _ => return Err(not_owner(p, "this engine never took its lease")),
                }
            }
        }
        let (parts, epochs) = self.leases.held();
        let owner = self.owner;
        let ttl = self.leases.ttl_secs();
        let began = Instant::now();
        let deadline_parts: Vec<i32> = deadlines
            .put_keys
            .iter()
            .map(|key| self.leases.partitioning.partition_of(key) as i32)
            .collect();
        let mut wanted = BTreeSet::new();
        let renewed = self.pool.write(|c| {
            wanted.clear();
            let mut tx = c.transaction()?;
            let renewed: BTreeSet<u32> = if parts.is_empty() {
                BTreeSet::new()
            } else {
                // Each renewed row says whether another engine asked for
                // its partition (a request younger than a TTL).
                let rows = tx.query(
                    "UPDATE millpond_lease l SET expires = now() + make_interval(secs => $4)
                     FROM unnest($1::int[], $2::bigint[]) AS m(part, epoch)
                     WHERE l.part = m.part AND l.epoch = m.epoch AND l.owner = $3
                     RETURNING l.part, EXISTS (
                         SELECT 1 FROM millpond_handover h
                         WHERE h.part = l.part AND h.requester <> $3
                           AND h.requested > now() - make_interval(secs => $4))",
                    &[&parts, &epochs, &owner, &ttl],
                )?;
                let mut renewed = BTreeSet::new();
                for row in rows {
                    let p = row.try_get::<_, i32>(0)? as u32;
                    renewed.insert(p);
                    if row.try_get::<_, bool>(1)? {
                        wanted.insert(p);
                    }
                }
                renewed
            };
            if !written.is_subset(&renewed) {
                tx.rollback()?;
                return Ok(renewed);
            }
            meta.apply(&mut tx, "millpond_meta", "record")?;
            deadlines.apply_deadlines(&mut tx, &deadline_parts)?;
            sys.apply(&mut tx, "millpond_sys", "value")?;
            tx.commit()?;
            Ok(renewed)
        })?;
        // Whatever was held (at the epoch the renewal named) and not
        // renewed is another engine's now.
        for (&p, &epoch) in parts.iter().zip(&epochs) {
            let p = p as u32;
            if !renewed.contains(&p) {
                self.leases.lose(
                    p,
                    epoch,
                    "taken over by another engine (found at a flush)".into(),
                );
            }
        }
        if let Some(&p) = written.iter().find(|p| !renewed.contains(p)) {
            return Err(not_owner(
                p,
                "this engine's lease was taken over before its flush committed; \
                 the flush was rolled back",
            ));
        }
        self.leases
            .renewed(&parts, &epochs, &renewed, &wanted, began);
        Ok(())
    }

    fn get_sys(&self, key: SysKey) -> Result<Option<Bytes>> {
        if key == SysKey::State {
            return self.lane_state();
        }
        let key = self.sys_key(key);
        self.one_bytes("SELECT value FROM millpond_sys WHERE key = $1", &[&key])
    }

    fn put_sys(&self, key: SysKey, value: Option<&[u8]>) -> Result<()> {
        let key = self.sys_key(key);
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

    /// The read and the write in one transaction, the format row locked:
    /// engines sharing the database raise it concurrently (one opening its
    /// first tree, another committing its first compressed value), and a
    /// lower version written over a higher one would let a build that
    /// cannot read the store open it.
    fn raise_format(&self, version: u32) -> Result<()> {
        let key = self.sys_key(SysKey::Format);
        let raw = codec::encode_format_version(version)?;
        let mut found = None;
        self.pool.write(|c| {
            let mut tx = c.transaction()?;
            let row = tx.query_opt(
                "SELECT value FROM millpond_sys WHERE key = $1 FOR UPDATE",
                &[&key],
            )?;
            let current = match row {
                Some(row) => {
                    let value: Vec<u8> = row.try_get(0)?;
                    match codec::decode_format(&value) {
                        Ok(f) => f.version,
                        Err(e) => {
                            found = Some(e);
                            return Ok(());
                        }
                    }
                }
                None => codec::FORMAT_VERSION,
            };
            if current < version {
                tx.execute(
                    "INSERT INTO millpond_sys (key, value) VALUES ($1, $2)
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    &[&key, &raw],
                )?;
            }
            tx.commit()
        })?;
        match found {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn gc_ids(&self) -> Result<Vec<u64>> {
        let prefix = self.gc_prefix();
        let prefix_len = prefix.len() as i32;
        let keys: Vec<Vec<u8>> = self.pool.with(|c| {
            c.query(
                "SELECT key FROM millpond_sys WHERE substring(key FROM 1 FOR $2) = $1
                 ORDER BY key",
                &[&prefix, &prefix_len],
            )?
            .into_iter()
            .map(|row| row.try_get(0))
            .collect()
        })?;
        Ok(keys
            .iter()
            .filter_map(|k| {
                let id: [u8; 8] = k.strip_prefix(prefix.as_slice())?.try_into().ok()?;
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
        match self.one_bytes(
            "SELECT record FROM millpond_durable WHERE owner = $1",
            &[&self.owner],
        )? {
            // This engine's first open of the store: its lane promised
            // nothing yet (the other lanes were checked at open).
            None => Ok(Some(DurableRecord {
                generation: 0,
                seq: 0,
                digest: Digest::default(),
                journal: 0,
            })),
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
        self.pool.with(|c| {
            c.query_one(
                "SELECT EXISTS (SELECT 1 FROM millpond_durable WHERE owner = $1)",
                &[&self.owner],
            )?
            .try_get::<_, bool>(0)
        })
    }

    fn store_digest(&self) -> Result<Option<Digest>> {
        let states = self.all_state_records()?;
        let mut total = Digest::default();
        for raw in states {
            // Each engine's digest is of the changes it committed (its
            // lane started empty): their wrapping sum is the store's.
            let d = codec::decode_state(&raw)?.digest.unwrap_or_default();
            total.records = total.records.wrapping_add(d.records);
            total.sum = total.sum.wrapping_add(d.sum);
        }
        Ok(Some(total))
    }

    fn write_durable(&self, record: &DurableRecord) -> Result<()> {
        let raw = codec::encode_durable(record).to_vec();
        self.synchronously(|tx| {
            tx.execute(
                "INSERT INTO millpond_durable (owner, record) VALUES ($1, $2)
                 ON CONFLICT (owner) DO UPDATE SET record = EXCLUDED.record",
                &[&self.owner, &raw],
            )
            .map(drop)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_grouping_hashes_the_whole_internal_key() {
        let p = Partitioning::default();
        for key in [
            &b"\x01k"[..],
            b"\x01",
            b"\x02\x03abcxyz",
            b"\x02\x09ab",
            b"",
        ] {
            assert_eq!(
                p.partition_of(key),
                (xxhash_rust::xxh3::xxh3_64(key) % u64::from(PARTITIONS)) as u32,
                "{key:?}"
            );
        }
    }

    #[test]
    fn a_grouping_puts_keys_with_one_group_in_one_partition() {
        fn first_byte(key: &[u8]) -> &[u8] {
            key.get(..1).unwrap_or(key)
        }
        let p = Partitioning::new("first-byte", first_byte);
        let a = p.partition_of(b"\x01a-one");
        assert!((0..200).all(|i| p.partition_of(format!("\x01a{i}").as_bytes()) == a));
        // The keyspace is part of the hash: a tree's keys of the same group
        // are another group.
        let tree = p.partition_of(b"\x02\x01ta-one");
        assert!((0..200).all(|i| p.partition_of(format!("\x02\x01ta{i}").as_bytes()) == tree));
        assert_eq!(
            tree,
            (xxhash_rust::xxh3::xxh3_64(b"\x02\x01ta") % u64::from(PARTITIONS)) as u32
        );
    }
}
