#!/usr/bin/env python3
"""Summarize a scripts/bench-uring run directory: medians per engine and
scenario with the io_uring/epoll ratio, and syscalls per session."""

import glob
import json
import os
import re
import statistics
import sys

out = sys.argv[1]


def load(path):
    with open(path) as f:
        return json.loads(f.read().strip().splitlines()[-1])


runs = {}
for path in sorted(glob.glob(os.path.join(out, "run-*.json"))):
    _, rnd, scenario, engine = os.path.basename(path)[:-5].split("-")
    r = load(path)
    cpu = os.path.join(out, f"cpu-{rnd}-{scenario}-{engine}.txt")
    ticks, hz = (int(x) for x in open(cpu).read().split())
    r["server_cpu_ms_per_session"] = ticks * 1000 / hz / r["sessions_total"]
    runs.setdefault((scenario, engine), []).append(r)

print("| scenario | engine | rounds (sessions/s each) | sessions/s | MB/s | server CPU ms/session | p50 session ms | p99 session ms | errors | mismatches |")
print("|---|---|---|---|---|---|---|---|---|---|")
med = {}
for scenario in ("login", "download"):
    for engine in ("epoll", "uring"):
        rs = runs.get((scenario, engine), [])
        if not rs:
            continue
        m = lambda f: statistics.median(f(r) for r in rs)
        sps = m(lambda r: r["sessions_per_s"])
        mbs = m(lambda r: r["mb_per_s"])
        p50 = m(lambda r: r["latency_us"]["session"]["p50"]) / 1000
        p99 = m(lambda r: r["latency_us"]["session"]["p99"]) / 1000
        errors = sum(r["errors"] for r in rs)
        mism = sum(r.get("mismatches", 0) + r.get("size_mismatches", 0) for r in rs)
        cpu = m(lambda r: r["server_cpu_ms_per_session"])
        med[(scenario, engine)] = (sps, mbs, p99, cpu)
        each = ", ".join(f'{r["sessions_per_s"]:.0f}' for r in rs)
        print(f"| {scenario} | {engine} | {len(rs)} ({each}) | {sps:.0f} | {mbs:.1f} | {cpu:.3f} | {p50:.2f} | {p99:.2f} | {errors} | {mism} |")
print()
for scenario in ("login", "download"):
    if (scenario, "epoll") in med and (scenario, "uring") in med:
        e, u = med[(scenario, "epoll")], med[(scenario, "uring")]
        mb = f"{u[1] / e[1]:.3f}" if e[1] else "n/a"
        print(f"{scenario}: io_uring/epoll sessions/s = {u[0] / e[0]:.3f}, MB/s = {mb}, server CPU/session = {u[3] / e[3]:.3f}, p99 = {u[2] / e[2]:.3f}")
print()

print("| scenario | engine | sessions | syscalls/session | context switches/session | CPU ms/session | top calls per session (strace -c -f) |")
print("|---|---|---|---|---|---|---|")
for scenario in ("login", "download"):
    for engine in ("epoll", "uring"):
        perf = os.path.join(out, f"perf-{scenario}-{engine}.txt")
        sysj = os.path.join(out, f"sys-{scenario}-{engine}.json")
        if not (os.path.exists(perf) and os.path.exists(sysj)):
            continue
        counts = {}
        for line in open(perf):
            f = line.strip().split(",")
            if len(f) > 2 and f[2] in ("raw_syscalls:sys_enter", "context-switches", "task-clock"):
                counts[f[2]] = float(f[0])
        sessions = load(sysj)["sessions_total"]
        top = ""
        st = os.path.join(out, f"strace-{scenario}-{engine}.txt")
        stj = os.path.join(out, f"strace-{scenario}-{engine}.json")
        if os.path.exists(st) and os.path.exists(stj):
            s_sessions = load(stj)["sessions_total"]
            calls = []
            for line in open(st):
                f = line.split()
                if len(f) >= 5 and re.match(r"^[\d.]+$", f[0]) and f[-1] != "total":
                    calls.append((int(f[3]), f[-1]))
            calls.sort(reverse=True)
            top = ", ".join(f"{name} {n / s_sessions:.2f}" for n, name in calls[:8])
            top += f" (over {s_sessions} sessions)"
        per = lambda k: counts.get(k, float("nan")) / sessions
        print(f"| {scenario} | {engine} | {sessions} | {per('raw_syscalls:sys_enter'):.2f} | {per('context-switches'):.2f} | {per('task-clock'):.3f} | {top} |")
