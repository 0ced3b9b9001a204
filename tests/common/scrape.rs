//! Reading a test server's /metrics: its address from the log, the text by
//! curl, one sample's value.
#![allow(dead_code)]

use crate::common::Server;

/// The metrics endpoint's address, from the server's log line.
pub fn metrics_addr(server: &Server) -> String {
    let log = server.wait_log("metrics listening");
    let line = log
        .lines()
        .find(|l| l.contains("metrics listening"))
        .unwrap();
    line.split("addr=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// GET /metrics with curl.
pub fn scrape(addr: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", &format!("http://{addr}/metrics")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {addr}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The value of the sample `name` (with its labels as written), summed
/// over shards.
pub fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let base = series.split('{').next()?;
            let labels = series.strip_prefix(base)?;
            let wanted_base = name.split('{').next()?;
            let wanted = &name[wanted_base.len()..];
            let matches = base == wanted_base
                && wanted
                    .trim_matches(|c| c == '{' || c == '}')
                    .split(',')
                    .filter(|w| !w.is_empty())
                    .all(|w| labels.contains(w));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
