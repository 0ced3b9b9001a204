#!/usr/bin/env python3
"""procstat: CPU seconds and memory of server process trees, from /proc.

  procstat.py cpu PID...   CPU seconds (user+system) of each PID's whole tree:
                           every live descendant's utime+stime, plus each
                           root's own time and cutime+cstime (children that
                           exited and were reaped: Dovecot's finished processes)
  procstat.py pss PID...   Proportional set size (KiB) summed over the trees,
                           from /proc/P/smaps_rollup. PSS splits shared pages
                           among the processes that map them, so a
                           multi-process server (Dovecot) is not over-counted
                           and a one-process server (shardpop) gets its RSS.
  procstat.py rss PID...   Resident set size (KiB) summed the same way.
  procstat.py tree PID...  The PIDs counted, one per line.
  procstat.py machine      CPU seconds the whole machine spent busy (user,
                           nice, system, irq, softirq; not idle, iowait or
                           steal), then those of softirq alone, from
                           /proc/stat. On loopback a sender's kernel also
                           runs the receiver's delivery, charged to whichever
                           task was on the CPU; the machine's total does not
                           depend on who was charged.

The times are clock ticks of USER_HZ (os.sysconf('SC_CLK_TCK')).
"""
import os
import sys

HZ = os.sysconf("SC_CLK_TCK")


def stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    return data[data.rindex(")") + 2:].split()  # field 3 (state) onwards


def tree(roots):
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(stat_fields(entry)[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    seen, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo += children.get(pid, [])
    return seen


def cpu(roots):
    total = 0
    for pid in tree(roots):
        try:
            f = stat_fields(pid)
        except OSError:
            continue
        total += int(f[11]) + int(f[12])  # utime, stime
        if pid in roots:
            total += int(f[13]) + int(f[14])  # cutime, cstime: reaped children
    return total / HZ


def machine():
    with open("/proc/stat") as f:
        ticks = [int(t) for t in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = ticks[:7]
    return (user + nice + system + irq + softirq) / HZ, softirq / HZ


def memory(roots, key):
    total = 0
    for pid in tree(roots):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def main():
    what, roots = sys.argv[1], [int(p) for p in sys.argv[2:]]
    if what == "cpu":
        print(f"{cpu(roots):.2f}")
    elif what == "pss":
        print(memory(roots, "Pss"))
    elif what == "rss":
        print(memory(roots, "Rss"))
    elif what == "machine":
        print("%.2f %.2f" % machine())
    elif what == "tree":
        print("\n".join(map(str, tree(roots))))
    else:
        sys.exit(f"unknown: {what}")


if __name__ == "__main__":
    main()
