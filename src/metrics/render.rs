//! The text exposition format (version 0.0.4): one `# HELP` and `# TYPE` per
//! family, then its samples. Per-shard counters keep a `shard` label (to
//! find a hot core); histograms are summed over shards to keep the series
//! count small.
#![forbid(unsafe_code)]

use std::fmt::Write;

use super::histogram::{BOUNDS_SECONDS, Snapshot};
use super::{Counter, LoginResult, Metrics, ShardCells, TlsResult};

pub(super) fn render(m: &Metrics) -> String {
    let mut out = String::with_capacity(4096 + 1024 * m.shards.len());
    let shards: Vec<&ShardCells> = m.shards.iter().map(|c| &**c).collect();

    per_shard(
        &mut out,
        "shardpop_connections_accepted_total",
        "counter",
        "Connections accepted, per shard.",
        &shards,
        |c| c.connections_accepted.get(),
    );
    // Read closed before accepted so a racing accept/close pair never makes
    // the gauge negative.
    per_shard(
        &mut out,
        "shardpop_connections_open",
        "gauge",
        "Connections open now, per shard.",
        &shards,
        |c| {
            let closed = c.connections_closed.get();
            c.connections_accepted.get().saturating_sub(closed)
        },
    );
    by_result(
        &mut out,
        "shardpop_logins_total",
        "Login attempts by result (ok, failed, in_use, rejected, temp_fail), per shard.",
        &shards,
        LoginResult::ALL.map(|r| (r.label(), r as usize)),
        |c, r| c.logins[r].get(),
    );
    histogram(
        &mut out,
        "shardpop_login_duration_seconds",
        "From a login command (PASS, APOP or the last SASL step) to its reply.",
        &shards,
        |c| &c.login_duration,
    );
    counter_families(&mut out, &shards);
    histogram(
        &mut out,
        "shardpop_retr_duration_seconds",
        "From a RETR or TOP command to the last byte of its reply.",
        &shards,
        |c| &c.retr_duration,
    );
    family(
        &mut out,
        "shardpop_worker_queue_depth",
        "gauge",
        "Jobs waiting for a worker-pool thread.",
    );
    let depth = m.worker_queue.get().map_or(0, |probe| probe());
    let _ = writeln!(out, "shardpop_worker_queue_depth {depth}");
    by_result(
        &mut out,
        "shardpop_tls_handshakes_total",
        "TLS handshakes (implicit TLS and STLS) by result, per shard.",
        &shards,
        TlsResult::ALL.map(|r| (r.label(), r as usize)),
        |c, r| c.tls_handshakes[r].get(),
    );
    family(
        &mut out,
        "shardpop_build_info",
        "gauge",
        "Always 1; the labels say which build and engine are running.",
    );
    let _ = writeln!(
        out,
        "shardpop_build_info{{version=\"{}\",engine=\"{}\"}} 1",
        escape(env!("CARGO_PKG_VERSION")),
        escape(&m.engine)
    );
    out
}

/// A family's name, its help text, and where its per-shard value lives.
type CounterFamily = (&'static str, &'static str, fn(&ShardCells) -> &Counter);

fn counter_families(out: &mut String, shards: &[&ShardCells]) {
    let plain: [CounterFamily; 6] = [
        (
            "shardpop_retr_messages_total",
            "Messages sent by RETR and TOP, per shard.",
            |c| &c.retr_messages,
        ),
        (
            "shardpop_retr_bytes_total",
            "Octets on the wire for RETR and TOP replies (stuffed, CRLF), per shard.",
            |c| &c.retr_octets,
        ),
        (
            "shardpop_deleted_messages_total",
            "Messages removed from the store at QUIT, per shard.",
            |c| &c.deleted_messages,
        ),
        (
            "shardpop_auth_penalties_total",
            "Failed logins that earned their address a penalty (delay or block), per shard.",
            |c| &c.auth_penalties,
        ),
        (
            "shardpop_tls_handshakes_offloaded_total",
            "TLS handshakes whose costly signature (RSA, ECDSA P-384) ran on the worker pool, per shard.",
            |c| &c.tls_offloaded,
        ),
        (
            "shardpop_logins_on_shard_total",
            "Logins answered on their shard without the worker pool (server.login_on_shard), per shard; a subset of shardpop_logins_total.",
            |c| &c.logins_on_shard,
        ),
    ];
    for (name, help, cell) in plain {
        per_shard(out, name, "counter", help, shards, |c| cell(c).get());
    }
}

/// A counter family with one series per shard and `result` label;
/// `results` pairs each label with the index `value` reads.
fn by_result<const N: usize>(
    out: &mut String,
    name: &str,
    help: &str,
    shards: &[&ShardCells],
    results: [(&str, usize); N],
    value: impl Fn(&ShardCells, usize) -> u64,
) {
    family(out, name, "counter", help);
    for (i, c) in shards.iter().enumerate() {
        for (label, r) in results {
            let _ = writeln!(
                out,
                "{name}{{shard=\"{i}\",result=\"{label}\"}} {}",
                value(c, r)
            );
        }
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn per_shard(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    shards: &[&ShardCells],
    value: impl Fn(&ShardCells) -> u64,
) {
    family(out, name, kind, help);
    for (i, c) in shards.iter().enumerate() {
        let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", value(c));
    }
}

fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    shards: &[&ShardCells],
    cell: impl Fn(&ShardCells) -> &super::Histogram,
) {
    family(out, name, "histogram", help);
    let mut sum = Snapshot::default();
    for c in shards {
        cell(c).add_to(&mut sum);
    }
    let mut cumulative = 0u64;
    for (bound, &n) in BOUNDS_SECONDS.iter().zip(&sum.buckets) {
        cumulative = cumulative.wrapping_add(n);
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    let count = sum.count();
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {}", sum.sum_ns as f64 / 1e9);
    let _ = writeln!(out, "{name}_count {count}");
}

/// Label values escape `\`, `"` and newline (exposition format spec).
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for ch in value.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
pub(super) fn escape_for_test(value: &str) -> String {
    escape(value)
}
