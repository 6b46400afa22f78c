//! `summit-node`: the daemon's command line (being built).

fn main() {
    eprintln!("summit-node: not built yet");
    std::process::exit(2);
}
