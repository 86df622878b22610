//! `stats` and `verify`: what a store holds, and whether it is consistent.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Result;
use millpond::VerifyReport;

use crate::store::{self, human_bytes, json_string, size_on_disk, Create};

/// `millpond stats DIR`.
#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// The store directory.
    pub dir: PathBuf,
    /// Prints one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `millpond verify DIR [--repair]`.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The store directory.
    pub dir: PathBuf,
    /// Also remove orphan blobs and expired entries and rewrite the deadline
    /// index where it disagrees with the records (never live data).
    #[arg(long)]
    pub repair: bool,
    /// With --repair: open a store that came back older than its last
    /// checkpoint (or blank, or without its durable record), which is
    /// otherwise refused, and accept its current state as the new baseline.
    /// What was lost stays lost.
    #[arg(long, requires = "repair")]
    pub accept_loss: bool,
    /// Prints one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn seconds_from_now(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

fn counts_json(r: &VerifyReport, disk: u64) -> String {
    format!(
        "\"format_version\": {}, \"keys\": {}, \"inline_values\": {}, \"blobs\": {}, \
         \"metadata_bytes\": {}, \"blob_bytes\": {}, \"size_on_disk\": {disk}, \
         \"ttl_keys\": {}, \"expired_waiting\": {}, \"soonest_deadline_in_s\": {}",
        r.format_version,
        r.records,
        r.inline_values,
        r.blobs,
        r.metadata_bytes,
        r.blob_bytes,
        r.ttl_records,
        r.expired_records,
        r.soonest_deadline
            .map_or("null".into(), |t| seconds_from_now(t).to_string())
    )
}

fn print_counts(r: &VerifyReport, disk: u64) {
    println!("format version     {}", r.format_version);
    println!("keys               {}", r.records);
    println!(
        "  inline values    {} (metadata tree: {})",
        r.inline_values,
        human_bytes(r.metadata_bytes)
    );
    println!(
        "  blob values      {} (blob tree: {})",
        r.blobs,
        human_bytes(r.blob_bytes)
    );
    println!("keys with a TTL    {}", r.ttl_records);
    println!("expired, waiting   {}", r.expired_records);
    match r.soonest_deadline {
        Some(t) => println!("soonest deadline   in {} s", seconds_from_now(t)),
        None => println!("soonest deadline   none"),
    }
    println!("size on disk       {}", human_bytes(disk));
}

pub fn stats(args: StatsArgs) -> Result<ExitCode> {
    let e = store::open(&args.dir, Create::No)?;
    let report = e.verify()?;
    e.shutdown()?;
    let disk = size_on_disk(&args.dir);
    if args.json {
        println!("{{{}}}", counts_json(&report, disk));
    } else {
        print_counts(&report, disk);
    }
    Ok(ExitCode::SUCCESS)
}

/// Exit code 0 only when no problem was found (before any repair).
pub fn verify(args: VerifyArgs) -> Result<ExitCode> {
    let e = if args.accept_loss {
        store::open_accepting_loss(&args.dir)?
    } else {
        store::open(&args.dir, Create::No)?
    };
    let report = if args.repair {
        e.repair()?
    } else {
        e.verify()?
    };
    e.shutdown()?;
    let disk = size_on_disk(&args.dir);
    if args.json {
        let problems: Vec<String> = report
            .problems
            .iter()
            .map(|p| json_string(&p.to_string()))
            .collect();
        println!(
            "{{{}, \"problems\": [{}], \"repaired\": {}}}",
            counts_json(&report, disk),
            problems.join(", "),
            report.repaired
        );
    } else {
        print_counts(&report, disk);
        println!();
        if report.problems.is_empty() {
            println!("clean: no problem found");
        } else {
            println!("{} problem(s):", report.problems.len());
            for p in &report.problems {
                println!("  - {p}");
            }
        }
        if args.repair {
            println!(
                "repaired: {} (orphans removed, deadline entries rewritten, expired keys purged)",
                report.repaired
            );
        }
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
