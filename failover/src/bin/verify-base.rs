//! `verify-base`: checks what the base object store holds against the drain's manifest (the
//! list of every raw file the summit confirmed at the base). What an operator runs after an
//! outage: it reports objects missing from the base, extra objects, the drain's `.conflict-`
//! objects, size mismatches and (reading every object back) CRC32 mismatches, each with its key.
//!
//! Exit status: 0 the base matches the manifest, 1 problems found (listed), 2 could not check
//! (bad arguments, unreadable manifest, base directory or store unreachable).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{ArgGroup, Parser};
use failover::manifest::{verify_base, Manifest, VerifyReport};
use object_store::ObjectStore;

/// Check the base object store against the drain's manifest.
///
/// Lists every object under PREFIX at the base and compares it with the manifest the summit's
/// drain writes (one JSON line per raw FITS file the base confirmed: key, size, CRC32). By
/// default every object is also read back and its CRC32 compared, which reads all the bytes
/// (use --no-read-back for a quick size-only check).
///
/// Reports, each with its object key:
///   missing        in the manifest, not at the base (re-drain or recover it from the ring)
///   extra          at the base, not in the manifest
///   conflict       a `{key}.conflict-{crc32}` object: the drain found different bytes under
///                  `key` and did not overwrite them; an operator decides which to keep
///   size mismatch  at the base with another size than the manifest's
///   CRC mismatch   same size, different bytes (only with read-back)
///   unreadable     listed but could not be read back
///
/// Exit status: 0 clean, 1 problems found, 2 could not check (bad arguments, unreadable
/// manifest, missing base directory, store unreachable).
///
/// Examples:
///   verify-base --manifest /data/ring/drain-manifest.jsonl --base-dir /mnt/base
///   AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... verify-base \
///       --manifest drain-manifest.jsonl --s3-endpoint https://s3.example.org --bucket rubin-raw
#[derive(Debug, Parser)]
#[command(name = "verify-base", version, verbatim_doc_comment)]
#[command(group(ArgGroup::new("base").required(true).args(["base_dir", "s3_endpoint"])))]
struct Args {
    /// The drain's manifest file (JSON lines). A torn last line is reported and ignored.
    #[arg(long, value_name = "FILE")]
    manifest: PathBuf,

    /// The base is this local directory (object keys are paths under it).
    #[arg(long, value_name = "DIR")]
    base_dir: Option<PathBuf>,

    /// The base is this S3-protocol endpoint, e.g. https://s3.example.org (needs --bucket).
    #[arg(long, value_name = "URL", requires = "bucket")]
    s3_endpoint: Option<String>,

    /// The S3 bucket holding the raw files.
    #[arg(long, value_name = "NAME", requires = "s3_endpoint")]
    bucket: Option<String>,

    /// The S3 region [default: AWS_REGION, else us-east-1].
    #[arg(long, value_name = "R")]
    region: Option<String>,

    /// S3 access key id [default: the AWS_ACCESS_KEY_ID environment variable].
    #[arg(long, value_name = "ID")]
    access_key_id: Option<String>,

    /// S3 secret access key [default: AWS_SECRET_ACCESS_KEY; prefer the variable, a command
    /// line is visible to other users].
    #[arg(long, value_name = "SECRET")]
    secret_access_key: Option<String>,

    /// Check only keys under this prefix (manifest entries outside it are skipped).
    #[arg(long, value_name = "PREFIX", default_value = "raw/")]
    prefix: String,

    /// Compare sizes only; do not read objects back to compare CRC32s.
    #[arg(long)]
    no_read_back: bool,

    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(&args) {
        Ok(report) => {
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", human(&args, &report));
            }
            if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(message) => {
            eprintln!("verify-base: could not check the base: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<VerifyReport, String> {
    let (entries, warnings) = Manifest::load(&args.manifest)
        .map_err(|error| format!("cannot read the manifest {}: {error}", args.manifest.display()))?;
    let store = open_store(args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the async runtime: {error}"))?;
    let mut report = runtime
        .block_on(verify_base(store.as_ref(), &args.prefix, &entries, !args.no_read_back))
        .map_err(|error| error.to_string())?;
    if report.expected_objects == 0 {
        report.warnings.push(format!(
            "the manifest has no entry under the prefix {:?} ({} entries in all): wrong --prefix or manifest?",
            args.prefix,
            entries.len()
        ));
    }
    report.warnings.splice(0..0, warnings.into_iter().map(|warning| format!("manifest: {warning}")));
    Ok(report)
}

fn open_store(args: &Args) -> Result<Arc<dyn ObjectStore>, String> {
    if let Some(directory) = &args.base_dir {
        return failover::store::open_directory(directory);
    }
    let (Some(endpoint), Some(bucket)) = (&args.s3_endpoint, &args.bucket) else {
        return Err("give --base-dir DIR, or --s3-endpoint URL with --bucket NAME".to_owned());
    };
    failover::store::open_s3(&failover::store::S3Settings {
        endpoint: Some(endpoint.clone()),
        bucket: bucket.clone(),
        region: args.region.clone(),
        access_key_id: args.access_key_id.clone(),
        secret_access_key: args.secret_access_key.clone(),
    })
}

/// The text report: what was checked, the counts, then every problem with its key.
fn human(args: &Args, report: &VerifyReport) -> String {
    let base = match (&args.base_dir, &args.s3_endpoint, &args.bucket) {
        (Some(directory), _, _) => format!("directory {}", directory.display()),
        (None, Some(endpoint), Some(bucket)) => format!("s3 {endpoint} bucket {bucket}"),
        _ => "?".to_owned(),
    };
    report.text(&base, &args.manifest.display().to_string())
}
