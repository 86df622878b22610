//! `get`, `set`, `del` and `scan`: single keys and listings.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;

use crate::store::{self, json_string, parse_duration, Create, Encoding};

/// `millpond get DIR KEY`.
#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// The store directory.
    pub dir: PathBuf,
    /// The key (text with `\xNN` escapes, or hex with --hex).
    pub key: String,
    /// Prints `{"key": .., "value": .., "ttl_ms": ..}`.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub encoding: Encoding,
}

/// `millpond set DIR KEY VALUE [--ttl 10m]`.
#[derive(clap::Args, Debug)]
pub struct SetArgs {
    /// The store directory (created if missing).
    pub dir: PathBuf,
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// Time to live (500ms, 30s, 10m, 2h, 7d).
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    #[command(flatten)]
    pub encoding: Encoding,
}

/// `millpond del DIR KEY`.
#[derive(clap::Args, Debug)]
pub struct DelArgs {
    /// The store directory.
    pub dir: PathBuf,
    /// The key.
    pub key: String,
    #[command(flatten)]
    pub encoding: Encoding,
}

/// `millpond scan DIR [--prefix P] [--limit N]`.
#[derive(clap::Args, Debug)]
pub struct ScanArgs {
    /// The store directory.
    pub dir: PathBuf,
    /// Only keys starting with this.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// At most this many keys.
    #[arg(long)]
    pub limit: Option<usize>,
    /// One JSON object per line: `{"key": .., "value": ..}`.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub encoding: Encoding,
}

/// Prints the value; exit code 1 (and a message on stderr) if the key has
/// none.
pub fn get(args: GetArgs) -> Result<ExitCode> {
    let key = args.encoding.parse(&args.key)?;
    let e = store::open(&args.dir, Create::No)?;
    let value = e.get(&key)?;
    let ttl = e.ttl(&key)?;
    e.shutdown()?;
    let Some(value) = value else {
        eprintln!("millpond: no value for key {}", args.encoding.show(&key));
        return Ok(ExitCode::from(1));
    };
    let shown = args.encoding.show(&value);
    if args.json {
        let ttl = ttl.map_or("null".into(), |t| t.as_millis().to_string());
        println!(
            "{{\"key\": {}, \"value\": {}, \"ttl_ms\": {ttl}}}",
            json_string(&args.encoding.show(&key)),
            json_string(&shown)
        );
    } else {
        println!("{shown}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Sets the value (durable when the command returns).
pub fn set(args: SetArgs) -> Result<ExitCode> {
    let key = args.encoding.parse(&args.key)?;
    let value = args.encoding.parse(&args.value)?;
    let e = store::open(&args.dir, Create::Yes)?;
    match args.ttl {
        Some(ttl) => e.set_with_ttl(&key, &value, ttl)?,
        None => e.set(&key, &value)?,
    }
    e.shutdown()?;
    Ok(ExitCode::SUCCESS)
}

/// Deletes the key; exit code 1 if it had no value.
pub fn del(args: DelArgs) -> Result<ExitCode> {
    let key = args.encoding.parse(&args.key)?;
    let e = store::open(&args.dir, Create::No)?;
    let existed = e.delete(&key)?;
    e.shutdown()?;
    if existed {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("millpond: no value for key {}", args.encoding.show(&key));
        Ok(ExitCode::from(1))
    }
}

/// Lists keys (`KEY<TAB>VALUE` per line, or JSON lines), in key order.
pub fn scan(args: ScanArgs) -> Result<ExitCode> {
    let prefix = args.encoding.parse(&args.prefix)?;
    let e = store::open(&args.dir, Create::No)?;
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    for item in e
        .scan_prefix(&prefix)
        .take(args.limit.unwrap_or(usize::MAX))
    {
        let (key, value) = item?;
        let (k, v) = (args.encoding.show(&key), args.encoding.show(&value));
        let written = if args.json {
            writeln!(
                out,
                "{{\"key\": {}, \"value\": {}}}",
                json_string(&k),
                json_string(&v)
            )
        } else {
            writeln!(out, "{k}\t{v}")
        };
        if written.is_err() {
            break; // The reader went away (e.g. `| head`).
        }
    }
    let _ = out.flush();
    e.shutdown()?;
    Ok(ExitCode::SUCCESS)
}
