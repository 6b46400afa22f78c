//! Base verification on a local-directory base: the manifest (append, reload, torn last line,
//! one writer at a time) and `verify_base` (clean; missing, extra, size and same-size CRC
//! mismatches, conflict objects, each reported with its key), and the `verify-base` command's
//! exit status and output (0 clean, 1 problems with the key printed, 2 could not check).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use failover::manifest::{verify_base, Conflict, Manifest, ManifestEntry, Mismatch, Missing, VerifyReport};
use object_store::local::LocalFileSystem;

const KEYS: [&str; 3] = [
    "raw/LATISS/20250415/AT_O_20250415_000001/AT_O_20250415_000001_RXX_S00.fits",
    "raw/LATISS/20250415/AT_O_20250415_000002/AT_O_20250415_000002_RXX_S00.fits",
    "raw/LSSTCam/20250415/MC_O_20250415_000003/MC_O_20250415_000003_R22_S11.fits",
];

/// Deterministic, distinct bytes for an object.
fn object_bytes(index: usize) -> Vec<u8> {
    (0..5000 + index * 17).map(|at| ((at * 31 + index * 7) % 251) as u8).collect()
}

/// A base directory holding the three objects, and their manifest entries.
struct Base {
    _work: tempfile::TempDir,
    directory: PathBuf,
    manifest: PathBuf,
    entries: Vec<ManifestEntry>,
}

impl Base {
    fn new() -> Base {
        let work = tempfile::tempdir().expect("tempdir");
        let directory = work.path().join("base");
        std::fs::create_dir_all(&directory).expect("base");
        let manifest = work.path().join("drain-manifest.jsonl");
        let mut entries = Vec::new();
        let mut writer = Manifest::open(&manifest).expect("open manifest");
        for (index, key) in KEYS.iter().enumerate() {
            let bytes = object_bytes(index);
            let base = Base::put_at(&directory, key, &bytes);
            assert!(base.exists());
            let entry = ManifestEntry::for_bytes(
                key,
                &bytes,
                2025041500001 + index as u64,
                index == 1,
                1_000 + index as u64,
            );
            writer.record(&entry).expect("record");
            entries.push(entry);
        }
        Base { _work: work, directory, manifest, entries }
    }

    fn put_at(directory: &Path, key: &str, bytes: &[u8]) -> PathBuf {
        let path = directory.join(key);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("directories");
        std::fs::write(&path, bytes).expect("write object");
        path
    }

    fn put(&self, key: &str, bytes: &[u8]) {
        Base::put_at(&self.directory, key, bytes);
    }

    fn path(&self, key: &str) -> PathBuf {
        self.directory.join(key)
    }

    fn verify(&self, read_back: bool) -> VerifyReport {
        let store = LocalFileSystem::new_with_prefix(&self.directory).expect("store");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(verify_base(&store, "raw/", &self.entries, read_back)).expect("verify")
    }

    fn cli(&self, extra: &[&str]) -> std::process::Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_verify-base"));
        command.arg("--manifest").arg(&self.manifest).arg("--base-dir").arg(&self.directory).args(extra);
        command.output().expect("run verify-base")
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_base_holding_exactly_the_manifest_is_clean_and_objects_outside_the_prefix_are_not_looked_at() {
    let base = Base::new();
    base.put("other/not-raw.txt", b"outside the prefix");
    for read_back in [true, false] {
        let report = base.verify(read_back);
        assert!(report.is_clean(), "read_back {read_back}: {report:?}");
        assert_eq!((report.expected_objects, report.listed_objects, report.matched), (3, 3, 3));
        let bytes: u64 = (0..3).map(|index| object_bytes(index).len() as u64).sum();
        assert_eq!(report.listed_bytes, bytes);
        assert_eq!(report.read_back, read_back);
    }
}

#[test]
fn the_manifest_reloads_exactly_what_was_recorded_and_ignores_a_torn_last_line_with_a_warning() {
    let base = Base::new();
    let (entries, warnings) = Manifest::load(&base.manifest).expect("load");
    assert_eq!(entries, base.entries);
    assert!(warnings.is_empty(), "{warnings:?}");
    let written = std::fs::read_to_string(&base.manifest).expect("manifest");
    assert_eq!(written.lines().count(), 3);
    assert!(written
        .lines()
        .next()
        .expect("line")
        .contains(&format!("\"crc32\":\"{:08x}\"", base.entries[0].crc32)));

    // A crash in the middle of writing the fourth record.
    let fourth = ManifestEntry::for_bytes("raw/LATISS/20250415/x/y.fits", b"fourth", 4, false, 4);
    let line = fourth.to_json_line();
    let mut file = std::fs::OpenOptions::new().append(true).open(&base.manifest).expect("append");
    file.write_all(&line.as_bytes()[..line.len() / 2]).expect("torn write");
    drop(file);
    let (entries, warnings) = Manifest::load(&base.manifest).expect("a torn line never fails the load");
    assert_eq!(entries, base.entries);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("line 4") && warnings[0].contains("torn"), "{warnings:?}");

    // Reopening cuts the torn tail off; the next record is whole and loads.
    let mut writer = Manifest::open(&base.manifest).expect("reopen");
    writer.record(&fourth).expect("record");
    drop(writer);
    let (entries, warnings) = Manifest::load(&base.manifest).expect("load");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(entries.len(), 4);
    assert_eq!(entries[3], fourth);
}

#[test]
fn a_damaged_or_overlong_line_in_the_middle_is_skipped_with_a_warning_and_the_rest_loads() {
    let base = Base::new();
    let written = std::fs::read_to_string(&base.manifest).expect("manifest");
    let mut lines: Vec<String> = written.lines().map(str::to_owned).collect();
    lines.insert(1, "{\"key\": \"raw/broken\", \"size\": -1}".to_owned());
    lines.insert(2, format!("{{\"key\":\"{}\"}}", "k".repeat(10_000)));
    std::fs::write(&base.manifest, lines.join("\n") + "\n").expect("rewrite");
    let (entries, warnings) = Manifest::load(&base.manifest).expect("load");
    assert_eq!(entries, base.entries);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("line 2"), "{warnings:?}");
    assert!(warnings[1].contains("line 3") && warnings[1].contains("longer than"), "{warnings:?}");
}

#[test]
fn only_one_writer_holds_a_manifest() {
    let work = tempfile::tempdir().expect("tempdir");
    let path = work.path().join("manifest.jsonl");
    let first = Manifest::open(&path).expect("first");
    let second = Manifest::open(&path).expect_err("a second writer is refused");
    assert_eq!(second.kind(), std::io::ErrorKind::WouldBlock, "{second}");
    drop(first);
    Manifest::open(&path).expect("free again");
}

#[test]
fn a_missing_object_is_reported_with_its_key() {
    let base = Base::new();
    std::fs::remove_file(base.path(KEYS[1])).expect("remove");
    let report = base.verify(true);
    assert!(!report.is_clean());
    let entry = &base.entries[1];
    assert_eq!(
        report.missing,
        vec![Missing { key: KEYS[1].to_owned(), size: entry.size, exposure_id: entry.exposure_id }]
    );
    assert_eq!((report.matched, report.problem_count()), (2, 1));
}

#[test]
fn an_extra_object_is_reported_with_its_key() {
    let base = Base::new();
    let key = "raw/LATISS/20250415/AT_O_20250415_000009/AT_O_20250415_000009_RXX_S00.fits";
    base.put(key, b"not from this ring");
    let report = base.verify(false);
    assert_eq!(report.extra.len(), 1, "{report:?}");
    assert_eq!((report.extra[0].key.as_str(), report.extra[0].size), (key, 18));
    assert_eq!((report.matched, report.problem_count()), (3, 1));
}

#[test]
fn a_size_mismatch_is_reported_with_its_key_with_or_without_read_back() {
    let base = Base::new();
    let mut bytes = object_bytes(2);
    bytes.push(0);
    base.put(KEYS[2], &bytes);
    for read_back in [true, false] {
        let report = base.verify(read_back);
        assert_eq!(
            report.size_mismatch,
            vec![Mismatch {
                key: KEYS[2].to_owned(),
                expected: bytes.len() as u64 - 1,
                actual: bytes.len() as u64
            }],
            "read_back {read_back}"
        );
        assert!(report.crc_mismatch.is_empty() && report.missing.is_empty() && report.extra.is_empty());
        assert_eq!(report.problem_count(), 1);
    }
}

#[test]
fn a_same_size_crc_mismatch_is_found_by_reading_back_and_only_then() {
    let base = Base::new();
    let mut bytes = object_bytes(0);
    bytes[1234] ^= 0x10;
    base.put(KEYS[0], &bytes);
    let report = base.verify(true);
    assert_eq!(
        report.crc_mismatch,
        vec![Mismatch {
            key: KEYS[0].to_owned(),
            expected: u64::from(base.entries[0].crc32),
            actual: u64::from(crc32fast::hash(&bytes)),
        }]
    );
    assert_eq!((report.matched, report.problem_count()), (2, 1));
    let sizes_only = base.verify(false);
    assert!(sizes_only.is_clean(), "a size-only check cannot see it: {sizes_only:?}");
}

#[test]
fn a_conflict_object_is_reported_as_a_conflict_not_as_an_extra() {
    let base = Base::new();
    let holding = format!("{}.conflict-{:08x}", KEYS[0], base.entries[0].crc32);
    let other = format!("{}.conflict-0badf00d", KEYS[1]);
    base.put(&holding, &object_bytes(0));
    base.put(&other, b"other");
    let report = base.verify(true);
    assert!(report.extra.is_empty(), "{report:?}");
    assert_eq!(
        report.conflicts,
        vec![
            Conflict {
                key: holding,
                base_key: KEYS[0].to_owned(),
                size: object_bytes(0).len() as u64,
                holds_manifest_bytes: Some(true),
            },
            Conflict { key: other, base_key: KEYS[1].to_owned(), size: 5, holds_manifest_bytes: Some(false) },
        ]
    );
    assert_eq!((report.matched, report.problem_count()), (3, 2));
}

#[test]
fn a_key_recorded_twice_is_checked_once_and_different_bytes_are_noted() {
    let mut base = Base::new();
    base.entries.push(base.entries[0].clone());
    let report = base.verify(true);
    assert!(report.is_clean() && report.warnings.is_empty(), "{report:?}");
    assert_eq!(report.expected_objects, 3);
    let mut different = base.entries[0].clone();
    different.crc32 ^= 1;
    base.entries.push(different);
    let report = base.verify(true);
    assert!(report.is_clean(), "the first entry counts: {report:?}");
    assert_eq!(report.warnings.len(), 1);
    assert!(report.warnings[0].contains(KEYS[0]), "{:?}", report.warnings);
}

#[test]
fn the_command_exits_0_on_a_clean_base_and_1_with_the_key_printed_when_an_object_is_missing() {
    let base = Base::new();
    let clean = base.cli(&[]);
    assert_eq!(clean.status.code(), Some(0), "{}{}", text(&clean.stdout), text(&clean.stderr));
    assert!(text(&clean.stdout).contains("CLEAN"), "{}", text(&clean.stdout));

    std::fs::remove_file(base.path(KEYS[2])).expect("remove");
    let missing = base.cli(&[]);
    assert_eq!(missing.status.code(), Some(1), "{}{}", text(&missing.stdout), text(&missing.stderr));
    let stdout = text(&missing.stdout);
    assert!(stdout.lines().any(|line| line.starts_with("MISSING") && line.contains(KEYS[2])), "{stdout}");
    assert!(!stdout.contains(KEYS[0]), "only the problem is listed: {stdout}");

    let json = base.cli(&["--json", "--no-read-back"]);
    assert_eq!(json.status.code(), Some(1));
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON report");
    assert_eq!(value["clean"], false);
    assert_eq!(value["read_back"], false);
    assert_eq!(value["counts"]["missing"], 1);
    assert_eq!(value["counts"]["matched"], 2);
    assert_eq!(value["missing"][0]["key"], KEYS[2]);
}

#[test]
fn the_command_exits_2_with_a_clear_message_when_it_cannot_check() {
    let base = Base::new();
    let output = Command::new(env!("CARGO_BIN_EXE_verify-base"))
        .arg("--manifest")
        .arg(&base.manifest)
        .arg("--base-dir")
        .arg(base.directory.join("no-such-dir"))
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("could not check") && stderr.contains("no-such-dir"), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_verify-base"))
        .arg("--manifest")
        .arg(base.directory.join("no-such-manifest.jsonl"))
        .arg("--base-dir")
        .arg(&base.directory)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("cannot read the manifest") && stderr.contains("no-such-manifest.jsonl"),
        "{stderr}"
    );

    // No base at all: a usage error.
    let output = Command::new(env!("CARGO_BIN_EXE_verify-base"))
        .arg("--manifest")
        .arg(&base.manifest)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("--base-dir"), "{}", text(&output.stderr));
}

#[test]
fn the_command_explains_itself() {
    let output = Command::new(env!("CARGO_BIN_EXE_verify-base")).arg("--help").output().expect("run");
    assert_eq!(output.status.code(), Some(0));
    let help = text(&output.stdout);
    for needle in
        ["--manifest", "--base-dir", "--s3-endpoint", "--bucket", "--no-read-back", "--json", "Exit status"]
    {
        assert!(help.contains(needle), "--help lacks {needle}: {help}");
    }
}

/// A real S3-protocol server (moto's server mode; `scripts/test-all` installs it) on a free
/// loopback port, stopped on drop.
struct S3Server {
    child: std::process::Child,
    endpoint: String,
}

impl S3Server {
    fn start() -> S3Server {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 -m moto.server (scripts/test-all installs moto[server])");
        let server = S3Server { child, endpoint: format!("http://127.0.0.1:{port}") };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "moto server did not start on port {port}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        server
    }

    /// Runs a boto3 snippet (an independent client) with `s3` bound to this server.
    fn boto3(&self, code: &str) {
        let script = format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='test', \
             aws_secret_access_key='test', region_name='us-east-1')\n{code}",
            self.endpoint
        );
        let output = Command::new("python3").args(["-c", &script]).output().expect("python3");
        assert!(output.status.success(), "boto3: {}", text(&output.stderr));
    }

    fn cli(&self, manifest: &Path, bucket: &str) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_verify-base"))
            .arg("--manifest")
            .arg(manifest)
            .args(["--s3-endpoint", &self.endpoint, "--bucket", bucket])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .output()
            .expect("run verify-base")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_command_checks_a_real_s3_server() {
    let server = S3Server::start();
    let base = Base::new();
    server.boto3("s3.create_bucket(Bucket='base')");
    for key in KEYS {
        server.boto3(&format!("s3.upload_file('{}', 'base', '{key}')", base.path(key).display()));
    }
    let clean = server.cli(&base.manifest, "base");
    assert_eq!(clean.status.code(), Some(0), "{}{}", text(&clean.stdout), text(&clean.stderr));
    assert!(text(&clean.stdout).contains("matched 3,"), "{}", text(&clean.stdout));

    server.boto3(&format!("s3.delete_object(Bucket='base', Key='{}')", KEYS[1]));
    let missing = server.cli(&base.manifest, "base");
    assert_eq!(missing.status.code(), Some(1), "{}{}", text(&missing.stdout), text(&missing.stderr));
    let stdout = text(&missing.stdout);
    assert!(stdout.lines().any(|line| line.starts_with("MISSING") && line.contains(KEYS[1])), "{stdout}");

    let no_bucket = server.cli(&base.manifest, "no-such-bucket");
    assert_eq!(no_bucket.status.code(), Some(2));
    let stderr = text(&no_bucket.stderr);
    assert!(stderr.contains("could not check") && stderr.contains("NoSuchBucket"), "{stderr}");
}

#[test]
fn the_command_exits_2_when_the_s3_endpoint_is_unreachable_or_has_no_credentials() {
    let base = Base::new();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let run = |with_keys: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_verify-base"));
        command.arg("--manifest").arg(&base.manifest).args(["--s3-endpoint", &endpoint, "--bucket", "base"]);
        command.env_remove("AWS_ACCESS_KEY_ID").env_remove("AWS_SECRET_ACCESS_KEY");
        if with_keys {
            command.args(["--access-key-id", "test", "--secret-access-key", "test"]);
        }
        command.output().expect("run verify-base")
    };
    let unreachable = run(true);
    assert_eq!(unreachable.status.code(), Some(2));
    let stderr = text(&unreachable.stderr);
    assert!(stderr.contains("could not check") && stderr.contains(&endpoint), "{stderr}");
    let no_keys = run(false);
    assert_eq!(no_keys.status.code(), Some(2));
    assert!(text(&no_keys.stderr).contains("no S3 credentials"), "{}", text(&no_keys.stderr));
}
