#!/usr/bin/env python3
"""summarize: the table of medians from a bench-vs-dovecot results.jsonl.

  summarize.py results.jsonl > table.md
  summarize.py --last results.jsonl      one line about the last record

Every number is the median over the rounds of one (server, scenario,
concurrency). Ratios are shardpop / Dovecot: above 1 is better for rates,
below 1 is better for latencies, CPU and memory. Stdlib only.
"""
import json
import statistics
import sys
from collections import defaultdict

SERVERS = ("shardpop", "dovecot")


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=0):
    if v is None:
        return "—"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}×"


def cpu_per_1k(run):
    sessions = run["result"].get("sessions_total") or run["result"]["sessions"]
    if not sessions:
        return None
    return run["server_cpu_s"] / sessions * 1000


def run_share(run):
    """Whole-run totals over measured-window ones: CPU is read around the run."""
    r = run["result"]
    return (r.get("sessions_total") or r["sessions"]) / r["sessions"] if r["sessions"] else None


def cpu_ms_per_mb(key):
    def get(run):
        share, mb = run_share(run), run["result"]["bytes"] / 1e6
        if share is None or not mb:
            return None
        cpu = run["server_cpu_s"] if key == "server" else run["result"]["client_cpu_s"]
        return cpu * 1000 / (mb * share)
    return get


def client_cpu_per_1k(run):
    sessions = run["result"].get("sessions_total") or run["result"]["sessions"]
    return run["result"]["client_cpu_s"] / sessions * 1000 if sessions else None


def resumed_pct(run):
    h = run["result"].get("handshakes") or {}
    total = h.get("full", 0) + h.get("resumed", 0)
    return h.get("resumed", 0) / total * 100 if total else None


TLS_LOGIN = [
    ("sessions/s", lambda r: r["result"]["sessions_per_s"], 0),
    ("server CPU ms / session", cpu_per_1k, 3),
    ("loadtest CPU ms / session", client_cpu_per_1k, 3),
    ("resumed handshakes %", resumed_pct, 1),
    ("p99 handshake µs", lambda r: r["result"]["latency_us"]["handshake"]["p99"], 0),
    ("p99 login µs", lambda r: r["result"]["latency_us"]["login"]["p99"], 0),
]
TLS_DOWNLOAD = [
    ("MB/s", lambda r: r["result"]["mb_per_s"], 1),
    ("server CPU ms / MB", cpu_ms_per_mb("server"), 3),
    ("loadtest CPU ms / MB", cpu_ms_per_mb("client"), 3),
    ("resumed handshakes %", resumed_pct, 1),
    ("p99 RETR µs", lambda r: r["result"]["latency_us"]["retr"]["p99"], 0),
]


def metrics_for(label):
    """TLS runs are labelled "tls SCENARIO CERT full|resumed"."""
    if label.startswith("tls "):
        return TLS_DOWNLOAD if label.split()[1] == "download" else TLS_LOGIN
    return METRICS.get(label, [])


# (label, extractor, digits) per scenario
METRICS = {
    "login": [
        ("sessions/s", lambda r: r["result"]["sessions_per_s"], 0),
        ("p99 connect+greeting µs", lambda r: r["result"]["latency_us"]["connect"]["p99"], 0),
        ("p99 login µs", lambda r: r["result"]["latency_us"]["login"]["p99"], 0),
        ("server CPU s / 1,000 sessions", cpu_per_1k, 3),
    ],
    "download": [
        ("MB/s", lambda r: r["result"]["mb_per_s"], 1),
        ("messages/s", lambda r: r["result"]["messages_per_s"], 0),
        ("p99 login µs", lambda r: r["result"]["latency_us"]["login"]["p99"], 0),
        ("p99 RETR µs", lambda r: r["result"]["latency_us"]["retr"]["p99"], 0),
        ("server CPU s / 1,000 sessions", cpu_per_1k, 3),
    ],
    "sync": [
        ("sessions/s", lambda r: r["result"]["sessions_per_s"], 0),
        ("MB/s", lambda r: r["result"]["mb_per_s"], 1),
        ("p99 login µs", lambda r: r["result"]["latency_us"]["login"]["p99"], 0),
        ("p99 RETR µs", lambda r: r["result"]["latency_us"]["retr"]["p99"], 0),
        ("server CPU s / 1,000 sessions", cpu_per_1k, 3),
    ],
    "delete": [
        ("sessions/s", lambda r: r["result"]["sessions_per_s"], 0),
        ("MB/s", lambda r: r["result"]["mb_per_s"], 1),
        ("p99 RETR µs", lambda r: r["result"]["latency_us"]["retr"]["p99"], 0),
        ("server CPU s / 1,000 sessions", cpu_per_1k, 3),
    ],
}


def one_line(record):
    """A progress line for one record (the script prints it after each run)."""
    if record["kind"] == "loopback":
        cpu = record.get("sender_cpu_ms_per_mb")
        cpu = f", sender CPU {cpu:.3f} ms/MB" if cpu is not None else ""
        return f"loopback: {record['streams']} stream(s) {record['mb_per_s']:,.0f} MB/s{cpu}"
    if record["kind"] == "big":
        m = record["median"]
        return (f"  {record['server']:<8} big {record['user']} ({record['messages']} messages) {record['label']}: "
                f"PASS→STAT {m['pass_to_stat_ms']} ms, LIST {m['list_ms']} ms, UIDL {m['uidl_ms']} ms "
                f"(median of {record['sessions']})")
    if record["kind"] == "idle":
        d = record
        per = (d["pss_after_kib"] - d["pss_before_kib"]) / d["connections"]
        return (f"  {d['server']:<8} idle {d['connections']}: peak {d['idle_peak']} logged in, "
                f"{per:.1f} KiB PSS per connection, errors {d['errors']}")
    d, r = record, record["result"]
    lat = r["latency_us"]
    tls = ""
    if r.get("tls"):
        h = r["handshakes"]
        tls = f"  handshakes {h['full']} full {h['resumed']} resumed"
    return (f"  {d['server']:<8} {d['scenario']:<8} c={d['concurrency']:<4} round {d['round']}: "
            f"{r['sessions_per_s']:>8.1f} sessions/s {r['mb_per_s']:>8.1f} MB/s  "
            f"p99 login {lat['login']['p99']} us  p99 RETR {lat['retr']['p99']} us  "
            f"errors {r['errors']} mismatches {r['mismatches']}  server CPU {d['server_cpu_s']:.2f} s{tls}")


def socket_floor(loops):
    """What the socket alone costs the sending side per MB (median of the
    one-stream loopback samples that report it): the floor under a server's
    CPU per MB of RETR in this run."""
    return median([r["sender_cpu_ms_per_mb"] for r in loops
                   if r["streams"] == 1 and r.get("sender_cpu_ms_per_mb") is not None])


def targets(runs, idle, limit, floor_mb=None):
    """The issue's targets, checked against the medians (only with both servers)."""
    def med(scenario, conc, srv, get):
        return median([get(r) for r in runs.get((scenario, conc, srv), [])])
    if not any(k[2] == "shardpop" for k in runs):
        return []
    lines = ["", "Targets (issues 4 and 14), from the medians above:", ""]
    def check(ok, text):
        lines.append(f"- {'met' if ok else 'MISSED'}: {text}")
    sps = lambda r: r["result"]["sessions_per_s"]
    a, b = med("login", 64, "shardpop", sps), med("login", 64, "dovecot", sps)
    if a is not None and b:
        check(a >= 5 * b, f"login sessions/s at c=64 ≥ 5× Dovecot: {a / b:.2f}×")
    mbs = lambda r: r["result"]["mb_per_s"]
    for conc in sorted({c for (s, c, _) in runs if s == "download"}):
        a, b = med("download", conc, "shardpop", mbs), med("download", conc, "dovecot", mbs)
        if a is None or not b:
            continue
        check(a >= 2 * b, f"download MB/s at c={conc} ≥ 2× Dovecot: {a / b:.2f}×")
        if limit:
            check(a >= limit / 2, f"download MB/s at c={conc} ≥ 50% of loopback: {a / limit * 100:.1f}%")
    over_floor = (lambda a: f" ({a / floor_mb:.2f}× the socket's own {floor_mb:.3f} ms/MB)") if floor_mb else (lambda a: "")
    for conc in sorted({c for (s, c, _) in runs if s == "download"}):
        a = med("download", conc, "shardpop", cpu_ms_per_mb("server"))
        if a is not None:
            check(a <= 0.5, f"plaintext RETR c={conc}: ≤ 0.5 ms server CPU per MB: {a:.3f} ms" + over_floor(a))
    for timer in ("login", "retr"):
        worse = []
        for (scenario, conc) in sorted({(s, c) for (s, c, _) in runs}):
            p99 = lambda r, t=timer: r["result"]["latency_us"][t]["p99"] or None
            a, b = med(scenario, conc, "shardpop", p99), med(scenario, conc, "dovecot", p99)
            if a is not None and b is not None and a >= b:
                worse.append(f"{scenario} c={conc}")
        check(not worse, f"p99 {timer} below Dovecot's at every concurrency" + (f" (not at {', '.join(worse)})" if worse else ""))
    # Issue 14's TLS targets (server CPU; same run, same certificate as Dovecot).
    for (scenario, conc) in sorted({(s, c) for (s, c, _) in runs if s.startswith("tls ")}):
        _, kind, cert, handshake = scenario.split()
        if kind == "login" and handshake == "full" and cert in ("ecdsa", "rsa"):
            limit = 0.30 if cert == "ecdsa" else 1.0
            a = med(scenario, conc, "shardpop", cpu_per_1k)
            if a is not None:
                check(a <= limit, f"TLS login, {cert}, full handshake, c={conc}: "
                                  f"≤ {limit:.2f} ms server CPU per session: {a:.3f} ms")
        if kind == "download":
            a = med(scenario, conc, "shardpop", cpu_ms_per_mb("server"))
            if a is not None:
                check(a <= 1.0, f"TLS RETR ({cert}) c={conc}: ≤ 1.0 ms server CPU per MB: {a:.3f} ms" + over_floor(a))
    for conns in sorted({n for (n, _) in idle}):
        rs = [r for r in idle.get((conns, "shardpop"), []) if r["idle_peak"] >= conns]
        per = median([(r["pss_after_kib"] - r["pss_before_kib"]) / conns for r in rs])
        if per is not None:
            check(per <= 16, f"memory per idle connection ≤ 16 KiB at {conns}: {per:.1f} KiB")
    return lines


def floor_lines(runs):
    """Server CPU per login session against the canned-reply floor, same run."""
    out = []
    for conc in sorted({c for (s, c, srv) in runs if s == "login" and srv == "floor"}):
        vals = {srv: median([cpu_per_1k(r) for r in runs.get(("login", conc, srv), [])])
                for srv in ("shardpop", "dovecot", "floor")}
        if not out:
            out += ["", "Server CPU per login session against the canned-reply floor (loadtest floor: "
                    "no auth, no disk), CPU s per 1,000 sessions, medians:", "",
                    "| c | shardpop | Dovecot | floor | shardpop/floor | Dovecot/floor |", "|---:|---:|---:|---:|---:|---:|"]
        out.append(f"| {conc} | {fmt(vals['shardpop'], 3)} | {fmt(vals['dovecot'], 3)} | {fmt(vals['floor'], 3)} | "
                   f"{ratio(vals['shardpop'], vals['floor'])} | {ratio(vals['dovecot'], vals['floor'])} |")
        if conc == 64 and vals["shardpop"] is not None and vals["floor"]:
            r = vals["shardpop"] / vals["floor"]
            out.append(f"\n- {'met' if r <= 1.5 else 'MISSED'} (issue 10): server CPU per login session "
                       f"at c=64 ≤ 1.5× the floor: {r:.2f}×\n")
    return out


def big_lines(bigs):
    """The big-mailbox scenario: one row per (user, phase, timing)."""
    if not bigs:
        return []
    out = ["", "One big mailbox, logins in a loop (ms, medians; first and restart are one session each):", "",
           "| user | messages | phase | timing | shardpop | Dovecot | shardpop/Dovecot |", "|---|---:|---|---|---:|---:|---:|"]
    keys = []
    for r in bigs:
        if (r["user"], r["label"]) not in keys:
            keys.append((r["user"], r["label"]))
    for user, label in keys:
        rs = {r["server"]: r for r in bigs if r["user"] == user and r["label"] == label}
        messages = next(iter(rs.values()))["messages"]
        for timing in ("pass_to_stat_ms", "list_ms", "uidl_ms"):
            a = rs.get("shardpop", {}).get("median", {}).get(timing)
            b = rs.get("dovecot", {}).get("median", {}).get(timing)
            out.append(f"| {user} | {messages} | {label} | {timing[:-3].replace('_', ' ')} | "
                       f"{fmt(a, 2)} | {fmt(b, 2)} | {ratio(a, b)} |")
    # The limits hold at 20,000 messages; smaller runs are smoke tests.
    limits = {"steady": 5.0, "restart": 10.0}
    checks = []
    for r in bigs:
        if r["server"] != "shardpop" or r["label"] not in limits or r["messages"] < 20000:
            continue
        limit = limits[r["label"]]
        timings = ("pass_to_stat_ms", "list_ms", "uidl_ms") if r["label"] == "steady" else ("pass_to_stat_ms",)
        for t in timings:
            v = r["median"][t]
            checks.append(f"- {'met' if v <= limit else 'MISSED'} (issue 10): {r['user']} {r['label']} "
                          f"{t[:-3].replace('_', ' ')} ≤ {limit:g} ms: {v} ms")
    if checks:
        out += [""] + checks
    return out


def main():
    if sys.argv[1] == "--last":
        print(one_line(load(sys.argv[2])[-1]))
        return
    records = load(sys.argv[1])
    env = next((r for r in records if r["kind"] == "env"), {})
    env_end = next((r for r in records if r["kind"] == "env_end"), {})
    loops = [r for r in records if r["kind"] == "loopback"]
    runs = defaultdict(list)
    for r in records:
        if r["kind"] == "load":
            runs[(r["scenario"], r["concurrency"], r["server"])].append(r)
    idle = defaultdict(list)
    for r in records:
        if r["kind"] == "idle":
            idle[(r["connections"], r["server"])].append(r)

    out = []
    limit = max((r["mb_per_s"] for r in loops), default=None)
    if env:
        out.append(f"Machine: {env.get('cpu', '?')}, {env.get('cores', '?')} cores, kernel {env.get('kernel', '?')}; "
                   f"Dovecot {env.get('dovecot', '?')}; shardpop {env.get('shardpop', '?')}; rounds {env.get('rounds', '?')}, "
                   f"{env.get('duration_s', '?')} s each after {env.get('warmup_s', '?')} s warm-up.")
        if "loadavg_start" in env:
            out.append(f"Load average (1 min) at start {env['loadavg_start']:.1f}, at end "
                       f"{env_end.get('loadavg_end', float('nan')):.1f}: other work on the machine shows here.")
        out.append("")
    for streams in sorted({r["streams"] for r in loops}):
        vals = sorted(r["mb_per_s"] for r in loops if r["streams"] == streams)
        out.append(f"Loopback TCP, {streams} stream(s): {vals[-1]:,.0f} MB/s at best "
                   f"({len(vals)} samples, lowest {vals[0]:,.0f}: other work on the machine)")
    if limit:
        out.append(f"Loopback limit used below: {limit:,.0f} MB/s (the best sample).")
    floor_mb = socket_floor(loops)
    if floor_mb is not None:
        out.append(f"The socket's own cost to a sender, the floor under RETR CPU per MB: {floor_mb:.3f} ms/MB "
                   "(`loadtest loopback`, one stream, the sending thread's CPU; median of the samples).")
    out.append("")
    out.append("| scenario | c | metric | shardpop | Dovecot | shardpop/Dovecot |")
    out.append("|---|---:|---|---:|---:|---:|")
    order = ["login", "download", "sync", "delete"]
    keys = sorted({(s, c) for (s, c, _) in runs},
                  key=lambda k: (order.index(k[0]) if k[0] in order else 9, k[0], k[1]))
    for scenario, conc in keys:
        for label, get, digits in metrics_for(scenario):
            vals = {srv: median([get(r) for r in runs.get((scenario, conc, srv), [])]) for srv in SERVERS}
            out.append(f"| {scenario} | {conc} | {label} | {fmt(vals['shardpop'], digits)} | "
                       f"{fmt(vals['dovecot'], digits)} | {ratio(vals['shardpop'], vals['dovecot'])} |")
        if scenario == "download" and limit:
            vals = {srv: median([r["result"]["mb_per_s"] for r in runs.get((scenario, conc, srv), [])]) for srv in SERVERS}
            pct = {srv: (v / limit * 100 if v is not None else None) for srv, v in vals.items()}
            out.append(f"| {scenario} | {conc} | % of loopback limit | {fmt(pct['shardpop'], 1)} | {fmt(pct['dovecot'], 1)} | |")
    for conns in sorted({n for (n, _) in idle}):
        vals, peaks = {}, {}
        for srv in SERVERS:
            rs = idle.get((conns, srv), [])
            vals[srv] = median([(r["pss_after_kib"] - r["pss_before_kib"]) / conns for r in rs if r["idle_peak"] >= conns])
            peaks[srv] = max((r["idle_peak"] for r in rs), default=None)
        out.append(f"| idle | {conns} | memory per idle connection, KiB (PSS) | {fmt(vals['shardpop'], 1)} | "
                   f"{fmt(vals['dovecot'], 1)} | {ratio(vals['shardpop'], vals['dovecot'])} |")
        if any(p is not None and p < conns for p in peaks.values()):
            out.append(f"| idle | {conns} | connections that reached idle | {fmt(peaks['shardpop'])} | {fmt(peaks['dovecot'])} | |")
    out.extend(floor_lines(runs))
    out.extend(big_lines([r for r in records if r["kind"] == "big"]))
    out.extend(targets(runs, idle, limit, floor_mb))
    out.append("")
    out.append("Every round of the headline metric (the table shows the median), to show the spread:")
    out.append("")
    for scenario, conc in keys:
        label, get, digits = metrics_for(scenario)[0]
        for srv in SERVERS:
            rs = sorted(runs.get((scenario, conc, srv), []), key=lambda r: r["round"])
            if rs:
                vals = ", ".join(fmt(get(r), digits) for r in rs)
                out.append(f"- {scenario} c={conc} {label}, {srv}: {vals}")
    out.append("")
    out.append("| server | runs | errors | of which [IN-USE] | body mismatches | unmapped UIDLs | of which matched by content | size mismatches | aborted |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for srv in SERVERS:
        rs = [r for k, v in runs.items() if k[2] == srv for r in v]
        if not rs:
            out.append(f"| {srv} | 0 | — | — | — | — | — | — | — |")
            continue
        tot = lambda key: sum(r["result"][key] for r in rs)
        in_use = sum(r["result"]["errors_by_kind"].get("in_use", 0) for r in rs)
        by_content = sum(r["result"].get("matched_by_content", 0) for r in rs)
        out.append(f"| {srv} | {len(rs)} | {tot('errors')} | {in_use} | {tot('mismatches')} | {tot('unmapped')} | {by_content} | "
                   f"{tot('size_mismatches')} | {tot('aborted')} |")
    print("\n".join(out))


if __name__ == "__main__":
    main()
