//! What a run measured: per-thread counters and HDR latency histograms (merged
//! once at the end), live atomic counters for the progress line, and the report
//! with its JSON line.
//!
//! Latencies are recorded in microseconds. Sessions, messages and bytes count
//! only inside the measured window (after `--warmup`, before the deadline).

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// The highest latency a histogram holds: one hour, in microseconds.
const LATENCY_US_MAX: u64 = 3_600_000_000;

/// The kinds of error a session can end with. One documented cause each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// `connect()` failed or was refused.
    Connect,
    /// The greeting was `-ERR` or missing.
    Greeting,
    /// `USER` or `PASS` was refused.
    Auth,
    /// Login refused with `[IN-USE]` (RFC 2449): the mailbox was still locked
    /// by a session of the same user that had already ended on our side.
    InUse,
    /// A transaction command (STAT, LIST, UIDL, RETR, DELE, QUIT) got `-ERR`.
    Command,
    /// The server broke the protocol (unparseable reply).
    Protocol,
    /// Reset or closed mid-session.
    Io,
    /// `STLS` refused, or the TLS handshake or a TLS record failed
    /// (certificate not trusted, no shared version or cipher, bad record).
    Tls,
    /// No progress for `--timeout` seconds.
    Timeout,
}

impl ErrorKind {
    /// All kinds, for reports.
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::Connect,
        ErrorKind::Greeting,
        ErrorKind::Auth,
        ErrorKind::InUse,
        ErrorKind::Command,
        ErrorKind::Protocol,
        ErrorKind::Io,
        ErrorKind::Timeout,
        ErrorKind::Tls,
    ];

    /// The name used in the JSON line.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Greeting => "greeting",
            ErrorKind::Auth => "auth",
            ErrorKind::InUse => "in_use",
            ErrorKind::Command => "command",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Io => "io",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Tls => "tls",
        }
    }
}

/// Latency histograms by what they time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// From the (intended) session start to the greeting.
    Connect,
    /// From sending `USER` to `+OK` for `PASS`.
    Login,
    /// From sending `RETR` to the terminating `.CRLF`.
    Retr,
    /// From the (intended) session start to `+OK` for `QUIT`.
    Session,
    /// TLS: from the ClientHello (TCP connected, or `+OK` to `STLS`) to the
    /// end of the client's side of the handshake.
    Handshake,
}

/// One thread's measurements.
#[derive(Debug, Clone)]
pub struct Stats {
    pub sessions: u64,
    pub messages: u64,
    pub bytes: u64,
    pub errors: [u64; ErrorKind::ALL.len()],
    pub verified: u64,
    pub mismatches: u64,
    pub unmapped: u64,
    pub matched_by_content: u64,
    pub size_mismatches: u64,
    pub aborted: u64,
    pub reseed_failures: u64,
    /// TLS handshakes that were full (no session reused).
    pub handshakes_full: u64,
    /// TLS handshakes that resumed a session (`--tls-resume`).
    pub handshakes_resumed: u64,
    hist: [Histogram<u64>; 5],
}

impl Default for Stats {
    fn default() -> Self {
        let hist =
            || Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("static bounds are valid");
        Stats {
            sessions: 0,
            messages: 0,
            bytes: 0,
            errors: [0; ErrorKind::ALL.len()],
            verified: 0,
            mismatches: 0,
            unmapped: 0,
            matched_by_content: 0,
            size_mismatches: 0,
            aborted: 0,
            reseed_failures: 0,
            handshakes_full: 0,
            handshakes_resumed: 0,
            hist: [hist(), hist(), hist(), hist(), hist()],
        }
    }
}

impl Stats {
    /// Records one latency (saturating at the histogram's range).
    pub fn record(&mut self, timer: Timer, micros: u64) {
        self.hist[timer as usize].saturating_record(micros.max(1));
    }

    /// The histogram of one timer.
    pub fn histogram(&self, timer: Timer) -> &Histogram<u64> {
        &self.hist[timer as usize]
    }

    /// Adds another thread's measurements.
    pub fn merge(&mut self, other: &Stats) {
        self.sessions += other.sessions;
        self.messages += other.messages;
        self.bytes += other.bytes;
        for (a, b) in self.errors.iter_mut().zip(other.errors) {
            *a += b;
        }
        self.verified += other.verified;
        self.mismatches += other.mismatches;
        self.unmapped += other.unmapped;
        self.matched_by_content += other.matched_by_content;
        self.size_mismatches += other.size_mismatches;
        self.aborted += other.aborted;
        self.reseed_failures += other.reseed_failures;
        self.handshakes_full += other.handshakes_full;
        self.handshakes_resumed += other.handshakes_resumed;
        for (a, b) in self.hist.iter_mut().zip(&other.hist) {
            a.add(b).expect("histograms share bounds");
        }
    }

    /// All errors.
    pub fn error_total(&self) -> u64 {
        self.errors.iter().sum()
    }
}

/// Counters every thread bumps as it goes, read by the progress line.
#[derive(Debug, Default)]
pub struct Live {
    pub sessions: AtomicU64,
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    pub mismatches: AtomicU64,
    /// Sessions currently open (connecting or logged in).
    pub open: AtomicU64,
    /// Idle scenario: connections logged in and idling.
    pub idling: AtomicU64,
    /// Set by the main thread to end the run early (idle `--hold`).
    pub stop: std::sync::atomic::AtomicBool,
}

impl Live {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    #[serde(rename = "p99_9")]
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    /// Reads the percentiles; all zero for an empty histogram.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles {
                count: 0,
                p50: 0,
                p90: 0,
                p99: 0,
                p999: 0,
                max: 0,
            };
        }
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// The run's result: the JSON line, field for field.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub addr: String,
    pub concurrency: u64,
    /// Target sessions/s in open loop; `null` in closed loop.
    pub rate: Option<f64>,
    pub threads: usize,
    pub duration_s: f64,
    pub sessions: u64,
    /// Sessions completed in the whole run, warm-up and drain included: what
    /// the server did while its CPU time was being read (CPU per session).
    pub sessions_total: u64,
    pub sessions_per_s: f64,
    pub messages: u64,
    pub messages_per_s: f64,
    pub bytes: u64,
    /// Un-stuffed RETR body bytes per second, in 10^6 bytes.
    pub mb_per_s: f64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<&'static str, u64>,
    /// Whether bodies were compared with the corpus (`--mail-location`).
    pub verify: bool,
    pub verified: u64,
    /// Bodies that failed verification: different from their file, or (UIDL
    /// naming no file) matching no file of the mailbox by content.
    pub mismatches: u64,
    /// RETRs whose UIDL named no file in the user's Maildir.
    pub unmapped: u64,
    /// Of those, bodies matched to a file by size and content (a weaker check:
    /// intact mail, but not proven to be message k).
    pub matched_by_content: u64,
    /// Bodies whose length differs from the size `LIST` gave.
    pub size_mismatches: u64,
    /// Sessions cut off at the end of the drain period (not errors).
    pub aborted: u64,
    pub reseed_failures: u64,
    /// Idle scenario: most connections logged in at once.
    pub idle_peak: u64,
    /// CPU seconds (user + system) the load generator itself used.
    pub client_cpu_s: f64,
    /// TLS: `"implicit"` (`--tls`), `"stls"`, or `null` for plaintext.
    pub tls: Option<&'static str>,
    /// Whether sessions were reused across a thread's connections.
    pub tls_resume: bool,
    /// TLS handshakes finished in the measured window, by kind.
    pub handshakes: Handshakes,
    pub latency_us: BTreeMap<&'static str, Percentiles>,
}

/// TLS handshake counts of the JSON line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Handshakes {
    pub full: u64,
    pub resumed: u64,
}

/// The inputs of a report besides the merged stats.
pub struct ReportInput<'a> {
    pub scenario: &'a str,
    pub addr: String,
    pub concurrency: u64,
    pub rate: Option<f64>,
    pub threads: usize,
    pub duration_s: f64,
    pub verify: bool,
    pub idle_peak: u64,
    pub client_cpu_s: f64,
    pub sessions_total: u64,
    /// The TLS mode's name (`"implicit"`, `"stls"`), `None` for plaintext.
    pub tls: Option<&'static str>,
    pub tls_resume: bool,
}

impl Report {
    /// Builds the report; rates are per second of the measured window.
    pub fn new(input: ReportInput<'_>, stats: &Stats) -> Self {
        let per_s = |n: u64| {
            if input.duration_s > 0.0 {
                n as f64 / input.duration_s
            } else {
                0.0
            }
        };
        let round = |x: f64| (x * 100.0).round() / 100.0;
        let errors_by_kind = ErrorKind::ALL
            .iter()
            .map(|k| (k.name(), stats.errors[*k as usize]))
            .collect();
        let latency_us = [
            ("connect", Timer::Connect),
            ("login", Timer::Login),
            ("retr", Timer::Retr),
            ("session", Timer::Session),
            ("handshake", Timer::Handshake),
        ]
        .into_iter()
        .map(|(name, t)| (name, Percentiles::of(stats.histogram(t))))
        .collect();
        Report {
            scenario: input.scenario.to_owned(),
            addr: input.addr,
            concurrency: input.concurrency,
            rate: input.rate,
            threads: input.threads,
            duration_s: round(input.duration_s),
            sessions: stats.sessions,
            sessions_total: input.sessions_total,
            sessions_per_s: round(per_s(stats.sessions)),
            messages: stats.messages,
            messages_per_s: round(per_s(stats.messages)),
            bytes: stats.bytes,
            mb_per_s: round(per_s(stats.bytes) / 1e6),
            errors: stats.error_total(),
            errors_by_kind,
            verify: input.verify,
            verified: stats.verified,
            mismatches: stats.mismatches,
            unmapped: stats.unmapped,
            matched_by_content: stats.matched_by_content,
            size_mismatches: stats.size_mismatches,
            aborted: stats.aborted,
            reseed_failures: stats.reseed_failures,
            idle_peak: input.idle_peak,
            client_cpu_s: round(input.client_cpu_s),
            tls: input.tls,
            tls_resume: input.tls_resume,
            handshakes: Handshakes {
                full: stats.handshakes_full,
                resumed: stats.handshakes_resumed,
            },
            latency_us,
        }
    }

    /// The one-line JSON for scripts.
    pub fn json_line(&self) -> String {
        serde_json::to_string(self).expect("report serializes")
    }

    /// A short human summary (for stderr).
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} c={} {:.1}s: {} sessions ({:.1}/s), {} msgs ({:.1}/s), {:.2} MB/s, {} errors, {} mismatches ({} verified)\n",
            self.scenario,
            self.concurrency,
            self.duration_s,
            self.sessions,
            self.sessions_per_s,
            self.messages,
            self.messages_per_s,
            self.mb_per_s,
            self.errors,
            self.mismatches,
            self.verified,
        );
        if let Some(mode) = self.tls {
            let h = self.handshakes;
            s += &format!(
                "  TLS {mode}{}: {} handshakes ({} full, {} resumed)\n",
                if self.tls_resume {
                    " with resumption"
                } else {
                    ""
                },
                h.full + h.resumed,
                h.full,
                h.resumed
            );
        }
        for (name, p) in &self.latency_us {
            if p.count > 0 {
                s += &format!(
                    "  {name:<8} n={:<8} p50={}us p90={}us p99={}us p99.9={}us max={}us\n",
                    p.count, p.p50, p.p90, p.p99, p.p999, p.max
                );
            }
        }
        s
    }
}

/// CPU seconds this process used so far, from `/proc/self/stat` (utime + stime).
/// `/proc` counts in USER_HZ, which Linux fixes at 100 for user space.
pub fn process_cpu_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the `(comm)`, which may contain spaces: state is field 3.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime is field 14, stime 15; `after` starts at field 3.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(duration_s: f64) -> ReportInput<'static> {
        ReportInput {
            scenario: "download",
            addr: "127.0.0.1:1".into(),
            concurrency: 4,
            rate: None,
            threads: 2,
            duration_s,
            verify: true,
            idle_peak: 0,
            client_cpu_s: 0.5,
            sessions_total: 60,
            tls: None,
            tls_resume: false,
        }
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut s = Stats::default();
        for us in 1..=1000 {
            s.record(Timer::Retr, us);
        }
        let p = Percentiles::of(s.histogram(Timer::Retr));
        assert_eq!(p.count, 1000);
        assert_eq!(
            (p.p50, p.p90, p.p99, p.p999, p.max),
            (500, 900, 990, 999, 1000)
        );
        assert_eq!(Percentiles::of(s.histogram(Timer::Login)).count, 0);
    }

    #[test]
    fn merge_adds_counts_and_histograms() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        a.sessions = 3;
        b.sessions = 4;
        b.errors[ErrorKind::Auth as usize] = 2;
        a.record(Timer::Login, 10);
        b.record(Timer::Login, 20_000);
        a.merge(&b);
        assert_eq!(a.sessions, 7);
        assert_eq!(a.error_total(), 2);
        let p = Percentiles::of(a.histogram(Timer::Login));
        assert_eq!(p.count, 2);
        assert!((19_990..=20_020).contains(&p.max), "max {}", p.max);
    }

    #[test]
    fn json_line_has_the_stable_fields() {
        let mut s = Stats {
            sessions: 50,
            messages: 200,
            bytes: 4_000_000,
            mismatches: 1,
            ..Stats::default()
        };
        s.errors[ErrorKind::Timeout as usize] = 3;
        s.record(Timer::Connect, 250);
        let report = Report::new(input(2.0), &s);
        let line = report.json_line();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["scenario"], "download");
        assert_eq!(v["concurrency"], 4);
        assert_eq!(v["duration_s"], 2.0);
        assert_eq!(v["sessions"], 50);
        assert_eq!(v["sessions_total"], 60);
        assert_eq!(v["sessions_per_s"], 25.0);
        assert_eq!(v["messages_per_s"], 100.0);
        assert_eq!(v["mb_per_s"], 2.0);
        assert_eq!(v["errors"], 3);
        assert_eq!(v["errors_by_kind"]["timeout"], 3);
        assert_eq!(v["mismatches"], 1);
        assert!(v["rate"].is_null());
        let connect = &v["latency_us"]["connect"];
        assert_eq!(connect["count"], 1);
        assert_eq!(connect["p99_9"], 250);
        assert_eq!(v["latency_us"]["retr"]["count"], 0);
    }

    #[test]
    fn json_line_and_summary_carry_tls_handshakes() {
        let mut s = Stats {
            handshakes_full: 3,
            handshakes_resumed: 7,
            ..Stats::default()
        };
        for us in [400, 500, 9_000] {
            s.record(Timer::Handshake, us);
        }
        let mut other = Stats {
            handshakes_resumed: 1,
            ..Stats::default()
        };
        other.record(Timer::Handshake, 300);
        s.merge(&other);
        let mut tls_input = input(1.0);
        tls_input.tls = Some("implicit");
        tls_input.tls_resume = true;
        let report = Report::new(tls_input, &s);
        let v: serde_json::Value = serde_json::from_str(&report.json_line()).unwrap();
        assert_eq!(v["tls"], "implicit");
        assert_eq!(v["tls_resume"], true);
        assert_eq!(v["handshakes"]["full"], 3);
        assert_eq!(v["handshakes"]["resumed"], 8);
        let handshake = &v["latency_us"]["handshake"];
        assert_eq!(handshake["count"], 4);
        assert_eq!(handshake["p50"], 400);
        assert!((8_990..=9_010).contains(&handshake["max"].as_u64().unwrap()));
        let summary = report.summary();
        assert!(
            summary.contains("TLS implicit with resumption: 11 handshakes (3 full, 8 resumed)"),
            "{summary}"
        );
        assert!(summary.contains("handshake n=4"), "{summary}");

        let plain: serde_json::Value =
            serde_json::from_str(&Report::new(input(1.0), &Stats::default()).json_line()).unwrap();
        assert!(plain["tls"].is_null());
        assert_eq!(plain["handshakes"]["full"], 0);
        assert_eq!(plain["errors_by_kind"]["tls"], 0);
    }

    #[test]
    fn zero_duration_gives_zero_rates() {
        let report = Report::new(input(0.0), &Stats::default());
        assert_eq!(report.sessions_per_s, 0.0);
        assert!(report.summary().starts_with("download c=4"));
    }

    #[test]
    fn own_cpu_time_is_readable() {
        let t = process_cpu_s();
        assert!((0.0..1e6).contains(&t));
    }
}
