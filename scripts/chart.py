#!/usr/bin/env python3
"""Draws the latest result of each benchmark scenario in bench/results/ as one SVG bar chart
(no plotting library needed): median delivered packets per second per dataplane, with the
min-max range.

  chart.py [RESULTS_DIR] [OUT.svg]      (defaults: bench/results, docs/bench-chart.svg)
"""
import glob
import json
import os
import sys
from xml.sax.saxutils import escape

results_dir = sys.argv[1] if len(sys.argv) > 1 else "bench/results"
out = sys.argv[2] if len(sys.argv) > 2 else "docs/bench-chart.svg"

latest = {}
for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
    data = json.load(open(path))
    planes = data.get("dataplanes")
    if not planes:  # older format: vswitch plus one peer
        planes = {k: v for k, v in data.items() if isinstance(v, dict) and "median_pps" in v}
    if not planes:
        continue
    if data.get("offered_rate_pps"):  # a capped rate measures stalls, not throughput
        continue
    traffic = "".join([f", {data['frame_size']} B" if data.get("frame_size", 64) != 64 else "",
                       f", {data['flows']} flows" if data.get("flows", 1) != 1 else ""])
    key = f"{data['scenario']} ({data.get('sink', '?')} sink, {data.get('services', 1)} service(s){traffic}): {', '.join(planes)}"
    latest[key] = (os.path.basename(path), planes)

if not latest:
    sys.exit("chart.py: no results")

colors = ["#2b6cb0", "#a0aec0", "#dd6b20", "#38a169", "#805ad5"]
bar, gap, group_gap, left, top = 26, 6, 40, 260, 40
rows = sum(len(p) for _, p in latest.values())
height = top + rows * (bar + gap) + len(latest) * group_gap + 40
width = 900
peak = max(max(v["runs_pps"]) for _, p in latest.values() for v in p.values())
scale = (width - left - 140) / peak
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
       f'<text x="10" y="22" font-size="15" font-weight="bold">Delivered packets per second (median of runs, bar: min-max), 64-byte frames unless noted</text>']
y = top
for key, (source, planes) in latest.items():
    svg.append(f'<text x="10" y="{y + 14}" font-weight="bold">{escape(key)}</text>')
    svg.append(f'<text x="10" y="{y + 28}" fill="#718096" font-size="10">{escape(source)}</text>')
    y += 34
    for i, (label, v) in enumerate(planes.items()):
        runs = v["runs_pps"]
        med = v["median_pps"]
        svg.append(f'<text x="{left - 8}" y="{y + bar * 0.7}" text-anchor="end">{escape(label)}</text>')
        svg.append(f'<rect x="{left}" y="{y}" width="{med * scale:.1f}" height="{bar}" fill="{colors[i % len(colors)]}"/>')
        lo, hi = min(runs) * scale + left, max(runs) * scale + left
        mid = y + bar / 2
        svg.append(f'<line x1="{lo:.1f}" y1="{mid}" x2="{hi:.1f}" y2="{mid}" stroke="black"/>')
        svg.append(f'<text x="{max(hi, left + med * scale) + 8:.1f}" y="{y + bar * 0.7}">{med / 1e6:.2f} Mpps</text>')
        y += bar + gap
    y += group_gap - 34 + 10
svg.append("</svg>")
open(out, "w").write("\n".join(svg) + "\n")
print(f"chart: {out}")
