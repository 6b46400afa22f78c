//! The drain's manifest of confirmed objects, and base verification against it.
//!
//! # The manifest
//!
//! An append-only text file with one JSON object per line, one line per object the base
//! confirmed (uploaded and verified, or found there with the same bytes):
//!
//! ```text
//! {"key":"raw/LATISS/20250415/AT_O_20250415_000001/AT_O_20250415_000001_RXX_S00.fits","size":75467520,"crc32":"1a2b3c4d","exposure_id":2025041500001,"incomplete":false,"confirmed_ns":1744761630000000000}
//! ```
//!
//! `crc32` is the CRC-32 (IEEE, as `crc32fast` computes it) of the object's bytes, 8 lower-case
//! hex digits; `incomplete` is true for a file drained with missing segments (`INCOMPL = T`);
//! `confirmed_ns` is when the drain confirmed it (its clock, ns since the Unix epoch).
//!
//! **Crash safety.** [`Manifest::record`] writes the whole line with one `write` on a file opened
//! with `O_APPEND`, then `fdatasync`s it, and only then returns: once it returned, the record
//! survives a crash or a power cut. The drain records an object after the base confirmed it and
//! before it moves its ring cursor past the object's exposure; a crash in between leaves the
//! exposure in the ring, the restarted drain finds the object already at the base, confirms it
//! again and records it then. So every object behind the drain cursor is in the manifest. A key
//! may appear more than once (such a resend records it again); the first line for a key is the
//! one that counts, since the drain never overwrites an object with different bytes (it writes
//! those to `{key}.conflict-{crc32}`).
//!
//! A crash in the middle of a `write` can leave a torn last line. [`Manifest::load`] reports it
//! as a warning and ignores it (as it does any line that does not parse), and never fails the
//! whole load for it; [`Manifest::open`] cuts a torn tail off before appending, so a new record
//! never ends up glued to a fragment. One process writes a manifest at a time: `open` takes an
//! exclusive advisory lock on the file and fails if another holder has it.
//!
//! Lines are bounded ([`MAX_LINE_BYTES`], keys [`MAX_KEY_BYTES`]): loading a damaged file never
//! needs more than that per entry.
//!
//! # Base verification
//!
//! [`verify_base`] lists everything the base holds under a prefix and checks it against the
//! manifest: objects in the manifest and not at the base (`missing`), at the base and not in the
//! manifest (`extra`, and separately `conflicts`, the drain's `.conflict-` objects), with another
//! size (`size_mismatch`) and, reading every object back, another CRC32 (`crc_mismatch`). What
//! an operator runs after an outage; the `verify-base` binary is its command line.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

/// Longest manifest line accepted, newline included; longer lines are reported and skipped.
pub const MAX_LINE_BYTES: usize = 4096;
/// Longest object key accepted in a manifest entry.
pub const MAX_KEY_BYTES: usize = 1024;
/// What the drain puts between a key and the CRC32 of the bytes it could not write there.
pub const CONFLICT_MARKER: &str = ".conflict-";
/// [`verify_base`] logs its progress every this many objects listed or read back.
pub const PROGRESS_EVERY_OBJECTS: usize = 1000;
/// Objects [`verify_base`] reads back at once.
pub const READ_BACK_CONCURRENCY: usize = 4;

/// One confirmed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// The object key, e.g. `raw/LATISS/20250415/{obsid}/{filename}`.
    pub key: String,
    /// Bytes.
    pub size: u64,
    /// CRC-32 (IEEE) of the bytes.
    pub crc32: u32,
    /// The exposure the file belongs to.
    pub exposure_id: u64,
    /// Drained with missing segments (`INCOMPL = T`).
    pub incomplete: bool,
    /// When the base confirmed it, ns since the Unix epoch.
    pub confirmed_ns: u64,
}

impl ManifestEntry {
    /// The entry for an object holding exactly `bytes`: size and CRC32 computed here.
    pub fn for_bytes(
        key: &str,
        bytes: &[u8],
        exposure_id: u64,
        incomplete: bool,
        confirmed_ns: u64,
    ) -> ManifestEntry {
        ManifestEntry {
            key: key.to_owned(),
            size: bytes.len() as u64,
            crc32: crc32fast::hash(bytes),
            exposure_id,
            incomplete,
            confirmed_ns,
        }
    }

    /// The manifest line, without its newline.
    pub fn to_json_line(&self) -> String {
        let key = serde_json::Value::String(self.key.clone());
        format!(
            "{{\"key\":{key},\"size\":{},\"crc32\":\"{:08x}\",\"exposure_id\":{},\"incomplete\":{},\
             \"confirmed_ns\":{}}}",
            self.size, self.crc32, self.exposure_id, self.incomplete, self.confirmed_ns
        )
    }

    /// Parses one manifest line (without its newline).
    pub fn from_json_line(line: &str) -> Result<ManifestEntry, String> {
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|error| format!("not JSON: {error}"))?;
        let object = value.as_object().ok_or("not a JSON object")?;
        let field = |name: &str| object.get(name).ok_or_else(|| format!("no \"{name}\""));
        let number = |name: &str| {
            field(name)?.as_u64().ok_or_else(|| format!("\"{name}\" is not a non-negative integer"))
        };
        let key = field("key")?.as_str().ok_or("\"key\" is not a string")?;
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(format!("\"key\" is empty or longer than {MAX_KEY_BYTES} bytes"));
        }
        let crc = field("crc32")?.as_str().ok_or("\"crc32\" is not a string")?;
        if crc.len() != 8 || !crc.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return Err(format!("\"crc32\" is not 8 hex digits: {crc:?}"));
        }
        Ok(ManifestEntry {
            key: key.to_owned(),
            size: number("size")?,
            crc32: u32::from_str_radix(crc, 16).map_err(|error| format!("\"crc32\": {error}"))?,
            exposure_id: number("exposure_id")?,
            incomplete: field("incomplete")?.as_bool().ok_or("\"incomplete\" is not a boolean")?,
            confirmed_ns: number("confirmed_ns")?,
        })
    }
}

/// The manifest, open for appending. See the module docs.
#[derive(Debug)]
pub struct Manifest {
    file: File,
    path: PathBuf,
    line: Vec<u8>,
}

impl Manifest {
    /// Opens the manifest at `path` for appending, creating it (and making its directory entry
    /// durable) if it does not exist. A torn last line (a crash mid-write) is cut off, with a
    /// warning. Fails if another process holds the manifest open.
    pub fn open(path: &Path) -> io::Result<Manifest> {
        let existed = path.exists();
        let mut file = OpenOptions::new().append(true).create(true).read(true).open(path)?;
        file.try_lock().map_err(|error| match error {
            std::fs::TryLockError::WouldBlock => io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{}: another process has this manifest open", path.display()),
            ),
            std::fs::TryLockError::Error(error) => error,
        })?;
        if !existed {
            if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
                File::open(parent)?.sync_all()?;
            }
        }
        let length = file.metadata()?.len();
        if length > 0 {
            let mut byte = [0u8; 1];
            file.seek(SeekFrom::Start(length - 1))?;
            file.read_exact(&mut byte)?;
            if byte[0] != b'\n' {
                // Keep everything up to the last complete line.
                let mut keep = 0;
                let mut chunk = vec![0u8; 64 * 1024];
                let mut end = length;
                while end > 0 {
                    let start = end.saturating_sub(chunk.len() as u64);
                    let part = &mut chunk[..(end - start) as usize];
                    file.seek(SeekFrom::Start(start))?;
                    file.read_exact(part)?;
                    if let Some(at) = part.iter().rposition(|&b| b == b'\n') {
                        keep = start + at as u64 + 1;
                        break;
                    }
                    end = start;
                }
                tracing::warn!(
                    manifest = %path.display(),
                    torn_bytes = length - keep,
                    "manifest: cutting off a torn last line (a crash while it was written)"
                );
                file.set_len(keep)?;
                file.sync_data()?;
            }
        }
        Ok(Manifest { file, path: path.to_owned(), line: Vec::with_capacity(256) })
    }

    /// Where the manifest is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `entry` and makes it durable (`fdatasync`) before returning.
    pub fn record(&mut self, entry: &ManifestEntry) -> io::Result<()> {
        self.record_batch(std::slice::from_ref(entry))
    }

    /// Appends `entries` with one write and one `fdatasync`; all are durable when it returns.
    pub fn record_batch(&mut self, entries: &[ManifestEntry]) -> io::Result<()> {
        self.line.clear();
        for entry in entries {
            if entry.key.is_empty() || entry.key.len() > MAX_KEY_BYTES {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("manifest key is empty or longer than {MAX_KEY_BYTES} bytes: {:?}", entry.key),
                ));
            }
            self.line.extend_from_slice(entry.to_json_line().as_bytes());
            self.line.push(b'\n');
        }
        if self.line.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.line)?;
        self.file.sync_data()
    }

    /// Reads the manifest at `path`: its entries in file order and a warning for every line that
    /// was ignored (torn last line, a line that does not parse, an over-long line). Fails only if
    /// the file cannot be read at all.
    pub fn load(path: &Path) -> io::Result<(Vec<ManifestEntry>, Vec<String>)> {
        let file = File::open(path)?;
        let mut reader = BufReader::new(file);
        let mut entries = Vec::new();
        let mut warnings = Vec::new();
        let mut line = Vec::with_capacity(512);
        let mut number = 0u64;
        loop {
            line.clear();
            number += 1;
            let read = (&mut reader).take(MAX_LINE_BYTES as u64).read_until(b'\n', &mut line)?;
            if read == 0 {
                break;
            }
            if line.last() != Some(&b'\n') {
                if line.len() < MAX_LINE_BYTES {
                    // End of file without a newline: a record torn by a crash.
                    warnings.push(format!(
                        "{} line {number}: torn last line ({} bytes without a newline, a crash while it \
                         was written); ignored",
                        path.display(),
                        line.len()
                    ));
                    break;
                }
                // Over-long: skip to the end of the line without holding it.
                let mut skipped = line.len() as u64;
                let mut ended = false;
                loop {
                    let buffer = reader.fill_buf()?;
                    if buffer.is_empty() {
                        break;
                    }
                    match buffer.iter().position(|&b| b == b'\n') {
                        Some(at) => {
                            reader.consume(at + 1);
                            skipped += at as u64 + 1;
                            ended = true;
                            break;
                        }
                        None => {
                            let length = buffer.len();
                            reader.consume(length);
                            skipped += length as u64;
                        }
                    }
                }
                warnings.push(format!(
                    "{} line {number}: {skipped} bytes, longer than {MAX_LINE_BYTES}{}; ignored",
                    path.display(),
                    if ended { "" } else { " (and torn: no newline at the end of the file)" }
                ));
                continue;
            }
            line.pop();
            let text = match std::str::from_utf8(&line) {
                Ok(text) => text.trim_end_matches('\r'),
                Err(_) => {
                    warnings.push(format!("{} line {number}: not UTF-8; ignored", path.display()));
                    continue;
                }
            };
            if text.trim().is_empty() {
                continue;
            }
            match ManifestEntry::from_json_line(text) {
                Ok(entry) => entries.push(entry),
                Err(reason) => warnings.push(format!("{} line {number}: {reason}; ignored", path.display())),
            }
        }
        Ok((entries, warnings))
    }
}

/// An object in the manifest that the base does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// Its key.
    pub key: String,
    /// Its size per the manifest.
    pub size: u64,
    /// Its exposure.
    pub exposure_id: u64,
}

/// An object at the base that the manifest does not list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extra {
    /// Its key.
    pub key: String,
    /// Its size at the base.
    pub size: u64,
}

/// A `{key}.conflict-{crc32}` object: the drain found different bytes under `key` and put its own
/// here instead of overwriting them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The conflict object's key.
    pub key: String,
    /// The key the drain meant to write.
    pub base_key: String,
    /// Its size at the base.
    pub size: u64,
    /// Whether the CRC32 in its name is the manifest's CRC32 for `base_key` (so it holds the
    /// bytes the ring produced); `None` when the manifest has no entry for `base_key`.
    pub holds_manifest_bytes: Option<bool>,
}

/// An object whose size or CRC32 at the base differs from the manifest's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// Its key.
    pub key: String,
    /// Per the manifest (bytes, or the CRC32).
    pub expected: u64,
    /// At the base.
    pub actual: u64,
}

/// An object that was listed but could not be read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// Its key.
    pub key: String,
    /// Why.
    pub error: String,
}

/// What [`verify_base`] found. Every list is sorted by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// The prefix checked (as given).
    pub prefix: String,
    /// Whether every object in the manifest was read back and its CRC32 compared.
    pub read_back: bool,
    /// Distinct keys of the manifest under the prefix.
    pub expected_objects: usize,
    /// Manifest entries outside the prefix (not checked).
    pub outside_prefix: usize,
    /// Objects listed at the base under the prefix.
    pub listed_objects: usize,
    /// Their bytes.
    pub listed_bytes: u64,
    /// Objects of the manifest found at the base with the right size (and CRC32 when read back).
    pub matched: usize,
    /// In the manifest, not at the base.
    pub missing: Vec<Missing>,
    /// At the base, not in the manifest (conflict objects aside).
    pub extra: Vec<Extra>,
    /// The drain's `.conflict-` objects (not in the manifest).
    pub conflicts: Vec<Conflict>,
    /// At the base with another size.
    pub size_mismatch: Vec<Mismatch>,
    /// At the base with the right size and another CRC32 (only when read back).
    pub crc_mismatch: Vec<Mismatch>,
    /// Listed, but reading it back failed.
    pub unreadable: Vec<Unreadable>,
    /// Notes that are not problems of the base (e.g. a key recorded twice with different bytes).
    pub warnings: Vec<String>,
}

impl VerifyReport {
    /// Nothing missing, extra, conflicting, mismatched or unreadable.
    pub fn is_clean(&self) -> bool {
        self.problem_count() == 0
    }

    /// Objects with a problem, all kinds together.
    pub fn problem_count(&self) -> usize {
        self.missing.len()
            + self.extra.len()
            + self.conflicts.len()
            + self.size_mismatch.len()
            + self.crc_mismatch.len()
            + self.unreadable.len()
    }

    /// The operator's text report: what was checked (`base`: where, `manifest`: which file),
    /// the counts, then every problem with its key, and the verdict.
    pub fn text(&self, base: &str, manifest: &str) -> String {
        let report = self;
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(out, "base:     {base}, prefix {:?}", report.prefix);
        let _ = writeln!(
            out,
            "manifest: {} ({} objects under the prefix, {} entries outside it not checked)",
            manifest, report.expected_objects, report.outside_prefix
        );
        let _ = writeln!(
            out,
            "checked:  {} objects listed ({} bytes); {}",
            report.listed_objects,
            report.listed_bytes,
            if report.read_back { "sizes and CRC32s (read back)" } else { "sizes only (--no-read-back)" }
        );
        let _ = writeln!(
            out,
            "counts:   matched {}, missing {}, extra {}, conflicts {}, size mismatch {}, CRC mismatch {}, \
             unreadable {}",
            report.matched,
            report.missing.len(),
            report.extra.len(),
            report.conflicts.len(),
            report.size_mismatch.len(),
            report.crc_mismatch.len(),
            report.unreadable.len()
        );
        for warning in &report.warnings {
            let _ = writeln!(out, "warning:  {warning}");
        }
        for missing in &report.missing {
            let _ = writeln!(
                out,
                "MISSING        {}  (manifest: {} bytes, exposure {})",
                missing.key, missing.size, missing.exposure_id
            );
        }
        for extra in &report.extra {
            let _ =
                writeln!(out, "EXTRA          {}  ({} bytes, not in the manifest)", extra.key, extra.size);
        }
        for conflict in &report.conflicts {
            let holds = match conflict.holds_manifest_bytes {
                Some(true) => "holds the manifest's bytes for it",
                Some(false) => "does not hold the manifest's bytes for it",
                None => "which is not in the manifest",
            };
            let _ = writeln!(
                out,
                "CONFLICT       {}  ({} bytes; the drain's copy of {}, {holds})",
                conflict.key, conflict.size, conflict.base_key
            );
        }
        for mismatch in &report.size_mismatch {
            let _ = writeln!(
                out,
                "SIZE MISMATCH  {}  (manifest {} bytes, base {} bytes)",
                mismatch.key, mismatch.expected, mismatch.actual
            );
        }
        for mismatch in &report.crc_mismatch {
            let _ = writeln!(
                out,
                "CRC MISMATCH   {}  (manifest crc32 {:08x}, base {:08x})",
                mismatch.key, mismatch.expected, mismatch.actual
            );
        }
        for unreadable in &report.unreadable {
            let _ = writeln!(out, "UNREADABLE     {}  ({})", unreadable.key, unreadable.error);
        }
        if report.is_clean() {
            let _ = writeln!(out, "result:   CLEAN: the base holds exactly the manifest's objects");
        } else {
            let _ =
                writeln!(out, "result:   PROBLEMS FOUND: {} objects (listed above)", report.problem_count());
        }
        out
    }

    /// The report as one JSON object (CRC32s as 8 hex digits).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let hex = |value: u64| format!("{value:08x}");
        json!({
            "clean": self.is_clean(),
            "prefix": self.prefix,
            "read_back": self.read_back,
            "counts": {
                "expected": self.expected_objects,
                "outside_prefix": self.outside_prefix,
                "listed": self.listed_objects,
                "listed_bytes": self.listed_bytes,
                "matched": self.matched,
                "missing": self.missing.len(),
                "extra": self.extra.len(),
                "conflicts": self.conflicts.len(),
                "size_mismatch": self.size_mismatch.len(),
                "crc_mismatch": self.crc_mismatch.len(),
                "unreadable": self.unreadable.len(),
            },
            "missing": self.missing.iter().map(|m| json!({
                "key": m.key, "size": m.size, "exposure_id": m.exposure_id,
            })).collect::<Vec<_>>(),
            "extra": self.extra.iter().map(|e| json!({"key": e.key, "size": e.size})).collect::<Vec<_>>(),
            "conflicts": self.conflicts.iter().map(|c| json!({
                "key": c.key, "base_key": c.base_key, "size": c.size,
                "holds_manifest_bytes": c.holds_manifest_bytes,
            })).collect::<Vec<_>>(),
            "size_mismatch": self.size_mismatch.iter().map(|m| json!({
                "key": m.key, "expected": m.expected, "actual": m.actual,
            })).collect::<Vec<_>>(),
            "crc_mismatch": self.crc_mismatch.iter().map(|m| json!({
                "key": m.key, "expected": hex(m.expected), "actual": hex(m.actual),
            })).collect::<Vec<_>>(),
            "unreadable": self.unreadable.iter().map(|u| json!({"key": u.key, "error": u.error}))
                .collect::<Vec<_>>(),
            "warnings": self.warnings,
        })
    }
}

/// Why the base could not be checked at all.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Listing the base failed (unreachable, no such bucket, bad credentials, ...).
    #[error("listing the base under {prefix:?} failed: {source}")]
    List {
        /// The prefix listed.
        prefix: String,
        /// The store's error.
        source: object_store::Error,
    },
}

/// Lists everything `store` holds under `prefix` (e.g. `raw/`; empty for everything) and checks it
/// against `expected` (the manifest's entries; those outside the prefix are not checked, the
/// first entry of a key counts). With `read_back`, every object of the manifest found with the
/// right size is read back (streamed, a few at a time) and its CRC32 compared. Progress is logged
/// every [`PROGRESS_EVERY_OBJECTS`] objects. Fails only if the listing fails; an object that
/// cannot be read back is reported as [`Unreadable`].
pub async fn verify_base(
    store: &dyn ObjectStore,
    prefix: &str,
    expected: &[ManifestEntry],
    read_back: bool,
) -> Result<VerifyReport, VerifyError> {
    let mut report = VerifyReport { prefix: prefix.to_owned(), read_back, ..VerifyReport::default() };
    // First entry per key; later entries with other bytes are noted.
    let mut manifest: HashMap<&str, &ManifestEntry> = HashMap::new();
    for entry in expected {
        if !entry.key.starts_with(prefix) {
            report.outside_prefix += 1;
            continue;
        }
        match manifest.get(entry.key.as_str()) {
            None => {
                manifest.insert(&entry.key, entry);
            }
            Some(first) if first.size != entry.size || first.crc32 != entry.crc32 => {
                report.warnings.push(format!(
                    "{}: recorded more than once with different bytes (size {} crc32 {:08x}, then size {} \
                     crc32 {:08x}); checking against the first",
                    entry.key, first.size, first.crc32, entry.size, entry.crc32
                ));
            }
            Some(_) => {}
        }
    }
    report.expected_objects = manifest.len();

    let list_prefix = ObjectPath::from(prefix);
    let mut listing = store.list((!prefix.is_empty()).then_some(&list_prefix));
    let mut seen: HashSet<&str> = HashSet::with_capacity(manifest.len());
    let mut to_read: Vec<(ObjectPath, &ManifestEntry)> = Vec::new();
    while let Some(item) = listing.next().await {
        let meta = item.map_err(|source| VerifyError::List { prefix: prefix.to_owned(), source })?;
        let key = meta.location.as_ref();
        // `list` matches whole path segments; a prefix ending mid-segment is filtered here.
        if !key.starts_with(prefix) {
            continue;
        }
        report.listed_objects += 1;
        report.listed_bytes += meta.size;
        if report.listed_objects.is_multiple_of(PROGRESS_EVERY_OBJECTS) {
            tracing::info!(
                listed = report.listed_objects,
                bytes = report.listed_bytes,
                "verify: listing the base"
            );
        }
        if let Some((&manifest_key, &entry)) = manifest.get_key_value(key) {
            seen.insert(manifest_key);
            if meta.size != entry.size {
                report.size_mismatch.push(Mismatch {
                    key: key.to_owned(),
                    expected: entry.size,
                    actual: meta.size,
                });
            } else if read_back {
                to_read.push((meta.location.clone(), entry));
            } else {
                report.matched += 1;
            }
        } else if let Some(at) = key.rfind(CONFLICT_MARKER) {
            let base_key = &key[..at];
            let suffix = &key[at + CONFLICT_MARKER.len()..];
            let holds_manifest_bytes = manifest
                .get(base_key)
                .map(|entry| u32::from_str_radix(suffix, 16).ok() == Some(entry.crc32) && suffix.len() == 8);
            report.conflicts.push(Conflict {
                key: key.to_owned(),
                base_key: base_key.to_owned(),
                size: meta.size,
                holds_manifest_bytes,
            });
        } else {
            report.extra.push(Extra { key: key.to_owned(), size: meta.size });
        }
    }
    tracing::info!(listed = report.listed_objects, bytes = report.listed_bytes, "verify: listing done");
    for (key, entry) in &manifest {
        if !seen.contains(key) {
            report.missing.push(Missing {
                key: entry.key.clone(),
                size: entry.size,
                exposure_id: entry.exposure_id,
            });
        }
    }

    if read_back {
        let total = to_read.len();
        let mut checks = futures::stream::iter(
            to_read.into_iter().map(|(path, entry)| async move { (entry, read_crc32(store, &path).await) }),
        )
        .buffer_unordered(READ_BACK_CONCURRENCY);
        let (mut done, mut bytes) = (0usize, 0u64);
        while let Some((entry, result)) = checks.next().await {
            done += 1;
            match result {
                Ok((crc, length)) => {
                    bytes += length;
                    if length != entry.size {
                        report.size_mismatch.push(Mismatch {
                            key: entry.key.clone(),
                            expected: entry.size,
                            actual: length,
                        });
                    } else if crc != entry.crc32 {
                        report.crc_mismatch.push(Mismatch {
                            key: entry.key.clone(),
                            expected: u64::from(entry.crc32),
                            actual: u64::from(crc),
                        });
                    } else {
                        report.matched += 1;
                    }
                }
                Err(error) => {
                    report.unreadable.push(Unreadable { key: entry.key.clone(), error: error.to_string() })
                }
            }
            if done.is_multiple_of(PROGRESS_EVERY_OBJECTS) || done == total {
                tracing::info!(done, total, bytes, "verify: reading objects back");
            }
        }
    }

    report.missing.sort_by(|a, b| a.key.cmp(&b.key));
    report.extra.sort_by(|a, b| a.key.cmp(&b.key));
    report.conflicts.sort_by(|a, b| a.key.cmp(&b.key));
    report.size_mismatch.sort_by(|a, b| a.key.cmp(&b.key));
    report.crc_mismatch.sort_by(|a, b| a.key.cmp(&b.key));
    report.unreadable.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(report)
}

/// CRC32 and length of an object, streamed (never the whole object in memory).
async fn read_crc32(store: &dyn ObjectStore, path: &ObjectPath) -> object_store::Result<(u32, u64)> {
    let mut stream = store.get(path).await?.into_stream();
    let mut hasher = crc32fast::Hasher::new();
    let mut length = 0u64;
    while let Some(chunk) = stream.try_next().await? {
        hasher.update(&chunk);
        length += chunk.len() as u64;
    }
    Ok((hasher.finalize(), length))
}
