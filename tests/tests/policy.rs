//! Project conventions, checked by `cargo test` so CI and humans run the same thing.
//!
//! - every Rust source file opens with a `//!` doc saying what lives there;
//! - every crate of the workspace has a heading in ARCHITECTURE.md's code map;
//! - `.ci/run` calls exactly the test command the README gives;
//! - `unsafe` is forbidden in every crate but `dma-ingest`.

use std::path::{Path, PathBuf};

const CRATES: [&str; 7] = ["ringbuffer", "dma-ingest", "failover", "hw-sim", "summit-node", "tests", "hil"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn rust_files(directory: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(directory).expect("readable directory") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            if !path.ends_with("target") && !path.ends_with("fixtures") {
                rust_files(&path, found);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn every_rust_file_opens_with_a_module_doc() {
    let mut files = Vec::new();
    for name in CRATES {
        rust_files(&root().join(name), &mut files);
    }
    assert!(files.len() >= CRATES.len(), "found only {} files", files.len());
    let undocumented: Vec<_> = files
        .iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).expect("readable");
            !text.trim_start().starts_with("//!")
        })
        .collect();
    assert!(undocumented.is_empty(), "files without a leading `//!` doc: {undocumented:?}");
}

#[test]
fn architecture_has_a_heading_for_every_crate() {
    let architecture = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    for name in CRATES {
        let heading = format!("### `{name}/`");
        assert!(architecture.contains(&heading), "ARCHITECTURE.md lacks the heading {heading}");
    }
    assert!(architecture.contains("Architecture invariant:"), "ARCHITECTURE.md states no invariants");
}

#[test]
fn ci_runs_exactly_the_readme_test_command() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let ci = std::fs::read_to_string(root().join(".ci/run")).expect(".ci/run");
    let command = "./scripts/test-all";
    assert!(readme.contains(command), "README does not give `{command}` as the test command");
    let ci_commands: Vec<&str> =
        ci.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    assert!(
        ci_commands.iter().any(|line| *line == format!("exec {command}")),
        ".ci/run does not exec {command}: {ci_commands:?}"
    );
}

#[test]
fn unsafe_code_is_forbidden_outside_dma_ingest() {
    for name in CRATES.iter().filter(|&&n| n != "dma-ingest") {
        let lib = std::fs::read_to_string(root().join(name).join("src/lib.rs")).expect("lib.rs");
        assert!(lib.contains("#![forbid(unsafe_code)]"), "{name}/src/lib.rs does not forbid unsafe code");
    }
}
