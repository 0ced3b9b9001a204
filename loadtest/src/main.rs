//! The POP3 load generator (see issue: load-test harness). Placeholder until the harness lands.
fn main() {
    eprintln!("loadtest: not built yet");
    std::process::exit(2);
}
