#!/usr/bin/env python3
"""The load harness's report: reads what benches/load/run.sh left in its raw
directory and writes load.md and load.json.

Usage: report.py RAW OUT RUNS DURATION CONNS WRK_THREADS SETUP...
"""
import json
import os
import re
import statistics
import sys

raw, out, runs, duration, conns, threads = sys.argv[1:7]
runs = int(runs)
# RUNS=0: no wrk rounds, only what ALLOCS=1 and INSNS=1 measured.
setups = sys.argv[7:] if runs > 0 else []
tick_us = 1e6 / os.sysconf("SC_CLK_TCK")

LABELS = {
    "direct": "direct to the upstream (untapped path)",
    "nginx": "nginx reverse proxy, untapped path",
    "nginx-tapped": "nginx reverse proxy, tapped path",
    "pingora-bare": "bare Pingora proxy, untapped path",
    "pingora-bare-tapped": "bare Pingora proxy, tapped path",
    "taphook-plain": "taphook, no routes",
    "taphook-untapped": "taphook, shipped rules, untapped path",
    "taphook-tapped": "taphook, shipped rules, tapped path (an event per request)",
}
GOALS = [
    # (what, setup, field, against, bound, kind)
    ("untapped CPU per request", "taphook-untapped", "cpu_us", "nginx", 1.2, "max"),
    ("untapped requests/s", "taphook-untapped", "rps", "nginx", 0.9, "min"),
    ("tapped requests/s, every event delivered", "taphook-tapped", "rps", "nginx-tapped", 0.8, "min"),
    # Issue 26: against the bare Pingora proxy, the engine's own floor.
    ("untapped CPU per request, no routes", "taphook-plain", "cpu_us", "pingora-bare", 1.05, "max"),
    ("tapped requests/s, every event delivered", "taphook-tapped", "rps", "pingora-bare-tapped", 0.8, "min"),
    ("tapped p99", "taphook-tapped", "p99", "pingora-bare-tapped", 1.5, "max"),
]


def path(setup):
    return os.path.join(raw, setup.replace("/", "_"))


def ms(v):
    n, unit = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000}[unit]


def one_run(setup, run):
    f = f"{path(setup)}-{run}"
    text = open(f + ".wrk").read()
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    cpu, upstream_cpu = map(int, open(f + ".cpu").read().split())
    row = {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
        "p50": ms(re.search(r"\s50%\s+(\S+)", text).group(1)),
        "p99": ms(re.search(r"\s99%\s+(\S+)", text).group(1)),
        "cpu_us": cpu * tick_us / requests,
        "upstream_cpu_us": upstream_cpu * tick_us / requests,
        "errors": 0,
    }
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = re.search(r"Socket errors: (.*)", text)
    if errors or socket_errors:
        row["errors"] = int(errors.group(1)) if errors else 0
        print(f"warning: {setup} run {run}: {text.strip().splitlines()[-3:]}")
    if os.path.exists(f + ".live"):
        row["live_eps"] = int(open(f + ".live").read()) / float(duration)
    if os.path.exists(f + ".drain"):
        drain, ticks, accepted = open(f + ".drain").read().split()
        row["drain_s"] = float(drain)
        row["events"] = int(accepted)
        row["cpu_per_event_us"] = int(ticks) * tick_us / max(int(accepted), 1)
    return row


res = {}
for s in setups:
    rows = [one_run(s, r) for r in range(1, runs + 1)]
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    med["runs"] = rows
    res[s] = med


def kind(s):
    return s.split("/")[-1]


def build(s):
    return s.split("/")[0] if "/" in s else None


lines = [
    f"wrk -t{threads} -c{conns} -d{duration}s, median of {runs} interleaved runs; "
    "CPU per request is the proxy process's (user + system, from /proc)",
    "",
    "| setup | build | requests/s | p50 | p99 | CPU per request | requests/s / nginx | CPU / nginx |",
    "| --- | --- | --- | --- | --- | --- | --- | --- |",
]
for s in setups:
    r = res[s]
    ref = res.get("nginx-tapped" if kind(s) == "taphook-tapped" else "nginx")
    cpu = "-" if s == "direct" else f"{r['cpu_us']:.1f} µs"
    rps_ratio = f"{r['rps'] / ref['rps']:.2f}×" if ref and s != "direct" else "-"
    cpu_ratio = f"{r['cpu_us'] / ref['cpu_us']:.2f}×" if ref and s != "direct" else "-"
    lines.append(
        f"| {LABELS[kind(s)]} | {build(s) or '-'} | {r['rps']:,.0f} | {r['p50']:.2f} ms | "
        f"{r['p99']:.2f} ms | {cpu} | {rps_ratio} | {cpu_ratio} |"
    )

events = {}
for b in ("new", "baseline"):
    f = os.path.join(raw, f"{b}-events")
    if os.path.exists(f):
        derived, accepted, delivered, dropped, duplicate = map(int, open(f).read().split())
        events[b] = dict(derived=derived, accepted=accepted, delivered=delivered, dropped=dropped, duplicate=duplicate)

lines += ["", "Goals (issues 15 and 26):", ""]
goals = []
for what, setup, field, against, bound, how in GOALS:
    for b in ("new", "baseline"):
        s = f"{b}/{setup}"
        if s not in res or against not in res:
            continue
        ratio = res[s][field] / res[against][field]
        met = ratio <= bound if how == "max" else ratio >= bound
        note = ""
        if setup == "taphook-tapped" and b in events:
            e = events[b]
            all_delivered = e["delivered"] >= e["accepted"] and e["dropped"] == 0
            met = met and all_delivered
            note = (f"; {e['accepted']:,} events accepted, {e['delivered']:,} delivered, "
                    f"{e['dropped']:,} dropped")
        goals.append(dict(goal=what, build=b, ratio=ratio, bound=bound, met=met))
        sign = "≤" if how == "max" else "≥"
        lines.append(f"- {what} ({b}): {ratio:.2f}× {against} (goal {sign} {bound}×): "
                     f"{'met' if met else 'missed'}{note}")

if any(build(s) == "baseline" for s in setups):
    lines += ["", "new / baseline, same run:", ""]
    for s in setups:
        if build(s) != "new" or f"baseline/{kind(s)}" not in res:
            continue
        n, o = res[s], res[f"baseline/{kind(s)}"]
        lines.append(f"- {LABELS[kind(s)]}: requests/s {n['rps'] / o['rps']:.2f}×, "
                     f"CPU per request {n['cpu_us'] / o['cpu_us']:.2f}×")

for s in setups:
    if kind(s) == "taphook-tapped" and "drain_s" in res[s]:
        r = res[s]
        lines.append(
            f"- {s}: {r['events']:,.0f} events a run (median), drained {r['drain_s']:.1f} s after the "
            f"load; {r['cpu_per_event_us']:.0f} µs of CPU per event, proxy to delivery, drain included"
        )

ceiling_file = os.path.join(raw, "receiver-ceiling.wrk")
if os.path.exists(ceiling_file):
    ceiling = float(re.search(r"Requests/sec:\s+([\d.]+)", open(ceiling_file).read()).group(1))
    lines += ["", f"Delivery while the load runs, against the receiver's ceiling ({ceiling:,.0f} requests/s, wrk POSTing an event straight to it):", ""]
    for s in setups:
        if kind(s) == "taphook-tapped" and "live_eps" in res[s]:
            r = res[s]
            lines.append(f"- {s}: {r['live_eps']:,.0f} events/s delivered during the load, "
                         f"{r['live_eps'] / ceiling:.1%} of the ceiling (goal ≥ 25%)")

# System calls per request.
syscalls = {}
for s in setups:
    f = path(s)
    if not os.path.exists(f + ".strace"):
        continue
    text = open(f + ".strace-wrk").read()
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    calls = {}
    for line in open(f + ".strace"):
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", line)
        if m and m.group(2) != "total":
            calls[m.group(2)] = int(m.group(1)) / requests
    syscalls[s] = calls
if syscalls:
    lines += ["", "System calls per request (strace -c -f, wrk -t1 -c8 -d3s; tapped: until delivered):", "",
              "| setup | build | total | the most frequent |", "| --- | --- | --- | --- |"]
    for s, calls in syscalls.items():
        top = sorted(calls.items(), key=lambda kv: -kv[1])
        shown = ", ".join(f"{name} {n:.2f}" for name, n in top if n >= 0.01)
        lines.append(f"| {LABELS[kind(s)]} | {build(s) or '-'} | {sum(calls.values()):.2f} | {shown} |")

# Allocations and instructions per request: a run with load minus one without.
def per_request(tool):
    found = {}
    for b in ("new", "baseline"):
        for t in ("taphook-plain", "taphook-untapped", "taphook-tapped"):
            fl, fi = (os.path.join(raw, f"{tool}-{b}-{t}-{x}") for x in ("load", "idle"))
            if os.path.exists(fl) and os.path.exists(fi):
                (req, cost), (_, idle) = (open(x).read().split() for x in (fl, fi))
                found[f"{b}/{t}"] = (int(cost) - int(idle)) / max(int(req), 1)
    return found


allocs, insns = per_request("alloc"), per_request("insns")
for title, found, fmt in (
    ("Heap allocations per request (heaptrack, --features system-alloc", allocs, "{:.1f}"),
    ("Instructions per request (callgrind, every thread", insns, "{:,.0f}"),
):
    if not found:
        continue
    lines += ["", title + "; a run with load minus one without; "
              "tapped includes the event's derive, store and delivery):", ""]
    for t in ("taphook-plain", "taphook-untapped", "taphook-tapped"):
        n, o = found.get(f"new/{t}"), found.get(f"baseline/{t}")
        if n is None:
            continue
        ratio = f" (baseline {fmt.format(o)}, {n / o:.2f}×)" if o else ""
        lines.append(f"- {LABELS[t]}: {fmt.format(n)}{ratio}")

summary = dict(targets=res, goals=goals, events=events, syscalls=syscalls, allocations=allocs, instructions=insns,
               duration=duration, connections=conns, runs=runs, wrk_threads=threads)
open(os.path.join(out, "load.md"), "w").write("\n".join(lines) + "\n")
json.dump(summary, open(os.path.join(out, "load.json"), "w"), indent=1)
print("\n".join(lines))
