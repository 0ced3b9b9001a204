//! The pieces of the text log format that cost the most per line, made
//! cheaper while the lines stay byte for byte what `tracing-subscriber`'s
//! default `fmt` format writes (tests, the fail2ban filter and operators'
//! own parsers read them):
//!
//! - [`Rfc3339Micros`]: the timestamp (`2026-11-27T19:38:33.258945Z`), with
//!   the part up to the second formatted once per second per thread instead
//!   of once per line.
//! - [`Fields`]: the fields, as `DefaultFields` writes them, but the
//!   `message` is escaped a whole string at a time when it holds nothing to
//!   escape, instead of one `char` at a time.
//! - [`Text`]: the line around them, as the default `Full` format writes it
//!   without colours and spans (all of shardpop's lines): strings written
//!   whole instead of through `nu_ansi_term`'s `Display` and padded
//!   `write!`s (~1,100 instructions per line). Anything
//!   else (a terminal, a span, a record from the `log` crate) goes to the
//!   stock format.
//!
//! Together they were ~3 % of a login session's server CPU (perf with dwarf
//! call graphs, 1 shard, 1 worker, c=16), and replacing them took a login
//! session from 78.0k to 64.5k user-space instructions
//! (`scripts/bench-instructions`; docs/benchmarks.md, fourth session).
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Format, Full, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The default `Full` event format, cheaper where nothing but plain text
/// is asked for (see the module comment).
pub struct Text<T> {
    timer: T,
    stock: Format<Full, T>,
}

impl<T: FormatTime + Clone> Text<T> {
    /// Lines stamped by `timer`.
    pub fn new(timer: T) -> Text<T> {
        Text {
            stock: Format::default().with_timer(timer.clone()),
            timer,
        }
    }
}

impl<S, N, T> FormatEvent<S, N> for Text<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    T: FormatTime,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        // The `log` bridge's records carry their real target and level in
        // fields that the stock format reads.
        if writer.has_ansi_escapes()
            || meta.fields().field("log.target").is_some()
            || ctx.event_scope().is_some()
        {
            return self.stock.format_event(ctx, writer, event);
        }
        if self.timer.format_time(&mut writer).is_err() {
            writer.write_str("<unknown time>")?;
        }
        writer.write_str(match *meta.level() {
            Level::TRACE => " TRACE ",
            Level::DEBUG => " DEBUG ",
            Level::INFO => "  INFO ",
            Level::WARN => "  WARN ",
            Level::ERROR => " ERROR ",
        })?;
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

/// UTC, RFC 3339 with microseconds, as `tracing_subscriber::fmt::time::SystemTime`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rfc3339Micros;

thread_local! {
    /// The second last formatted and its text up to and including the '.'.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

impl FormatTime for Rfc3339Micros {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        write_timestamp(w, since_epoch.as_secs(), since_epoch.subsec_micros())
    }
}

fn write_timestamp(w: &mut impl fmt::Write, secs: u64, micros: u32) -> fmt::Result {
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let (days, rest) = (secs / 86_400, secs % 86_400);
            let (year, month, day) = civil_from_days(days);
            cached.1.clear();
            write!(
                cached.1,
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.",
                rest / 3600,
                rest / 60 % 60,
                rest % 60
            )?;
            cached.0 = secs;
        }
        w.write_str(&cached.1)
    })?;
    let mut digits = *b"000000Z";
    let mut n = micros.min(999_999);
    for d in digits[..6].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    w.write_str(std::str::from_utf8(&digits).map_err(|_| fmt::Error)?)
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// `DefaultFields` with a cheaper `message`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fields;

impl<'a> MakeVisitor<Writer<'a>> for Fields {
    type Visitor = FieldsVisitor<'a>;

    fn make_visitor(&self, target: Writer<'a>) -> FieldsVisitor<'a> {
        FieldsVisitor {
            writer: target,
            is_empty: true,
            result: Ok(()),
        }
    }
}

/// Writes the `message` itself and hands every other field to
/// `DefaultVisitor`, so they come out exactly as before.
pub struct FieldsVisitor<'a> {
    writer: Writer<'a>,
    is_empty: bool,
    result: fmt::Result,
}

impl FieldsVisitor<'_> {
    fn delegate(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let mut inner = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut inner);
        self.result = inner.finish();
        self.is_empty = false;
    }
}

impl Visit for FieldsVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.delegate(|v| v.record_str(field, value));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.delegate(|v| v.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() != "message" {
            return self.delegate(|v| v.record_debug(field, value));
        }
        if self.result.is_err() {
            return;
        }
        if !std::mem::replace(&mut self.is_empty, false) {
            self.result = self.writer.write_char(' ');
        }
        if self.result.is_ok() {
            let sanitize = self.writer.sanitizes_ansi_escapes();
            self.result = MESSAGE.with(|cell| {
                // tracing-core drops an event emitted while another is
                // dispatched on this thread, so the buffer is free here;
                // were it not, the message goes the direct way, not a panic.
                let Ok(mut text) = cell.try_borrow_mut() else {
                    return if sanitize {
                        write!(Escaping(&mut self.writer), "{value:?}")
                    } else {
                        write!(self.writer, "{value:?}")
                    };
                };
                text.clear();
                write!(text, "{value:?}")?;
                let written = if sanitize {
                    Escaping(&mut self.writer).write_str(&text)
                } else {
                    self.writer.write_str(&text)
                };
                if text.capacity() > MESSAGE_KEEP_BYTES {
                    *text = String::new();
                }
                written
            });
        }
    }
}

thread_local! {
    /// A message's text, formatted whole before it is written: its pieces
    /// then go into a `String` directly, not one by one through the
    /// escaping check and the line writer. With the `memchr3` check, which
    /// pays its set-up once per string, it saves ~2,700 instructions per
    /// login line (`scripts/bench-instructions`: 56.4k against 50.9k per
    /// session without and with it).
    static MESSAGE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// A message buffer grown beyond this by one long message is not kept.
const MESSAGE_KEEP_BYTES: usize = 4096;

/// A client's address in a log line, as `IpAddr`'s `Display` writes it;
/// IPv4 without `core::fmt`'s four padded integers (~1,200 instructions
/// per address, twice a session).
#[derive(Clone, Copy, Debug)]
pub struct Rip(pub IpAddr);

impl fmt::Display for Rip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let IpAddr::V4(v4) = self.0 else {
            return self.0.fmt(f);
        };
        if f.width().is_some() || f.precision().is_some() {
            return self.0.fmt(f);
        }
        let mut text = [0u8; 15];
        let mut len = 0;
        for (i, octet) in v4.octets().into_iter().enumerate() {
            if i > 0 {
                text[len] = b'.';
                len += 1;
            }
            let digits = [octet / 100, octet / 10 % 10, octet % 10];
            let skip = match octet {
                100.. => 0,
                10.. => 1,
                _ => 2,
            };
            for d in &digits[skip..] {
                text[len] = b'0' + d;
                len += 1;
            }
        }
        f.write_str(std::str::from_utf8(&text[..len]).map_err(|_| fmt::Error)?)
    }
}

impl VisitOutput<fmt::Result> for FieldsVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for FieldsVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

/// What `tracing-subscriber` escapes in a message (terminal control
/// sequences: ESC, BEL, BS, FF, DEL and the C1 controls), escaped the same
/// way; a string with none of them is written whole.
struct Escaping<'w, W: fmt::Write>(&'w mut W);

/// The first byte of U+0080..=U+00BF in UTF-8; the C1 controls are among them.
const C1_LEAD: u8 = 0xc2;

impl<W: fmt::Write> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Two vectorized scans for the six bytes that can start an escape
        // (a byte loop cost ~4 instructions per byte of every line).
        let bytes = s.as_bytes();
        let clean = memchr::memchr3(0x1b, 0x07, 0x08, bytes).is_none()
            && memchr::memchr3(0x0c, 0x7f, C1_LEAD, bytes).is_none();
        if clean {
            return self.0.write_str(s);
        }
        for ch in s.chars() {
            match ch {
                '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' => {
                    write!(self.0, "\\x{:02x}", ch as u32)?;
                }
                '\u{80}'..='\u{9f}' => write!(self.0, "\\u{{{:x}}}", ch as u32)?,
                _ => self.0.write_char(ch)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[test]
    fn timestamps_match_the_calendar() {
        let cases = [
            (0, 0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400, 7, "2000-02-29T00:00:00.000007Z"),
            (951_868_799, 999_999, "2000-02-29T23:59:59.999999Z"),
            (1_796_044_713, 258_945, "2026-11-30T13:18:33.258945Z"),
            (4_107_542_399, 123_456, "2100-02-28T23:59:59.123456Z"),
            (4_107_542_400, 10, "2100-03-01T00:00:00.000010Z"),
        ];
        for (secs, micros, want) in cases {
            let mut s = String::new();
            write_timestamp(&mut s, secs, micros).unwrap();
            assert_eq!(s, want);
            // The cached second gives the same text for another instant in it.
            let mut again = String::new();
            write_timestamp(&mut again, secs, micros).unwrap();
            assert_eq!(again, want);
        }
    }

    #[test]
    fn the_timestamp_is_the_stock_one() {
        use tracing_subscriber::fmt::time::SystemTime as Stock;
        for _ in 0..100 {
            let (mut ours, mut stock) = (String::new(), String::new());
            Rfc3339Micros
                .format_time(&mut Writer::new(&mut ours))
                .unwrap();
            Stock.format_time(&mut Writer::new(&mut stock)).unwrap();
            assert_eq!(ours.len(), stock.len(), "{ours} vs {stock}");
            // Same text up to the second, unless a second ended in between.
            if ours[..19] == stock[..19] {
                return;
            }
        }
        panic!("the two timestamps never agreed to the second");
    }

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    /// One instant, so two formatters' lines can be compared whole.
    #[derive(Clone, Copy)]
    struct Fixed;

    impl FormatTime for Fixed {
        fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
            write_timestamp(w, 1_796_044_713, 258_945)
        }
    }

    /// The same events through the stock formatter and through ours.
    fn both(emit: impl Fn()) -> (String, String) {
        both_at(Level::INFO, false, emit)
    }

    /// [`both`] up to `level`, with or without colours.
    fn both_at(level: Level, ansi: bool, emit: impl Fn()) -> (String, String) {
        let stock = Lines::default();
        let ours = Lines::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(stock.clone())
            .with_ansi(ansi)
            .with_timer(Fixed)
            .with_max_level(level)
            .finish();
        tracing::subscriber::with_default(subscriber, &emit);
        let subscriber = tracing_subscriber::fmt()
            .with_writer(ours.clone())
            .with_ansi(ansi)
            .with_max_level(level)
            .fmt_fields(Fields)
            .event_format(Text::new(Fixed))
            .finish();
        tracing::subscriber::with_default(subscriber, &emit);
        let text = |l: Lines| String::from_utf8(l.0.lock().unwrap().clone()).unwrap();
        (text(stock), text(ours))
    }

    #[test]
    fn every_level_spans_and_colours_are_what_the_stock_format_writes() {
        let emit = || {
            tracing::trace!(n = 1, "t");
            tracing::debug!("d");
            tracing::info!("i");
            tracing::warn!("w");
            tracing::error!("e");
            let span = tracing::info_span!("conn", shard = 3);
            let _in = span.enter();
            tracing::info!("inside a span");
        };
        let (stock, ours) = both_at(Level::TRACE, false, emit);
        assert_eq!(ours, stock);
        assert!(
            ours.starts_with("2026-11-30T13:18:33.258945Z TRACE "),
            "{ours}"
        );
        assert!(ours.contains("conn{shard=3}: "), "{ours}");
        let (stock, ours) = both_at(Level::TRACE, true, emit);
        assert_eq!(ours, stock);
        assert!(ours.contains("\x1b["), "{ours}");
        // A record of a dependency that logs through the `log` crate.
        let (stock, ours) = both(|| {
            let record = log::Record::builder()
                .args(format_args!("from log"))
                .level(log::Level::Warn)
                .target("mysql::conn")
                .build();
            tracing_log::format_trace(&record).unwrap();
        });
        assert_eq!(ours, stock);
        assert!(ours.contains("  WARN mysql::conn: from log"), "{ours}");
    }

    #[test]
    fn lines_are_what_the_stock_format_writes() {
        let hostile = "u\x1b[31m\x07\x08\x0c\x7f\u{85}\u{9f}\u{a0}é\r\n<x>";
        let err = std::io::Error::other("disk on fire");
        let (stock, ours) = both(|| {
            tracing::info!(
                "pop3 login: user=<{}>, rip={}, shard={}",
                "alice",
                "127.0.0.1",
                1
            );
            tracing::warn!(user = hostile, n = 3, "message with {hostile} in it");
            tracing::error!(error = %err, path = ?"/x y", "failed");
            tracing::error!(
                error = &err as &(dyn std::error::Error + 'static),
                "as error"
            );
            tracing::info!(r#type = "raw", "");
            tracing::info!(only = 1);
            tracing::info!(message = hostile);
            tracing::debug!("not shown");
        });
        assert_eq!(ours, stock);
        assert!(ours.contains("\\x1b[31m\\x07"), "{ours}");
        // Seven events at info and above; newlines are not escaped (the
        // stock format does not either: user names are checked at login).
        assert_eq!(ours.matches("log_format::tests: ").count(), 7, "{ours}");
    }

    #[test]
    fn rip_writes_what_ipaddr_writes() {
        let mut addrs: Vec<IpAddr> = [
            "0.0.0.0",
            "255.255.255.255",
            "10.9.99.100",
            "127.0.0.1",
            "1.20.199.200",
            "::1",
            "2001:db8::7",
            "::ffff:10.0.0.1",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        addrs.extend((0..=255).map(|o| IpAddr::from([o, 255 - o, o / 3, o % 7])));
        for a in addrs {
            assert_eq!(Rip(a).to_string(), a.to_string());
            assert_eq!(format!("{:>18}", Rip(a)), format!("{a:>18}"));
        }
    }

    #[test]
    fn a_message_that_logs_while_it_is_formatted_is_written_whole() {
        struct Nested;
        impl fmt::Debug for Nested {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                tracing::info!("inner {}", 1);
                f.write_str("outer")
            }
        }
        let (stock, ours) = both(|| tracing::info!("{:?} \x1b done", Nested));
        assert_eq!(ours, stock);
        // (tracing-subscriber drops the inner event, as the stock format
        // does; what matters is the outer line, whole and escaped.)
        assert!(ours.contains("outer \\x1b done"), "{ours}");
        let long = "y".repeat(3 * MESSAGE_KEEP_BYTES);
        let (stock, ours) = both(|| tracing::info!("{long}"));
        assert_eq!(ours, stock);
        assert_eq!(MESSAGE.with(|m| m.borrow().capacity()), 0, "not kept");
    }

    #[test]
    fn escaping_matches_char_by_char() {
        for s in [
            "plain",
            "\x1b",
            "a\u{80}b\u{9f}c\u{a0}",
            "é\u{c2}x",
            "\x7f\x7f",
            "",
        ] {
            let mut fast = String::new();
            Escaping(&mut fast).write_str(s).unwrap();
            let mut slow = String::new();
            for ch in s.chars() {
                match ch {
                    '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' => {
                        write!(slow, "\\x{:02x}", ch as u32).unwrap()
                    }
                    c if (0x80..=0x9f).contains(&(c as u32)) => {
                        write!(slow, "\\u{{{:x}}}", c as u32).unwrap()
                    }
                    c => slow.push(c),
                }
            }
            assert_eq!(fast, slow);
        }
    }
}
