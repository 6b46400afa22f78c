//! Runs the `hw-sim-camera` binary: a small night into a replay file whose frames all decode, and
//! clear non-zero exits for a bad raft name, a bad destination and an unreachable socket.

use std::path::PathBuf;
use std::process::Command;

use hw_sim::frame::{decode_frame, frame_length_bytes, InstrumentCode};
use hw_sim::geometry::SEGMENT_SIZE_BYTES;
use hw_sim::transport::ReplayFileReader;

fn temp_path(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    std::env::temp_dir().join(format!("hw-sim-camera-cli-{name}-{}-{nanos}", std::process::id()))
}

fn camera() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hw-sim-camera"))
}

#[test]
fn writes_a_replay_file_of_decodable_frames() {
    let path = temp_path("ok.replay");
    let output = camera()
        .arg("--to")
        .arg(format!("file:{}", path.display()))
        .args(["--visits", "1", "--frames-per-segment", "2", "--as-fast-as-possible", "--latiss"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("exposure 1/2"), "stdout: {stdout}");
    assert!(stdout.contains("done: 320 frames"), "stdout: {stdout}");

    let mut reader = ReplayFileReader::open(&path).unwrap();
    let mut buffer = vec![0u8; frame_length_bytes(SEGMENT_SIZE_BYTES)];
    let mut frames = 0u64;
    let mut latiss_frames = 0u64;
    while let Some(header) = reader.read_frame(&mut buffer).unwrap() {
        let decoded = decode_frame(&buffer[..header.frame_length_bytes()]).unwrap();
        frames += 1;
        assert_eq!(decoded.frame_sequence.get(), frames);
        if decoded.instrument_code() == Some(InstrumentCode::Latiss) {
            latiss_frames += 1;
        }
    }
    // R22: 144 segments x 2 frames, LATISS: 16 segments x 2 frames.
    assert_eq!(frames, 320);
    assert_eq!(latiss_frames, 32);
    std::fs::remove_file(&path).unwrap();
}

fn assert_fails(args: &[&str], expected: &str) {
    let output = camera().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{args:?} succeeded");
    assert!(stderr.contains(expected), "{args:?}: stderr {stderr:?} lacks {expected:?}");
}

#[test]
fn bad_arguments_fail_clearly() {
    let path = temp_path("never.replay");
    let to = format!("file:{}", path.display());
    assert_fails(&["--to", &to, "--rafts", "R99", "--as-fast-as-possible"], "R99");
    assert_fails(&["--to", "ftp:host", "--as-fast-as-possible"], "is not unix:PATH");
    let socket = temp_path("absent.sock");
    assert_fails(&["--to", &format!("unix:{}", socket.display()), "--as-fast-as-possible"], "cannot open");
    assert_fails(&["--to", &to, "--compression", "10", "--as-fast-as-possible"], "cannot be used with");
    assert!(!path.exists());
}
