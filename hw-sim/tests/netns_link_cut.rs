//! Test of `hil/netns-link-cut.sh`: when running as root with working `ip netns`, sets up the
//! summit and base namespaces, checks that a TCP connection from summit to a tiny python3 server
//! in base works, that `cut` makes it fail within about 2 s, that `restore` brings it back, and
//! that teardown (always run, by a guard) removes both namespaces. Otherwise prints a loud
//! `SKIPPED` line. All traffic stays inside the namespaces the script creates.

use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../hil/netns-link-cut.sh");
const BASE_IP: &str = "10.231.0.2";
const PORT: u16 = 7531;
/// How long a connectivity change may take to show.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(2);

fn run(program: &str, args: &[&str]) -> Option<Output> {
    Command::new(program).args(args).stdin(Stdio::null()).output().ok()
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    run(program, args).is_some_and(|output| output.status.success())
}

/// Whether we are root and can create network namespaces (probed with a unique throwaway one).
fn netns_available() -> bool {
    let is_root =
        run("id", &["-u"]).is_some_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0");
    if !is_root {
        return false;
    }
    let probe = format!("hwsim-probe-{}", std::process::id());
    let added = succeeds("ip", &["netns", "add", &probe]);
    let deleted = added && succeeds("ip", &["netns", "del", &probe]);
    added && deleted
}

/// The real python3 executable (bypassing slow wrapper shims), if any.
fn python3() -> Option<String> {
    let output = run("python3", &["-c", "import sys; print(sys.executable)"])?;
    let path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (output.status.success() && !path.is_empty()).then_some(path)
}

/// Tears the namespaces down and stops the server however the test ends.
struct Teardown {
    id: String,
    server: Option<Child>,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if let Some(server) = self.server.as_mut() {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = run("bash", &[SCRIPT, "teardown", &self.id]);
    }
}

fn script(action: &str, id: &str) {
    let output = run("bash", &[SCRIPT, action, id]).expect("cannot run bash");
    assert!(
        output.status.success(),
        "{action} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One TCP connection from the summit namespace to the base server, reading its greeting.
fn summit_connects(python: &str, id: &str) -> bool {
    let client = format!(
        "import socket\ns = socket.create_connection(('{BASE_IP}', {PORT}), timeout=0.5)\n\
         s.settimeout(0.5)\nassert s.recv(3) == b'hi\\n'"
    );
    let summit = format!("summit-test-{id}");
    Command::new("ip")
        .args(["netns", "exec", &summit, python, "-c", &client])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Polls until `summit_connects` equals `wanted` or [`CHANGE_TIMEOUT`] passes.
fn connectivity_becomes(python: &str, id: &str, wanted: bool) -> bool {
    let deadline = Instant::now() + CHANGE_TIMEOUT;
    loop {
        if summit_connects(python, id) == wanted {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn netns_link_cut_and_restore() {
    let python = match (netns_available(), python3()) {
        (true, Some(python)) => python,
        (available, python) => {
            eprintln!(
                "SKIPPED: needs root and ip netns (and python3) -- root+netns: {available}, python3: {}",
                python.is_some()
            );
            println!("SKIPPED: needs root and ip netns");
            return;
        }
    };
    let started = Instant::now();
    let id = format!("h{}", std::process::id() % 100_000_000);
    let mut guard = Teardown { id: id.clone(), server: None };
    script("setup", &id);

    // Base server: greets every connection, exits by itself after 10 s in any case.
    let server = format!(
        "import socket, time\nl = socket.socket()\nl.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         l.bind(('{BASE_IP}', {PORT}))\nl.listen(16)\nl.settimeout(0.2)\nend = time.time() + 10\n\
         while time.time() < end:\n    try:\n        c, _ = l.accept()\n    except OSError:\n        continue\n\
         \x20   c.sendall(b'hi\\n')\n    c.close()\n"
    );
    let base = format!("base-test-{id}");
    guard.server = Some(
        Command::new("ip")
            .args(["netns", "exec", &base, &python, "-c", &server])
            .stdin(Stdio::null())
            .spawn()
            .expect("cannot start the base server"),
    );

    assert!(connectivity_becomes(&python, &id, true), "summit cannot reach base after setup");
    script("cut", &id);
    assert!(connectivity_becomes(&python, &id, false), "summit still reaches base 2 s after cut");
    script("restore", &id);
    assert!(connectivity_becomes(&python, &id, true), "summit cannot reach base 2 s after restore");

    drop(guard);
    let namespaces = run("ip", &["netns", "list"]).expect("ip netns list");
    let namespaces = String::from_utf8_lossy(&namespaces.stdout);
    assert!(!namespaces.contains(&format!("-test-{id}")), "teardown left namespaces: {namespaces}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}
