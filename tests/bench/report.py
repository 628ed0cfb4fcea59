#!/usr/bin/env python3
"""Turn the loadgen results of tests/bench/run.sh into docs/benchmarks.md,
docs/bench-results.json and the gnuplot input of docs/benchmarks.png.

Called by run.sh; reads one JSON record per loadgen run (scenario, server,
variant, loadgen arguments, exit status, error, the loadgen's --json object).
"""
import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys

import sections

SERVERS = [("tidings", "tidings"), ("uws", "uWS.js"), ("ws", "node ws")]
SAT_PCT = 85.0  # loadgen CPU above this (% of one core): the loadgen is the limit
COLORS = {"tidings": "0x1f77b4", "uws": "0xff7f0e", "ws": "0x2ca02c"}


def sh(*cmd, cwd=None):
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=20)
        return (out.stdout or out.stderr).strip()
    except Exception:  # noqa: BLE001 - informational only
        return "?"


def machine(root):
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            kb = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1))
            mem = "%.1f GiB" % (kb / 1048576)
    except (OSError, AttributeError):
        pass
    distro = "?"
    try:
        with open("/etc/os-release") as f:
            m = re.search(r'^PRETTY_NAME="?([^"\n]*)', f.read(), re.M)
            distro = m.group(1) if m else "?"
    except OSError:
        pass

    def pkgver(name):
        try:
            with open(os.path.join(root, "tests/bench/servers/node_modules", name, "package.json")) as f:
                return json.load(f)["version"]
        except (OSError, KeyError, ValueError):
            return "?"

    redis = sh("redis-server", "--version")
    m = re.search(r"v=(\S+)", redis)
    commit = sh("git", "-C", root, "rev-parse", "--short", "HEAD")
    dirty = sh("git", "-C", root, "status", "--porcelain", "--untracked-files=no")
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "kernel": "%s %s" % (platform.system(), platform.release()),
        "distro": distro,
        "node": sh("node", "--version"),
        "uws": pkgver("@trufflesuite/uws-js-unofficial"),
        "ws": pkgver("ws"),
        "redis": m.group(1) if m else redis,
        "tidings": sh(os.path.join(root, "bin/tidings"), "--version"),
        "cc": sh("cc", "--version").splitlines()[0] if sh("cc", "--version") else "?",
        "commit": commit + (" (with uncommitted changes)" if dirty and dirty != "?" else ""),
        "open_files": sh("sh", "-c", "ulimit -n"),
    }


# ------------------------------------------------------------------ formatting
def num(v, digits=3):
    """A number with about `digits` significant digits, thousands separated."""
    if v is None:
        return "—"
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 10 ** digits:
        return "{:,.0f}".format(v)
    decimals = max(0, digits - 1 - int(__import__("math").floor(__import__("math").log10(a))))
    return "{:,.{}f}".format(v, decimals)


def rate(v):
    if v is None:
        return "—"
    if v >= 1e6:
        return "%.2f M" % (v / 1e6)
    if v >= 1e3:
        return "%.1f k" % (v / 1e3)
    return "%.0f" % v


def mib(v):
    return "—" if v is None else "%.1f" % (v / 1048576)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return "%.2f×" % (a / b)


PLACEMENT_TEXT = {
    "shared": "nothing pinned: the loadgen and the server processes share all cores",
    "split": "the loadgen pinned to CPU 0, every server process (tidings' master, workers and "
             "redis-server; the node process) to the other CPUs, with taskset; tidings' default "
             "is then one worker per CPU it may run on (one on a 2-core machine)",
}


def each_placement(w, results):
    """The placements of the run, main one first, each as (name, its results),
    with a heading written before each when there are several."""
    for p in [results.placement] + results.others():
        if len(results.placements) > 1:
            w("Placement `%s` (%s):" % (p, PLACEMENT_TEXT.get(p, p)))
            w("")
        yield p, results.at(p)


def placement_of(rec):
    return rec.get("placement") or "shared"


class Results:
    """The records of one CPU placement (run.sh BENCH_PLACEMENT), looked up by
    (scenario, server, variant); `at` gives another placement's view."""

    def __init__(self, records, placement=None):
        self.all = records
        present = []
        for r in records:
            if placement_of(r) not in present:
                present.append(placement_of(r))
        self.placements = present or ["shared"]
        self.placement = placement or ("shared" if "shared" in self.placements else self.placements[0])
        self.records = [r for r in records if placement_of(r) == self.placement]
        self.by = {(r["scenario"], r["server"], r["variant"]): r for r in self.records}

    def at(self, placement):
        return Results(self.all, placement)

    def others(self):
        return [p for p in self.placements if p != self.placement]

    def rec(self, scen, server, variant):
        r = self.by.get((scen, server, variant))
        if r is None and variant and "." not in variant:
            # scenario 3 runs each load several times (variants 20rps.1, 20rps.2,
            # ...): where one value stands for them (the chart, section 8), it is
            # the run with the median p99
            ok = [x for x in self.runs(scen, server, variant) if x and x.get("result") and not x.get("error")]
            if ok:
                ok.sort(key=lambda x: x["result"].get("latency_p99_ms") or 0)
                r = ok[(len(ok) - 1) // 2]
        return r

    def runs(self, scen, server, prefix):
        """the records of the repeated runs PREFIX.1, PREFIX.2, ... in order
        (None where a run number is missing)"""
        nums = sorted(int(v.rsplit(".", 1)[1]) for (sc, sv, v) in self.by
                      if sc == scen and sv == server and v.startswith(prefix + ".") and v.rsplit(".", 1)[1].isdigit())
        return [self.by.get((scen, server, "%s.%d" % (prefix, n))) for n in range(1, (nums[-1] if nums else 0) + 1)]

    def res(self, scen, server, variant):
        r = self.rec(scen, server, variant)
        return r["result"] if r and r["result"] and not r.get("error") else None


def cpu_per_delivery_us(r):
    if not r or r.get("server_cpu_pct") is None or not r.get("deliveries_per_s"):
        return None
    return r["server_cpu_pct"] / 100.0 / r["deliveries_per_s"] * 1e6


def lost_cell(r):
    if not r:
        return "—"
    lost, exp = r.get("lost") or 0, r.get("expected") or 0
    s = "{:,}".format(lost)
    if lost and exp:
        s += " (%.3f%%)" % (100.0 * lost / exp)
    if r.get("subs_with_loss"):
        s += ", %d subs" % r["subs_with_loss"]
    if r.get("duplicated"):
        s += ", %d dup" % r["duplicated"]
    return s


def conns_cell(r):
    if not r:
        return "—"
    s = "{:,}".format(r.get("conn_established") or 0)
    extra = []
    if r.get("conn_failed"):
        extra.append("%d failed" % r["conn_failed"])
    if r.get("conn_dropped"):
        extra.append("%d dropped" % r["conn_dropped"])
    return s + (" (" + ", ".join(extra) + ")" if extra else "")


def lg_cpu_cell(r):
    if not r or r.get("cpu_pct") is None:
        return "—"
    s = "%.0f%%" % r["cpu_pct"]
    return "**%s ⚠**" % s if r["cpu_pct"] >= SAT_PCT else s


def cell_or_error(results, scen, server, variant, fn):
    rec = results.rec(scen, server, variant)
    if rec is None:
        return "not run"
    if rec.get("error") or not rec.get("result"):
        return "failed: " + (rec.get("error") or "no result")
    return fn(rec["result"])


# (label, cell function, value for ratios or None)
PUBSUB_ROWS = [
    ("deliveries/s", lambda r: rate(r.get("deliveries_per_s")), lambda r: r.get("deliveries_per_s")),
    ("publishes/s (acked)", lambda r: rate(r.get("published_per_s")), lambda r: r.get("published_per_s")),
    ("lost", lost_cell, None),
    ("latency p50 (ms)", lambda r: num(r.get("latency_p50_ms")), lambda r: r.get("latency_p50_ms")),
    ("latency p99 (ms)", lambda r: num(r.get("latency_p99_ms")), lambda r: r.get("latency_p99_ms")),
    ("latency p99.9 (ms)", lambda r: num(r.get("latency_p999_ms")), lambda r: r.get("latency_p999_ms")),
    ("latency max (ms)", lambda r: num(r.get("latency_max_ms")), lambda r: r.get("latency_max_ms")),
    ("server CPU (% of a core)", lambda r: num(r.get("server_cpu_pct")), lambda r: r.get("server_cpu_pct")),
    ("server CPU per delivery (µs)", lambda r: num(cpu_per_delivery_us(r)), cpu_per_delivery_us),
    ("server RSS after setup (MiB)", lambda r: mib(r.get("server_rss_after")), lambda r: r.get("server_rss_after")),
    ("loadgen CPU (% of a core)", lg_cpu_cell, None),
    ("connections", conns_cell, None),
]


def side_by_side(results, scen, variants, rows, servers=SERVERS):
    """variants: server -> variant name (None: not applicable)."""
    head = "| | " + " | ".join(label for _, label in servers) + " | tidings ÷ uWS | tidings ÷ ws |"
    out = [head, "|---" * (len(servers) + 3) + "|"]
    for label, fn, val in rows:
        cells = []
        for s, _ in servers:
            v = variants.get(s)
            cells.append("n/a" if v is None else cell_or_error(results, scen, s, v, fn))
        ratios = []
        for other in ("uws", "ws"):
            a = results.res(scen, "tidings", variants.get("tidings")) if variants.get("tidings") else None
            b = results.res(scen, other, variants.get(other)) if variants.get(other) else None
            ratios.append(ratio(val(a), val(b)) if val and a and b else "—")
        out.append("| %s | %s | %s |" % (label, " | ".join(cells), " | ".join(ratios)))
    return "\n".join(out)


def args_of(results, scen, server, variant):
    rec = results.rec(scen, server, variant)
    return " ".join(rec["loadgen_args"]) if rec else "?"


# ------------------------------------------------------ scenario 3: tail latency
# (variant prefix, short label, description); each load runs BENCH_LAT_ROUNDS
# times per server (variants PREFIX.1, PREFIX.2, ...), every run reported
LAT_LOADS = [
    ("20rps", "1,000 subs at 20 msg/s", "1,000 subscribers of one topic, 20 publishes/s (20,000 deliveries/s)"),
    ("200rps", "100 subs at 200 msg/s", "100 subscribers of one topic, 200 publishes/s (20,000 deliveries/s)"),
]
LAT_KEYS = [("p50", "latency_p50_ms"), ("p99", "latency_p99_ms"), ("p99.9", "latency_p999_ms"),
            ("max", "latency_max_ms")]
SPIKE_FACTOR = 1.5   # a run's p99 (p99.9) this many times the highest of the other runs ...
SPIKE_MIN_MS = 0.5   # ... and at least this much above it is a spike to explain


def median(vals):
    v = sorted(x for x in vals if x is not None)
    if not v:
        return None
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def run_results(results, scen, server, prefix):
    """the result of each repeated run, None for a failed or missing one"""
    return [rec["result"] if rec and rec.get("result") and not rec.get("error") else None
            for rec in results.runs(scen, server, prefix)]


def runs_cell(vals, fmt=num):
    """every run's value, in order: "1.90 / 2.10 / 2.00" """
    if not vals:
        return "not run"
    return " / ".join("failed" if v is None else fmt(v) for v in vals)


def lat_spikes(results):
    """[(server label, load label, run, text)]: runs whose p99 or p99.9 stands
    out from the other runs of the same server and load"""
    out = []
    for prefix, llabel, _ in LAT_LOADS:
        for s, slabel in SERVERS:
            recs = results.runs("latency", s, prefix)
            for n, rec in enumerate(recs, 1):
                r = rec["result"] if rec and rec.get("result") and not rec.get("error") else None
                if not r:
                    continue
                what = []
                for mname, key in LAT_KEYS[1:3]:
                    others = [x["result"].get(key) for m, x in enumerate(recs, 1)
                              if m != n and x and x.get("result") and not x.get("error")]
                    others = [v for v in others if v is not None]
                    v = r.get(key)
                    if v is None or len(others) < 2:
                        continue
                    hi = max(others)
                    if v >= SPIKE_FACTOR * hi and v - hi >= SPIKE_MIN_MS:
                        what.append("%s %s ms against %s ms in the other runs (%.1f× the higher)" % (
                            mname, num(v), " / ".join(num(o) for o in others), v / hi if hi else float("inf")))
                if not what:
                    continue
                facts = ["max %s ms" % num(r.get("latency_max_ms"))]
                if rec.get("background_cpu_pct") is not None:
                    facts.append("the machine %d%% of a core busy just before it" % rec["background_cpu_pct"])
                if r.get("cpu_pct") is not None:
                    facts.append("the loadgen at %s%% of a core" % num(r["cpu_pct"]))
                if r.get("server_cpu_pct") is not None:
                    facts.append("the server at %s%%" % num(r["server_cpu_pct"]))
                facts.append("%s lost" % "{:,}".format(r.get("lost") or 0))
                if r.get("behind_schedule"):
                    facts.append("the publisher behind schedule %s times" % "{:,}".format(r["behind_schedule"]))
                out.append((slabel, llabel, n, "%s, %s, run %d: %s; in that run %s." % (
                    slabel, llabel, n, "; ".join(what), ", ".join(facts))))
    return out


def latency_section(results, w):
    """section 3: every run of both loads, per placement, and the spikes"""
    w("## 3. Tail latency at fixed moderate rates: every run")
    w("")
    nruns = max([len(results.runs("latency", s, p)) for s, _ in SERVERS for p, _, _ in LAT_LOADS] + [0])
    w("One topic, one publisher, 64-byte payloads, two loads: %s. %d round%s on the same three servers, "
      "the servers interleaved (tidings, uWS, ws, tidings, ...; each round both loads), so that a busy "
      "spell of the machine does not fall on one server only. Every run is shown, in order "
      "(\"run 1 / run 2 / run 3\"): a spike in one run is a finding to explain (listed below the "
      "tables), not something to average away. The ratio columns divide the medians of the runs." % (
          " and ".join(d for _, _, d in LAT_LOADS), nruns, "" if nruns == 1 else "s"))
    w("")
    for prefix, label, _ in LAT_LOADS:
        w("loadgen (%s): `%s`" % (label, args_of(results, "latency", "tidings", prefix + ".1")))
        w("")
    rows = [("latency %s (ms)" % m, k, num) for m, k in LAT_KEYS] + [
        ("deliveries/s", "deliveries_per_s", rate),
        ("lost", "lost", lambda v: "{:,}".format(int(v))),
        ("server CPU (% of a core)", "server_cpu_pct", num),
        ("loadgen CPU (% of a core)", "cpu_pct", num),
    ]
    for p, pres in each_placement(w, results):
        w("| load | | tidings | uWS.js | node ws | tidings ÷ uWS | tidings ÷ ws |")
        w("|---|---|---|---|---|---|---|")
        for prefix, label, _ in LAT_LOADS:
            for rl, key, fmt in rows:
                vals = {s: [r.get(key) if r else None for r in run_results(pres, "latency", s, prefix)]
                        for s, _ in SERVERS}
                med = {s: median(v) for s, v in vals.items()}
                ratios = [ratio(med["tidings"], med[o]) if key.startswith("latency") or key.endswith("_per_s")
                          else "—" for o in ("uws", "ws")]
                w("| %s | %s | %s | %s |" % (label, rl, " | ".join(runs_cell(vals[s], fmt) for s, _ in SERVERS),
                                             " | ".join(ratios)))
            bg = {s: [rec.get("background_cpu_pct") if rec else None for rec in pres.runs("latency", s, prefix)]
                  for s, _ in SERVERS}
            w("| %s | machine busy just before (%% of a core) | %s | | |" % (
                label, " | ".join(runs_cell(bg[s], lambda v: "%d" % v) for s, _ in SERVERS)))
        w("")
        spikes = lat_spikes(pres)
        if spikes:
            w("Spikes (a run's p99 or p99.9 at least %.1f× the highest of the other runs and %s ms above it): "
              "findings to explain, not noise to average away:" % (SPIKE_FACTOR, num(SPIKE_MIN_MS)))
            w("")
            for _, _, _, text in spikes:
                w("* " + text)
        else:
            w("No spike: no run's p99 or p99.9 is %.1f× (and %s ms) above the other runs of the same server "
              "and load." % (SPIKE_FACTOR, num(SPIKE_MIN_MS)))
        w("")


# ------------------------------------------------------------------- summary
def _val(r, key):
    return r.get(key) if r else None


def summary_spec():
    """(label, (README label, short label) or None, kind, scenario, variants per server, key, format,
    unit in the README)
    kind "one": one run per server; "runs": every run of scenario 3 ("a / b / c")"""
    kib = lambda v: num(v / 1024) if v is not None else "—"
    spec = [
        ("fan-out, 1,000 subs: deliveries/s", ("fan-out to 1,000 subscribers, deliveries/s", "fan-out"),
         "one", "fanout", ("max",) * 3, "deliveries_per_s", rate, ""),
        ("fan-out, 1,000 subs: p99 latency (ms)", None, "one", "fanout", ("max",) * 3, "latency_p99_ms", num, " ms"),
        ("the same, end-to-end window (section 11): deliveries/s", ("the same, end-to-end window (`loadgen --e2e`)", "fan-out e2e"),
         "one", "e2e", ("fanout_e2e", "fanout_e2e", None), "deliveries_per_s", rate, ""),
        ("the same, end-to-end window: p99 to the last subscriber (ms)", None,
         "one", "e2e", ("fanout_e2e", "fanout_e2e", None), "e2e_latency_p99_ms", num, " ms"),
        ("10,000 subs / 1,000 topics: deliveries/s", ("10,000 subscribers over 1,000 topics, deliveries/s", "many topics"),
         "one", "many", ("max",) * 3, "deliveries_per_s", rate, ""),
        ("the same, tidings `--workers 1` (section 8)", None,
         "one", "many", ("w1", "max", "max"), "deliveries_per_s", rate, ""),
        ("the same, end-to-end window (section 11): deliveries/s", ("the same, end-to-end window (`loadgen --e2e`)", "many topics e2e"),
         "one", "e2e", ("many_e2e", "many_e2e", None), "deliveries_per_s", rate, ""),
        ("the same, end-to-end window: p99 to the last subscriber (ms)", None,
         "one", "e2e", ("many_e2e", "many_e2e", None), "e2e_latency_p99_ms", num, " ms"),
    ]
    for prefix, label, _ in LAT_LOADS:
        for m, key in LAT_KEYS:
            spec.append(("%s: %s latency (ms), each run" % (label, m),
                         ("%s, p99 latency, each run" % label.replace("subs", "subscribers"),
                          "p99 at %s (medians)" % label) if m == "p99" else None,
                         "runs", "latency", (prefix,) * 3, key, num, " ms"))
    spec += [
        ("16 KiB, 100 subs, uncompressed: deliveries/s", ("16 KiB messages to 100 subscribers, deliveries/s", "16 KiB"),
         "one", "large", ("plain",) * 3, "deliveries_per_s", rate, ""),
        ("16 KiB, 100 subs, uncompressed: p99 latency (ms)", None,
         "one", "large", ("plain",) * 3, "latency_p99_ms", num, " ms"),
        ("16 KiB, 100 subs, deflate: deliveries/s", None,
         "one", "large", ("deflate", "deflate", None), "deliveries_per_s", rate, ""),
        ("idle: server memory per connection (KiB)", ("memory per idle subscribed connection", "idle memory"),
         "one", "idle", ("workers", "pid", "pid"), "server_rss_per_conn", kib, " KiB"),
    ]
    return spec


def summary_row(pres, kind, scen, variants, key, fmt):
    """cells (one per server) and the ratios tidings ÷ uWS, tidings ÷ ws
    (of the medians for "runs")"""
    cells, vals = [], []
    for (s, _), v in zip(SERVERS, variants):
        if v is None:
            cells.append("n/a")
            vals.append(None)
        elif kind == "runs":
            xs = [_val(r, key) for r in run_results(pres, scen, s, v)]
            cells.append(runs_cell(xs, fmt) if xs else "not run")
            vals.append(median(xs))
        else:
            r = pres.res(scen, s, v)
            x = _val(r, key)
            if pres.rec(scen, s, v) is None:
                cells.append("not run")
            elif x is None:
                cells.append("failed")
            else:
                sat = r.get("cpu_pct") is not None and r["cpu_pct"] >= SAT_PCT and r.get("mode") != "idle"
                cells.append(fmt(x) + (" ⚠" if sat else ""))
            vals.append(x)
    return cells, ratio(vals[0], vals[1]), ratio(vals[0], vals[2])


def readme_block(results, m, now, elapsed, quick):
    """the README's performance table, between <!-- bench:summary:begin --> and
    <!-- bench:summary:end -->, from the same results as docs/benchmarks.md"""
    L = ["<!-- bench:summary:begin -->"]
    w = L.append
    first = results.placement
    w("%sFrom the `make bench` run of %s, commit %s, on %s cores (%s) that the servers, the load "
      "generator and Redis share; placement `%s` (%s); tidings with its defaults (one worker per core, "
      "embedded Redis, compression on). Written with [docs/benchmarks.md](docs/benchmarks.md) from the "
      "same results; do not edit by hand:" % (
          "**BENCH_QUICK=1: numbers meaningless.** " if quick else "", now, m.get("commit", "?"),
          m.get("nproc", "?"), m.get("cpu", "?"), first, PLACEMENT_TEXT.get(first, first)))
    w("")
    w("| | tidings | uWS.js | node ws | tidings ÷ uWS |")
    w("| --- | --- | --- | --- | --- |")
    pres = results.at(first)
    others = results.others()
    other_ratios = {p: [] for p in others}
    for label, rlabel, kind, scen, variants, key, fmt, unit in summary_spec():
        if not rlabel:
            continue
        cells, ru, _ = summary_row(pres, kind, scen, variants, key, fmt)
        cells = [c.replace(" ⚠", "") + unit + (" ⚠" if c.endswith("⚠") else "") if c[:1].isdigit() else c
                 for c in cells]
        if scen == "many" and variants[0] == "max":   # section 8 beside it
            one = pres.res("many", "tidings", "w1")
            if one and one.get(key) is not None:
                cells[0] += " (1 worker: %s)" % fmt(one[key])
        w("| %s | %s | %s |" % (rlabel[0], " | ".join(cells), ru))
        for p in others:
            _, rp, _ = summary_row(results.at(p), kind, scen, variants, key, fmt)
            other_ratios[p].append("%s %s" % (rlabel[1], rp))
    w("")
    w("Latency rows: every run of scenario 3, in order (the rounds interleave the servers); the ratio "
      "is of the medians. Above 1× tidings is higher: better for deliveries/s, worse for latency and memory. "
      "⚠: the load generator used %d%% or more of a core, so it was (close to) the limit." % SAT_PCT)
    for p in others:
        w("")
        w("Placement `%s` (%s), tidings ÷ uWS: %s." % (p, PLACEMENT_TEXT.get(p, p), "; ".join(other_ratios[p])))
    w("<!-- bench:summary:end -->")
    return "\n".join(L) + "\n"


def readme_redis_block(results):
    """the README's table of scenario 6 (through Redis), between
    <!-- bench:redis:begin --> and <!-- bench:redis:end -->"""
    L = ["<!-- bench:redis:begin -->", "| topics | deliveries/s | p50 | p99 |", "| --- | --- | --- | --- |"]
    for v, label in [("10topics", "10 (100 subscribers each)"), ("1topics", "1 (1,000 subscribers)")]:
        r = results.res("redis", "tidings", v)
        if r:
            L.append("| %s | %s | %s ms | %s ms |" % (label, rate(r.get("deliveries_per_s")),
                                                     num(r.get("latency_p50_ms")), num(r.get("latency_p99_ms"))))
        else:
            L.append("| %s | failed | | |" % label)
    L.append("<!-- bench:redis:end -->")
    return "\n".join(L) + "\n"


def put_block(path, name, block):
    """replaces the marked block NAME of the file at path; False when the file
    has no such block (then it is left alone)"""
    try:
        old = open(path).read()
    except OSError:
        return False
    pat = re.compile(r"<!-- %s:begin -->.*?<!-- %s:end -->\n?" % (re.escape(name), re.escape(name)), re.S)
    if not pat.search(old):
        return False
    new = pat.sub(lambda _: block, old, count=1)
    if new != old:
        with open(path, "w") as f:
            f.write(new)
    return True


# ----------------------------------------------------------------------- notes
def flags(results):
    notes = []
    for rec in results.all:
        name = "%s / %s / %s" % (rec["scenario"], rec["server"], rec["variant"])
        if len(results.placements) > 1:
            name += " (%s)" % placement_of(rec)
        if rec.get("error") or not rec.get("result"):
            notes.append("**%s: %s.**" % (name, rec.get("error") or "no result"))
            continue
        r = rec["result"]
        if (rec.get("background_cpu_pct") or 0) >= 25:
            notes.append("%s: just before it the machine was %d%% of a core busy with something else "
                         "(another process, or the tail of the previous run); its numbers may be "
                         "depressed." % (name, rec["background_cpu_pct"]))
        if r.get("cpu_pct") is not None and r["cpu_pct"] >= SAT_PCT:
            notes.append("%s: the loadgen used %.0f%% of a core — it, not the server, was the limit "
                         "(or close to it)." % (name, r["cpu_pct"]))
        if (r.get("latency_p99_ms") or 0) >= 1000:
            notes.append("**%s: p99 latency %.0f ms (max %.0f ms)**: a backlog built up during the run; "
                         "a longer run would have a longer tail." % (name, r["latency_p99_ms"],
                                                                     r.get("latency_max_ms") or 0))
        if r.get("lost"):
            notes.append("%s: %s deliveries lost (%.3f%% of %s expected, %s subscribers affected)." % (
                name, "{:,}".format(r["lost"]), 100.0 * r["lost"] / max(1, r.get("expected") or 1),
                "{:,}".format(r.get("expected") or 0), r.get("subs_with_loss")))
        if r.get("duplicated"):
            notes.append("%s: %d duplicated deliveries." % (name, r["duplicated"]))
        if r.get("conn_failed") or r.get("conn_dropped"):
            notes.append("%s: %d connections failed during setup, %d dropped later." % (
                name, r.get("conn_failed") or 0, r.get("conn_dropped") or 0))
        if r.get("errors"):
            notes.append("%s: %d publishes answered with an error." % (name, r["errors"]))
        if r.get("behind_schedule"):
            notes.append("%s: the publishers fell behind schedule %s times (fixed rate not reached)." % (
                name, "{:,}".format(r["behind_schedule"])))
        if r.get("unacked"):
            notes.append("%s: %d publishes were never acknowledged." % (name, r["unacked"]))
        if rec["variant"] == "deflate" and r.get("mode") != "idle" and not r.get("inflated"):
            notes.append("%s: no compressed message was received although --deflate was offered." % name)
    for p in results.placements:
        for _, _, _, text in lat_spikes(results.at(p)):
            notes.append("**Latency spike (section 3%s)**: %s" % (
                ", placement %s" % p if len(results.placements) > 1 else "", text))
    return notes


# ----------------------------------------------------------------------- chart
def idle_conns(results):
    r = results.res("idle", "tidings", "workers") or results.res("idle", "uws", "pid") or {}
    return r.get("subs") or 10000


def chart(results, work, title):
    """six panels, the first placement; the latency panels show the median
    p99 of scenario 3's runs, labelled with every run's"""
    panels = [
        ("fanout", "max", "deliveries_per_s", 1e-6, "Fan-out, 1,000 subs of 1 topic:\\ndeliveries/s (millions, higher is better)", "%.2f"),
        ("many", "max", "deliveries_per_s", 1e-6, "10,000 subs on 1,000 topics:\\ndeliveries/s (millions, higher is better)", "%.3f"),
        ("e2e", "many_e2e", "deliveries_per_s", 1e-6, "10,000 subs on 1,000 topics, end-to-end window:\\ndeliveries/s (millions, higher is better)", "%.3f"),
        ("latency", "runs:20rps", "latency_p99_ms", 1, "1,000 subs, 20 msg/s: p99 latency (ms),\\nmedian bar, every run labelled (lower is better)", "%.2f"),
        ("latency", "runs:200rps", "latency_p99_ms", 1, "100 subs, 200 msg/s: p99 latency (ms),\\nmedian bar, every run labelled (lower is better)", "%.2f"),
        ("idle", None, "server_rss_per_conn", 1 / 1024, "{:,} idle connections:".format(idle_conns(results)) + "\\nserver memory per connection (KiB, lower is better)", "%.1f"),
    ]
    idle_variant = {"tidings": "workers", "uws": "pid", "ws": "pid"}
    gp = [
        "set terminal pngcairo size 1600,860 font 'DejaVu Sans,11'",
        "set output 'benchmarks.png'",
        "set multiplot layout 2,3 title '%s' font ',13'" % title.replace("'", "''"),
        "set style fill solid 0.85 border -1",
        "set boxwidth 0.6",
        "set grid ytics",
        "unset key",
        "set xtics nomirror scale 0",
        "set xrange [-0.6:2.6]",
        "set yrange [0:*]",
        "set offsets 0, 0, graph 0.12, 0",
    ]
    for i, (scen, variant, key, scale, ptitle, fmt) in enumerate(panels):
        path = os.path.join(work, "chart%d.dat" % i)
        with open(path, "w") as f:
            for s, label in SERVERS:
                if variant and variant.startswith("runs:"):
                    vals = [_val(r, key) for r in run_results(results, scen, s, variant[5:])]
                    val = median(vals)
                    shown = " / ".join("?" if v is None else fmt % (v * scale) for v in vals) if vals else "failed"
                    r = None
                else:
                    v = variant or idle_variant[s]
                    r = results.res(scen, s, v)
                    val = r.get(key) if r else None
                    shown = fmt % (val * scale) if val is not None else (
                        "n/a" if results.rec(scen, s, v) is None and scen == "e2e" else "failed")
                if r and r.get("cpu_pct") is not None and r["cpu_pct"] >= SAT_PCT and r.get("mode") != "idle":
                    shown += " (loadgen-bound)"
                f.write('"%s" %s %s "%s"\n' % (label, "%.6g" % (val * scale) if val is not None else 0,
                                               COLORS[s], shown))
        gp.append("set title \"%s\"" % ptitle)
        gp.append("plot 'chart%d.dat' using 0:2:3:xtic(1) with boxes lc rgb variable, "
                  "'' using 0:2:4 with labels offset 0,0.8" % i)
    gp.append("unset multiplot")
    with open(os.path.join(work, "chart.gp"), "w") as f:
        f.write("\n".join(gp) + "\n")


# ---------------------------------------------------------------------- report
def api_rows(results):
    """Scenario 10: the HTTP API's publishes beside the WebSocket ones, each
    the mean of its rounds; lines of a markdown table."""
    def rounds(kind):
        return [r for r in (results.res("api", "tidings", "%s%d" % (kind, i)) for i in (1, 2, 3)) if r]

    def mean(rs, k):
        vals = [r.get(k) for r in rs if r.get(k) is not None]
        return sum(vals) / len(vals) if vals else None
    ws, http = rounds("websocket"), rounds("http")
    out = ["| | WebSocket publishers | HTTP API publishers | HTTP ÷ WebSocket |", "|---|---|---|---|"]
    for label, k, fmt in [("publishes/s", "published_per_s", rate),
                          ("deliveries/s", "deliveries_per_s", rate),
                          ("latency p50 (ms)", "latency_p50_ms", num),
                          ("latency p99 (ms)", "latency_p99_ms", num),
                          ("publish errors", "errors", num),
                          ("lost", "lost", num),
                          ("server CPU (% of a core)", "server_cpu_pct", num)]:
        a_, b_ = mean(ws, k), mean(http, k)
        out.append("| %s | %s | %s | %s |" % (label, fmt(a_), fmt(b_),
                                              ratio(b_, a_) if k.endswith("_per_s") else "—"))
    out.append("")
    out.append("(%d WebSocket and %d HTTP rounds, alternating; the mean of each.)" % (len(ws), len(http)))
    return out


def e2e_rows(results):
    """Scenario 11: the end-to-end window beside the acknowledgement window,
    per load and server; lines of a markdown table."""
    out = ["| load | server | deliveries/s, ack window | deliveries/s, e2e window | e2e ÷ ack | "
           "p99 per delivery ack / e2e (ms) | e2e latency to the last subscriber p50 / p99 (ms) | expired |",
           "|---|---|---|---|---|---|---|---|"]
    for load, label in [("fanout", "fan-out, 1,000 subs"), ("many", "10,000 subs / 1,000 topics")]:
        for srv, slabel in [("tidings", "tidings"), ("uws", "uWS.js")]:
            ack, e2e = results.res("e2e", srv, load + "_ack"), results.res("e2e", srv, load + "_e2e")
            if not ack and not e2e:
                continue
            d = lambda r: r.get("deliveries_per_s") if r else None
            out.append("| %s | %s | %s | %s | %s | %s / %s | %s / %s | %s |" % (
                label, slabel, rate(d(ack)), rate(d(e2e)), ratio(d(e2e), d(ack)),
                num(ack.get("latency_p99_ms")) if ack else "—", num(e2e.get("latency_p99_ms")) if e2e else "—",
                num(e2e.get("e2e_latency_p50_ms")) if e2e else "—", num(e2e.get("e2e_latency_p99_ms")) if e2e else "—",
                (e2e.get("e2e_expired") if e2e else "—")))
        t, u = results.res("e2e", "tidings", load + "_e2e"), results.res("e2e", "uws", load + "_e2e")
        if t and u:
            out.append("| %s | **tidings ÷ uWS** | %s | %s | | | | |" % (
                label, ratio((results.res("e2e", "tidings", load + "_ack") or {}).get("deliveries_per_s"),
                             (results.res("e2e", "uws", load + "_ack") or {}).get("deliveries_per_s")),
                ratio(t.get("deliveries_per_s"), u.get("deliveries_per_s"))))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--api-summary", action="store_true",
                    help="print scenario 10's table and nothing else (BENCH_ONLY runs)")
    ap.add_argument("--e2e-summary", action="store_true",
                    help="print scenario 11's table, per placement, and nothing else (BENCH_ONLY runs)")
    ap.add_argument("--latency-summary", action="store_true",
                    help="print section 3 (every latency run, per placement) and nothing else (BENCH_ONLY runs)")
    ap.add_argument("--out")
    ap.add_argument("--work")
    ap.add_argument("--root")
    ap.add_argument("--elapsed", type=int)
    ap.add_argument("--quick", default="0")
    ap.add_argument("--fan-window", default="32")
    ap.add_argument("--background-cpu", type=int, default=None)
    ap.add_argument("--readme", help="also rewrite the marked performance tables of this README "
                    "(<!-- bench:summary:begin --> ... and <!-- bench:redis:begin --> ...)")
    a = ap.parse_args()

    with open(a.results) as f:
        records = [json.loads(line) for line in f if line.strip()]
    results = Results(records)
    if a.api_summary:
        print("\n".join(api_rows(results)))
        return
    if a.latency_summary:
        out = []
        latency_section(results, out.append)
        print("\n".join(out))
        return
    if a.e2e_summary:
        for p in results.placements:
            print("placement %s:" % p)
            print("\n".join(e2e_rows(results.at(p))))
        return
    if not (a.out and a.work and a.root and a.elapsed is not None):
        ap.error("--out, --work, --root and --elapsed are required")
    m = machine(a.root)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    try:
        with open(os.path.join(a.work, "servers.txt")) as f:
            cmds = [line.rstrip("\n").split("\t", 1) for line in f if "\t" in line]
    except OSError:
        cmds = []

    with open(os.path.join(a.out, "bench-results.json"), "w") as f:
        json.dump({"date": now, "command": "make bench", "quick": a.quick == "1",
                   "servers": [{"instance": n, "command": c} for n, c in cmds],
                   "elapsed_s": a.elapsed, "background_cpu_pct": a.background_cpu, "machine": m,
                   "runs": records}, f, indent=1)
        f.write("\n")

    chart(results, a.work, "tidings vs uWebSockets.js vs Node ws — %s, %s cores, %s" % (now, m["nproc"], m["cpu"]))

    L = []
    w = L.append
    w("# Benchmarks")
    w("")
    w("Generated by `make bench` (`tests/bench/run.sh`) on %s; the whole run took %d s. "
      "Do not edit by hand: the next run overwrites this file, `bench-results.json` (every loadgen "
      "result, raw) and `benchmarks.png`." % (now, a.elapsed))
    if a.quick == "1":
        w("")
        w("**BENCH_QUICK=1: shortened runs that only check the harness; the numbers mean nothing.**")
    w("")
    w("![tidings vs uWS vs node ws](benchmarks.png)")
    w("")
    w("## Summary")
    w("")
    spec = summary_spec()
    for pi, (place, pres) in enumerate(each_placement(w, results)):
        w("| | tidings | uWS.js | node ws | tidings ÷ uWS | tidings ÷ ws |")
        w("|---|---|---|---|---|---|")
        for label, _, kind, scen, variants, key, fmt, _ in spec:
            cells, ru, rw = summary_row(pres, kind, scen, variants, key, fmt)
            w("| %s | %s | %s | %s |" % (label, " | ".join(cells), ru, rw))
        w("")
    w("\"each run\": every run of scenario 3 (section 3), in order; their ratios divide the medians. "
      "\"end-to-end window\": section 11, where a publish stays in the publisher's window until every "
      "subscriber has it.")
    w("")
    w("⚠: the loadgen used %d%% or more of a core in that run, so it was (close to) the limit. "
      "Details, CPU figures and the exact loadgen options per scenario below." % SAT_PCT)
    w("")
    w("## Machine and versions")
    w("")
    w("| | |")
    w("|---|---|")
    m["background"] = "%s%% of a core (other processes, just before the run)" % (
        "?" if a.background_cpu is None else a.background_cpu)
    for k, label in [("nproc", "cores (nproc)"), ("cpu", "CPU"), ("memory", "memory"), ("kernel", "kernel"),
                     ("distro", "distribution"), ("tidings", "tidings"), ("commit", "commit"),
                     ("cc", "C compiler"), ("redis", "redis-server (tidings' embedded bus)"),
                     ("node", "Node.js"), ("uws", "uWebSockets.js (@trufflesuite/uws-js-unofficial)"),
                     ("ws", "ws"), ("open_files", "open-file limit"), ("background", "background CPU load")]:
        w("| %s | %s |" % (label, m.get(k, "?")))
    w("")
    w("The three servers and the load generator share the machine's %s cores over loopback. "
      "tidings runs with its defaults (one worker per core, an embedded redis-server as the bus "
      "between workers); its CPU and memory figures include the master, the workers and "
      "redis-server unless said otherwise. The Node.js servers are single processes, single-threaded "
      "(`tests/bench/servers/`). The load generator is `tests/bench/loadgen` (one thread); latency is "
      "publish-to-arrival: from the publisher's clock reading before it sends to the kernel's "
      "receive stamp on the subscriber's socket (`SO_TIMESTAMPNS`), so the one loadgen thread's "
      "own queue of sockets to read is not counted (the publish-to-read figure is in "
      "bench-results.json as `read_latency_*`), and \"deliveries\" count notifications received by "
      "subscribers inside the measurement window. CPU figures are in %% of one core (so up to %d%% "
      "for tidings' processes together). A loadgen CPU of %d%% or more is marked ⚠: the loadgen "
      "was then (close to) the bottleneck and the server may be able to do more." %
      (m["nproc"], 100 * (m["nproc"] or 1), SAT_PCT))
    w("")

    if cmds:
        w("Server instances of this run (ports are picked free each time; paths relative to the repository):")
        w("")
        w("```")
        seen = set()
        for name, cmd in cmds:
            cmd = cmd.replace(a.root + "/", "")
            key = (name, re.sub(r"\b\d{4,5}\b", "P", cmd))
            if key in seen:
                continue
            seen.add(key)
            w("%-15s %s" % (name, cmd))
        w("```")
        w("")
        w("tidings runs with `--rate-limit 0`: its default per-connection limit of 1,000 messages/s "
          "would answer most publishes of the maximum-rate scenarios (and some of scenario 6) with "
          "an error; uWS and ws have no such limit. The other options only pick ports and quiet "
          "the log.")
        w("")

    def section(title, descr, scen, variants, rows=PUBSUB_ROWS, servers=SERVERS):
        w("## " + title)
        w("")
        w(descr)
        w("")
        first = next((s for s, _ in servers if variants.get(s)), "tidings")
        w("loadgen: `%s`" % args_of(results, scen, first, variants[first]))
        w("")
        w(side_by_side(results, scen, variants, rows, servers))
        w("")
        for p in results.others():
            w("Placement `%s` (%s):" % (p, PLACEMENT_TEXT.get(p, p)))
            w("")
            w(side_by_side(results.at(p), scen, variants, rows, servers))
            w("")

    section("1. Fan-out: 1,000 subscribers, one topic, 64-byte payloads, maximum rate",
            "One publisher keeps %s publishes unacknowledged (`--rate 0`); every publish goes to all "
            "1,000 subscribers." % a.fan_window,
            "fanout", {"tidings": "max", "uws": "max", "ws": "max"})
    section("2. Many topics: 10,000 subscribers over 1,000 topics, maximum rate",
            "Ten subscribers per topic; two publishers, each with %s publishes unacknowledged, "
            "round-robin over the topics. Connections are opened at 5,000/s." % a.fan_window,
            "many", {"tidings": "max", "uws": "max", "ws": "max"})
    latency_section(results, w)

    large_rows = [PUBSUB_ROWS[0],
                  ("payload delivered (MiB/s)",
                   lambda r: num((r.get("deliveries_per_s") or 0) * (r.get("size") or 0) / 1048576),
                   lambda r: (r.get("deliveries_per_s") or 0) * (r.get("size") or 0))] + PUBSUB_ROWS[1:] + [
        ("compressed messages received", lambda r: "{:,}".format(r.get("inflated") or 0), None)]
    section("4a. Large messages: 16 KiB payloads, 100 subscribers, uncompressed",
            "One topic, one publisher with 8 publishes unacknowledged. tidings runs with "
            "`--no-compression`, uWS without `--compression`; the loadgen offers no extension.",
            "large", {"tidings": "plain", "uws": "plain", "ws": "plain"}, large_rows)
    section("4b. Large messages: 16 KiB payloads, 100 subscribers, permessage-deflate",
            "The same with compression: tidings with its defaults (compression on, threshold 256 "
            "bytes), uWS with `--compression` (SHARED_COMPRESSOR), the loadgen with `--deflate` "
            "(it inflates every message). The node ws server of the original example has "
            "compression off, hence n/a. Note that the loadgen's payload is mostly a run of `x`, "
            "which compresses far better than real data.",
            "large", {"tidings": "deflate", "uws": "deflate", "ws": None}, large_rows)

    # 5. idle
    idle_rows = [
        ("connections held", lambda r: "{:,}".format(r.get("held") or 0), None),
        ("RSS before connecting (MiB)", lambda r: mib(r.get("server_rss_before")), lambda r: r.get("server_rss_before")),
        ("RSS with all subscribed (MiB)", lambda r: mib(r.get("server_rss_after")), lambda r: r.get("server_rss_after")),
        ("RSS at the end (MiB)", lambda r: mib(r.get("server_rss_end")), lambda r: r.get("server_rss_end")),
        ("growth per connection (KiB)",
         lambda r: num(r["server_rss_per_conn"] / 1024) if r.get("server_rss_per_conn") is not None else "—",
         lambda r: r.get("server_rss_per_conn")),
        ("loadgen CPU (% of a core)", lg_cpu_cell, None),
        ("connections", conns_cell, None),
    ]
    w("## 5. Idle connections: memory per subscribed connection")
    w("")
    w("A freshly started server each; the loadgen opens {:,} connections (5,000/s), each ".format(idle_conns(results)) +
      "subscribes to one of 100 topics, and holds them. Before that, 50 connections are opened, "
      "subscribed and closed (`--idle --subs 50 --duration 0.5`), the same for every server, so that "
      "what a server does once (tidings' workers initialise OpenSSL at their first handshake, ~2 MiB "
      "each; Node.js compiles its handlers) is not counted per connection. "
      "RSS is VmRSS from /proc: for tidings "
      "the sum over its worker processes only (not the master, not the embedded redis-server), "
      "for the Node.js servers the node process.")
    w("")
    w("loadgen: `%s`" % args_of(results, "idle", "tidings", "workers"))
    w("")
    w(side_by_side(results, "idle", {"tidings": "workers", "uws": "pid", "ws": "pid"}, idle_rows))
    w("")

    # 6. issue 3
    w("## 6. Latency through Redis (issue 3): tidings `--workers 2`")
    w("")
    w("1,000 subscribers, one publisher, 1,000 publishes/s in total, spread round-robin over "
      "10 topics (100 subscribers each, 100,000 deliveries/s) or all to 1 topic (1,000,000 "
      "deliveries/s). With two workers about half the subscribers are on the other worker than "
      "the publisher, so every message crosses the embedded Redis. tidings only.")
    w("")
    w("loadgen: `%s`" % args_of(results, "redis", "tidings", "10topics"))
    w("")
    w("| topics | deliveries/s | lost | p50 (ms) | p99 (ms) | p99.9 (ms) | max (ms) | server CPU | loadgen CPU |")
    w("|---|---|---|---|---|---|---|---|---|")
    for v, label in [("10topics", "10"), ("1topics", "1")]:
        rec = results.rec("redis", "tidings", v)
        r = results.res("redis", "tidings", v)
        if not r:
            w("| %s | failed: %s |||||||| " % (label, (rec or {}).get("error") or "not run"))
            continue
        w("| %s | %s | %s | %s | %s | %s | %s | %s%% | %s |" % (
            label, rate(r.get("deliveries_per_s")), lost_cell(r), num(r.get("latency_p50_ms")),
            num(r.get("latency_p99_ms")), num(r.get("latency_p999_ms")), num(r.get("latency_max_ms")),
            num(r.get("server_cpu_pct")), lg_cpu_cell(r)))
    w("")

    # 7. CPU per delivery with compression
    w("## 7. tidings fan-out: server CPU per delivered message, compression off vs on")
    w("")
    w("1,000 subscribers of one topic, 1 KiB payloads (above the 256-byte compression "
      "threshold), a fixed 100 publishes/s (100,000 deliveries/s). Off: tidings "
      "`--no-compression`, loadgen without `--deflate`; on: tidings defaults, loadgen "
      "`--deflate`. tidings compresses each notification once and sends the same frame to every "
      "subscriber that negotiated permessage-deflate (`server_no_context_takeover`).")
    w("")
    w("loadgen: `%s`" % args_of(results, "cpu", "tidings", "plain"))
    w("")
    off, on = results.res("cpu", "tidings", "plain"), results.res("cpu", "tidings", "deflate")
    w("| | compression off | compression on | on ÷ off |")
    w("|---|---|---|---|")
    for label, fn, val in [
        ("deliveries/s", lambda r: rate(r.get("deliveries_per_s")), lambda r: r.get("deliveries_per_s")),
        ("lost", lost_cell, None),
        ("server CPU (% of a core)", lambda r: num(r.get("server_cpu_pct")), lambda r: r.get("server_cpu_pct")),
        ("server CPU per delivery (µs)", lambda r: num(cpu_per_delivery_us(r)), cpu_per_delivery_us),
        ("latency p50 (ms)", lambda r: num(r.get("latency_p50_ms")), lambda r: r.get("latency_p50_ms")),
        ("latency p99 (ms)", lambda r: num(r.get("latency_p99_ms")), lambda r: r.get("latency_p99_ms")),
        ("compressed messages received", lambda r: "{:,}".format(r.get("inflated") or 0), None),
        ("loadgen CPU (% of a core)", lg_cpu_cell, None),
    ]:
        w("| %s | %s | %s | %s |" % (
            label, cell_or_error(results, "cpu", "tidings", "plain", fn),
            cell_or_error(results, "cpu", "tidings", "deflate", fn),
            ratio(val(on), val(off)) if val and on and off else "—"))
    w("")

    # 8. one worker
    w("## 8. tidings with one worker on this machine")
    w("")
    w("Scenarios 1 to 3 again against tidings `--workers 1`, in the same run. The loadgen needs "
      "most of a core, so tidings' default of one worker per core puts three busy processes "
      "(two workers and the loadgen, with redis-server beside them) on two cores, and every "
      "message reaches both workers through Redis. On a server whose clients are elsewhere the "
      "default is the right one; here it shows what the sharing costs.")
    w("")
    w("| | tidings (default, 2 workers) | tidings `--workers 1` | uWS.js | 1 worker ÷ uWS |")
    w("|---|---|---|---|---|")
    for scen, variant, label in [("fanout", "max", "fan-out"), ("many", "max", "many topics"),
                                 ("latency", "20rps", "20 msg/s (section 3: its median-p99 run)")]:
        for rl, fn, val in [
            ("deliveries/s", lambda r: rate(r.get("deliveries_per_s")), lambda r: r.get("deliveries_per_s")),
            ("latency p50 (ms)", lambda r: num(r.get("latency_p50_ms")), lambda r: r.get("latency_p50_ms")),
            ("latency p99 (ms)", lambda r: num(r.get("latency_p99_ms")), lambda r: r.get("latency_p99_ms")),
            ("server CPU (% of a core)", lambda r: num(r.get("server_cpu_pct")), lambda r: r.get("server_cpu_pct")),
            ("loadgen CPU (% of a core)", lg_cpu_cell, None),
        ]:
            one, u = results.res(scen, "tidings", "w1"), results.res(scen, "uws", variant)
            w("| %s: %s | %s | %s | %s | %s |" % (
                label, rl, cell_or_error(results, scen, "tidings", variant, fn),
                cell_or_error(results, scen, "tidings", "w1", fn),
                cell_or_error(results, scen, "uws", variant, fn),
                ratio(val(one), val(u)) if val and one and u else "—"))
    w("")

    # 9. history on vs off
    w("## 9. tidings with history on vs off")
    w("")
    w("The loads of scenarios 1, 2 and 3 against tidings' defaults (history off) and against "
      "tidings `--history-size 100`, where every publish is one `FCALL tidings_publish` that "
      "stores the message in the topic's Redis stream, gives it an offset and publishes it, and "
      "every notification carries `\"offset\"`. Redis CPU: the embedded redis-server's CPU time "
      "over the run divided by the publishes acknowledged.")
    w("")
    w("| | history off | history on | on ÷ off |")
    w("|---|---|---|---|")

    def redis_us(rec):
        r = rec.get("result") if rec else None
        if not rec or rec.get("redis_cpu_ms") is None or not r or not r.get("acked"):
            return None
        return rec["redis_cpu_ms"] * 1000.0 / r["acked"]
    for variant, label in [("fanout", "fan-out"), ("many", "many topics"), ("latency", "20 msg/s")]:
        off, on = results.res("history", "off", variant), results.res("history", "on", variant)
        roff, ron = results.rec("history", "off", variant), results.rec("history", "on", variant)
        for rl, fn, val in [
            ("deliveries/s", lambda r: rate(r.get("deliveries_per_s")), lambda r: r.get("deliveries_per_s")),
            ("latency p99 (ms)", lambda r: num(r.get("latency_p99_ms")), lambda r: r.get("latency_p99_ms")),
            ("lost", lost_cell, None),
        ]:
            w("| %s: %s | %s | %s | %s |" % (
                label, rl, cell_or_error(results, "history", "off", variant, fn),
                cell_or_error(results, "history", "on", variant, fn),
                ratio(val(on), val(off)) if val and on and off else "—"))
        a_, b_ = redis_us(roff), redis_us(ron)
        w("| %s: Redis CPU per publish (µs) | %s | %s | %s |" % (
            label, num(a_) if a_ is not None else "—", num(b_) if b_ is not None else "—",
            ratio(b_, a_) if a_ and b_ else "—"))
    w("")

    # 10. the HTTP API
    w("## 10. Publishing through the HTTP API")
    w("")
    w("tidings with `--api-key`: 100 WebSocket subscribers over 10 topics, and 4 publishers "
      "at maximum rate with %s publishes in flight each, first as WebSocket clients, then as "
      "HTTP/1.1 keep-alive connections sending `POST /api/publish` pipelined (loadgen "
      "`--http-pub`). Latency: from publish to delivery at the subscribers." % a.fan_window)
    w("")
    for line in api_rows(results):
        w(line)
    w("")

    # 11. end-to-end window
    w("## 11. End-to-end window vs acknowledgement window (issue 15)")
    w("")
    w("The loads of scenarios 1 and 2 (a window of %s publishes per publisher, maximum rate) on one "
      "server instance, first as usual (a publish leaves the window when the server acknowledges it), "
      "then with `loadgen --e2e`: a publish leaves the window only when every subscriber of its topic "
      "has received it. A server that acknowledges before it delivers gets ahead in the first mode and "
      "not in the second. Latency to the last subscriber: publish sent → the last subscriber's "
      "receipt." % a.fan_window)
    w("")
    for pi, p in enumerate([results.placement] + results.others()):
        if len(results.placements) > 1:
            w("Placement `%s` (%s):" % (p, PLACEMENT_TEXT.get(p, p)))
            w("")
        for line in e2e_rows(results.at(p)):
            w(line)
        w("")

    # every run in every placement
    if len(results.placements) > 1:
        pls = results.placements
        w("## Every run by CPU placement")
        w("")
        w("Sections 1 to 4 and 11 show both placements; sections 5 to 10 show `%s` only. This table has "
          "every loadgen run of both: " % results.placement +
          "; ".join("`%s`: %s" % (p, PLACEMENT_TEXT.get(p, p)) for p in pls) + ".")
        w("")
        w("| scenario / server / variant | " + " | ".join("deliveries/s %s" % p for p in pls) + " | " +
          " | ".join("p99 ms %s" % p for p in pls) + " | " +
          " | ".join("server CPU %% %s" % p for p in pls) + " |")
        w("|---" * (1 + 3 * len(pls)) + "|")
        keys = []
        for rec in results.all:
            k = (rec["scenario"], rec["server"], rec["variant"])
            if k not in keys:
                keys.append(k)
        for k in keys:
            rs = [results.at(p).res(*k) for p in pls]
            cells = [rate(r.get("deliveries_per_s")) if r and r.get("mode") != "idle" else "—" for r in rs]
            cells += [num(r.get("latency_p99_ms")) if r and r.get("mode") != "idle" else "—" for r in rs]
            cells += [num(r.get("server_cpu_pct")) if r else "—" for r in rs]
            w("| %s | %s |" % (" / ".join(k), " | ".join(cells)))
        w("")

    # notes
    w("## Notes")
    w("")
    fl = flags(results)
    if a.background_cpu is not None and a.background_cpu >= 25:
        fl.insert(0, "**Other processes used %d%% of a core just before the run** (after waiting for the "
                  "machine to be quiet): every number here is probably depressed by that; run again on a "
                  "quiet machine." % a.background_cpu)
    if fl:
        w("Flagged in this run:")
        w("")
        for n in fl:
            w("* " + n)
    else:
        w("Flagged in this run: nothing (no loss, no failed or dropped connection, no loadgen "
          "saturation).")
    w("")
    w("General:")
    w("")
    big = results.res("large", "tidings", "plain")
    ubig = results.res("large", "uws", "plain")
    if big and (big.get("latency_p99_ms") or 0) >= 100 and (
            not ubig or (big.get("latency_p99_ms") or 0) > 5 * (ubig.get("latency_p99_ms") or 0)):
        w("* **tidings' latency tail with 16 KiB messages at maximum rate** (scenario 4a, p99 %s ms, "
          "over 5× uWS's) is a tidings problem. It is what a worker falling behind its own Redis "
          "subscription looks like: until the bus drained the subscription socket on each wakeup "
          "(redis/uvadapter.c), hiredis read it 16 KiB per loop turn while the worker read its "
          "publishers 64 KiB at a time, the backlog piled up in redis-server's output buffer and "
          "p99 grew with the length of the run (about 200 ms after 45 s). Look at the `omem` of "
          "the workers' subscriber connections in redis-server's `CLIENT LIST` during the run."
          % num(big.get("latency_p99_ms")))
    uc = cpu_per_delivery_us(results.res("large", "uws", "deflate"))
    tc = cpu_per_delivery_us(results.res("large", "tidings", "deflate"))
    if uc is not None and tc is not None and uc > 2 * tc:
        w("* uWebSockets.js with `--compression` (SHARED_COMPRESSOR) spent %s µs of CPU per 16 KiB "
          "delivery in scenario 4b against tidings' %s µs, consistent with it compressing the "
          "message once per subscriber, where tidings compresses it once per message." % (num(uc), num(tc)))
    for n in [
        "Ratios are tidings' value divided by the other server's: above 1× means tidings is "
        "higher — better for deliveries/s, worse for latency, CPU and memory.",
        "Everything runs on one small machine: the loadgen and the server compete for %s cores, "
        "and tidings' workers compete with each other and with redis-server. At maximum rate the "
        "numbers say as much about that contention as about the servers; the fixed-rate scenarios "
        "(3, 6, 7) are the cleaner comparisons. Expect a run-to-run spread of up to ~30%% in the "
        "maximum-rate scenarios." % m["nproc"],
        "At `--rate 0` the throughput depends on the window (publishes in flight per publisher). "
        "It is %s here because uWebSockets.js falls off a cliff above about 32 publishes arriving "
        "in one read: while this harness was built, uWS did ~6.6 M deliveries/s with a window of "
        "32 and ~0.6-0.7 M/s with 48-128 (latency up to seconds), while tidings kept scaling "
        "(~8 M/s at 48). The window is the same for every server." % a.fan_window,
        "In tidings every publish goes through the embedded redis-server (a Redis PUBLISH, "
        "acknowledged when Redis answers; each worker delivers what Redis sends it to its own "
        "subscribers), so its CPU figures include Redis' share.",
        "Memory per idle connection is the RSS growth divided by the connections, measured on a "
        "freshly started server; the Node.js numbers include whatever the garbage collector had "
        "not yet reclaimed.",
    ]:
        w("* " + n)
    w("")
    # the sections of shards.sh, growth.sh and syscalls.sh stay until they write them again
    path = os.path.join(a.out, "benchmarks.md")
    for section in sections.kept(path):
        w(section)
    with open(path, "w") as f:
        f.write("\n".join(L))

    if a.readme:
        for name, block in [("bench:summary", readme_block(results, m, now, a.elapsed, a.quick == "1")),
                            ("bench:redis", readme_redis_block(results))]:
            if not put_block(a.readme, name, block):
                print("report.py: %s has no <!-- %s:begin --> ... <!-- %s:end --> block; left alone" % (
                    a.readme, name, name), file=sys.stderr)


if __name__ == "__main__":
    main()
