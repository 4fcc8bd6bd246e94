#!/usr/bin/env python3
"""RFC 2544 / FD.io CSIT-style search through a switch that is already running.

Binary search of the offered rate for NDR (no loss) and PDR (loss at most 0.5 %), then latency
at 10 %, 50 % and 90 % of PDR, with vswitch-pktgen: `send --stamp` in the generator namespace,
`recv` (AF_XDP, sequence numbers, send times and the time of arrival its XDP program writes) in
the sink namespace, pinned to --core and --recv-core (default: the next core when the machine
has one, else --core); keep both off the switch's worker core: a receiver scheduled there
preempts a busy-polling worker for a whole scheduler slice, milliseconds. Latency is from the
send stamp to the arrival at the sink interface. In the latency trials the generator sends at
most --latency-max-burst frames at once (default 16) when it catches up after losing its core:
a 256-frame catch-up burst made its last frames wait for the other 255 in the switch.

  rfc2544.py --gen-ns NS --sink-ns NS --src-mac M --dst-mac M --dst-ip IP [--dst-port P]
             [--gen-dev gen0] [--sink-dev sink0] [--trial SECS] [--precision FRACTION]
             [--core C] [--recv-core C] [--bin DIR] [--label NAME] [--switch-ns NS]
             [--switch-ctl SOCKET] [--latency-max-burst N]

Prints one line per trial (with the drop and error counters that grew during it: the
receiver's own socket, the veths' ethtool counters; --switch-ns adds the switch's veth ends;
--switch-ctl, a vswitch's control socket, adds its ports' drops by reason and what took its
workers' cores: their wait, and what their cores' softirq threads ran and waited) and, last,
one JSON object.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

PDR_LOSS = 0.005


def loss_counters(a):
    """The veths' drop and error counters (ethtool -S), by "device counter"."""
    devices = [(a.gen_ns, a.gen_dev), (a.sink_ns, a.sink_dev)]
    if a.switch_ns:
        devices += [(a.switch_ns, "vgen"), (a.switch_ns, "vsink")]
    counters = {}
    for ns, dev in devices:
        out = subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-S", dev],
                             capture_output=True, text=True).stdout
        for line in out.splitlines()[1:]:
            name, _, value = line.partition(":")
            name, value = name.strip(), value.strip()
            if value.isdigit() and any(w in name for w in ("drop", "err", "full")):
                counters[f"{dev} {name}"] = int(value)
        # The interface's own drops: a veth whose peer's ring is full drops what it transmits
        # there (tx dropped), which ethtool -S does not show.
        out = subprocess.run(["ip", "-n", ns, "-j", "-s", "link", "show", "dev", dev],
                             capture_output=True, text=True).stdout
        for link in json.loads(out or "[]"):
            for way in ("rx", "tx"):
                counters[f"{dev} {way}_dropped"] = link.get("stats64", {}).get(way, {}).get("dropped", 0)
    return counters


WORKER_COUNTERS = ("waited_for_core_us", "core_softirq_thread_us", "core_softirq_thread_waited_us",
              "preemptions", "passes", "passes_over_20us", "passes_over_100us", "kicks_over_20us",
              "kicks_over_100us", "full_batches")


def switch_stats(a):
    """From the switch's control socket ({}, {} without --switch-ctl): its workers' core-share
    counters summed over workers, and each port's drop counters by "switch PORT counter" (the
    kernel's own for its sockets among them: an empty fill ring, a full receive ring)."""
    if not a.switch_ctl:
        return {}, {}
    out = subprocess.run([f"{a.bin}/vswitch", "ctl", "--socket", a.switch_ctl, "show", "stats", "--json"],
                         capture_output=True, text=True).stdout
    stats = json.loads(out or "{}")
    workers = stats.get("workers", [])
    share = {k: sum(w.get(k, 0) for w in workers) for k in WORKER_COUNTERS}
    drops = {}
    for port in stats.get("ports", []):
        counters = dict(port.get("drops", {}))
        counters["kernel_fill_ring_empty"] = port.get("kernel_fill_ring_empty", 0)
        for k, v in counters.items():
            drops[f"switch {port.get('name')} {k}"] = v
    return share, drops


def value(line, key, default=None):
    """`key=NUMBER` from a vswitch-pktgen result line (exits when it is missing and there is
    no default)."""
    m = re.search(rf"(?:^|\s){key}=([0-9.]+)", line)
    if m is None and default is None:
        sys.exit(f"rfc2544: no {key} in {line!r}")
    return float(m.group(1)) if m else default


def trial(a, rate, max_burst=None):
    """One trial at `rate` pps (0: as fast as possible; `max_burst`: the most frames the
    generator sends at once, catching up): (sent, received, lost, seconds, latency dict)."""
    share_before, before = switch_stats(a)
    before.update(loss_counters(a))
    recv = subprocess.Popen(
        ["ip", "netns", "exec", a.sink_ns, f"{a.bin}/vswitch-pktgen", "recv", "--dev", a.sink_dev,
         "--port", str(a.dst_port), "--duration", str(a.trial + 1.5), "--core", str(a.recv_core)],
        stdout=subprocess.PIPE, text=True)
    line = recv.stdout.readline()
    if line.strip() != "ready":
        recv.kill()
        sys.exit(f"rfc2544: the receiver did not start: {line!r}")
    time.sleep(0.2)
    send = subprocess.run(
        ["ip", "netns", "exec", a.gen_ns, f"{a.bin}/vswitch-pktgen", "send", "--dev", a.gen_dev,
         "--stamp", "--core", str(a.core), "--src-mac", a.src_mac, "--dst-mac", a.dst_mac,
         "--src-ip", a.src_ip, "--dst-ip", a.dst_ip, "--dst-port", str(a.dst_port),
         "--rate", str(int(rate)), "--duration", str(a.trial)]
        + (["--max-burst", str(max_burst)] if max_burst else []),
        capture_output=True, text=True, timeout=a.trial + 30)
    out, _ = recv.communicate(timeout=a.trial + 30)
    if "result:" not in send.stdout:
        recv.kill()
        sys.exit(f"rfc2544: the sender said no result (exit {send.returncode}): {send.stderr.strip()!r}")
    sent_line = send.stdout.strip().splitlines()[-1]
    sent, seconds = int(value(sent_line, "sent")), value(sent_line, "seconds")
    gen_calls, gen_largest = int(value(sent_line, "calls")), int(value(sent_line, "largest_call"))
    result = out.strip().splitlines()[-1]
    field = lambda k, default=None: value(result, k, default)
    received = int(field("received")) - int(field("unstamped"))
    latency = {q: field(key) for q, key in (("p50", "latency_us_p50"), ("p99", "p99"),
                                            ("p999", "p999"), ("max", "max"))}
    loss = max(0, sent - received)
    share_after, after = switch_stats(a)
    after.update(loss_counters(a))
    share = {k: v - share_before.get(k, 0) for k, v in share_after.items()}
    grew = [f"{k} +{v - before.get(k, 0)}" for k, v in after.items() if v != before.get(k, 0)]
    grew += [f"receiver {k} +{int(field('receiver_' + k, 0))}" for k in ("dropped", "ring_full", "fill_empty")
             if field("receiver_" + k, 0)]
    print(f"  trial {rate:>12,.0f} pps offered ({sent / seconds:,.0f} sent/s): received {received:,} "
          f"of {sent:,}, loss {100 * loss / max(sent, 1):.3f} %, reordered {int(field('reordered'))}, "
          f"p50 {latency['p50']} us p99 {latency['p99']} us; generator {gen_calls:,} calls, at most "
          f"{gen_largest} frames at once"
          + (f"; workers waited {share['waited_for_core_us']} us for their cores, ksoftirqd ran "
             f"{share['core_softirq_thread_us']} us and waited {share['core_softirq_thread_waited_us']} us, "
             f"{share['preemptions']} preemptions; passes over 20/100 us {share['passes_over_20us']}/"
             f"{share['passes_over_100us']} of {share['passes']}, kicks over 20/100 us "
             f"{share['kicks_over_20us']}/{share['kicks_over_100us']}, full batches "
             f"{share['full_batches']}" if share else "")
          + (f"; grew: {', '.join(grew)}" if loss and grew else ""), flush=True)
    return sent, received, loss, seconds, latency


def search(a, hi, max_loss):
    """Highest rate in (0, hi] whose loss ratio is at most max_loss, within a.precision of hi;
    0 when even 1,000 pps loses more."""
    lo, best, rate = 0.0, None, hi
    for _ in range(12):
        sent, _, loss, _, _ = trial(a, rate)
        if loss <= max_loss * sent:
            lo = best = rate
        else:
            hi = rate
        if best is not None and hi - lo <= a.precision * hi:
            break
        rate = (lo + hi) / 2
        if rate < 1000:
            break
    return best or 0.0


def main():
    p = argparse.ArgumentParser()
    for name in ("--gen-ns", "--sink-ns", "--src-mac", "--dst-mac", "--dst-ip"):
        p.add_argument(name, required=True)
    p.add_argument("--src-ip", default="10.244.1.4")
    p.add_argument("--dst-port", type=int, default=9)
    p.add_argument("--gen-dev", default="gen0")
    p.add_argument("--sink-dev", default="sink0")
    p.add_argument("--trial", type=float, default=2.0)
    p.add_argument("--precision", type=float, default=0.03)
    p.add_argument("--core", type=int, default=1)
    p.add_argument("--recv-core", type=int, default=None)
    p.add_argument("--bin", default="target/release")
    p.add_argument("--label", default="switch")
    p.add_argument("--switch-ns", default=None)
    p.add_argument("--switch-ctl", default=None)
    p.add_argument("--latency-max-burst", type=int, default=16)
    a = p.parse_args()
    if a.latency_max_burst < 1:
        p.error("--latency-max-burst must be at least 1")
    if a.recv_core is None:
        a.recv_core = a.core + 1 if a.core + 1 < os.cpu_count() else a.core

    print(f"== {a.label}: maximum rate (generator as fast as it goes)", flush=True)
    sent, received, _, seconds, _ = trial(a, 0)
    top = received / seconds
    print(f"== {a.label}: NDR search below {top * 1.1:,.0f} pps", flush=True)
    ndr = search(a, top * 1.1, 0.0)
    print(f"== {a.label}: PDR search (loss <= {100 * PDR_LOSS} %)", flush=True)
    pdr = search(a, top * 1.1, PDR_LOSS)
    lat = {}
    for share in (0.1, 0.5, 0.9):
        if pdr * share < 1:
            continue
        print(f"== {a.label}: latency at {int(share * 100)} % of PDR", flush=True)
        sent, _, _, seconds, latency = trial(a, pdr * share, a.latency_max_burst)
        # What was sent: a generator that lost its core sends less than the rate, not a burst.
        lat[f"{int(share * 100)}%"] = dict(latency, sent_pps=round(sent / seconds))
        if sent / seconds < 0.98 * pdr * share:
            print(f"   note: the generator sent {sent / seconds:,.0f} pps of {pdr * share:,.0f} "
                  "(it lost its core; the rest was forgone, not sent in a burst)", flush=True)
    result = {"label": a.label, "max_delivered_pps": round(top), "ndr_pps": round(ndr),
              "pdr_pps": round(pdr), "pdr_loss": PDR_LOSS, "trial_s": a.trial,
              "precision": a.precision, "latency_us_at_pdr_share": lat,
              "latency": "send stamp to arrival at the sink interface (its XDP hook); the latency "
                         f"trials' generator sends at most {a.latency_max_burst} frames at once"}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
