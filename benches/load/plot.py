#!/usr/bin/env python3
"""Plots for docs/BENCHMARKS.md from target/bench/load.json and
target/bench/delivery.json (written by `make bench`)."""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

root = os.path.join(os.path.dirname(__file__), "..", "..")
bench = os.path.join(root, "target", "bench")
img = os.path.join(root, "docs", "img")
os.makedirs(img, exist_ok=True)

labels = {
    "direct": "direct",
    "nginx": "nginx",
    "new/taphook-plain": "taphook\nno routes",
    "new/taphook-untapped": "taphook\nuntapped",
    "nginx-tapped": "nginx\ntapped",
    "new/taphook-tapped": "taphook\ntapped",
}
load_path = os.path.join(bench, "load.json")
if os.path.exists(load_path):
    load = json.load(open(load_path))
    targets = [t for t in labels if t in load["targets"]]
    colors = {"direct": "#888", "nginx": "#4a7", "nginx-tapped": "#4a7",
              "new/taphook-plain": "#69c", "new/taphook-untapped": "#69c", "new/taphook-tapped": "#c64"}
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    series = [
        ("requests/s", "rps", 1),
        ("p99 latency (ms)", "p99", 1),
        ("proxy CPU per request (µs)", "cpu_us", 1),
    ]
    for ax, (title, key, _) in zip(axes, series):
        names = [t for t in targets if not (key == "cpu_us" and t == "direct")]
        values = [load["targets"][t][key] for t in names]
        bars = ax.bar([labels[t] for t in names], values, color=[colors[t] for t in names])
        ax.set_title(title)
        if key == "p99":
            ax.set_yscale("log")
            ax.set_title(title + ", log scale")
        for b, v in zip(bars, values):
            ax.annotate(f"{v:,.0f}" if v >= 10 else f"{v:.1f}", (b.get_x() + b.get_width() / 2, v),
                        ha="center", va="bottom", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"wrk -t{load['wrk_threads']} -c{load['connections']} -d{load['duration']}s, median of {load['runs']} runs, 2 shared cores")
    fig.tight_layout()
    fig.savefig(os.path.join(img, "load.png"), dpi=110)
    print("wrote docs/img/load.png")

delivery_path = os.path.join(bench, "delivery.json")
if os.path.exists(delivery_path):
    d = json.load(open(delivery_path))
    cdf = d["latency_ms"]["cdf"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
    ax1.plot([c[1] for c in cdf], [c[0] * 100 for c in cdf], color="#c64")
    ax1.axvline(10, color="#999", linestyle="--", linewidth=1)
    ax1.text(10, 5, " target p99 10 ms", fontsize=8, color="#666")
    ax1.set_xscale("log")
    ax1.set_xlabel("upstream response → receiver arrival (ms, log)")
    ax1.set_ylabel("% of events")
    ax1.set_title(f"end-to-end latency at {d['rate']} events/s")
    names = ["receiver ceiling\n(wrk POSTs)", "taphook\ndelivered"]
    values = [d["receiver_ceiling"] or 0, d["delivered_per_s"]]
    bars = ax2.bar(names, values, color=["#888", "#c64"])
    for b, v in zip(bars, values):
        ax2.annotate(f"{v:,.0f}/s", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    ax2.set_title(f"delivery throughput, {d['events']:,} events")
    fig.tight_layout()
    fig.savefig(os.path.join(img, "delivery.png"), dpi=110)
    print("wrote docs/img/delivery.png")
if not os.path.exists(load_path) and not os.path.exists(delivery_path):
    sys.exit("no benchmark results in target/bench: run make bench")
