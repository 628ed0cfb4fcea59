#!/usr/bin/env python3
"""Turn the loadgen results of tests/bench/growth.sh into docs/growth.json,
the gnuplot inputs of docs/growth-*.png and the growth section of
docs/benchmarks.md (between <!-- growth:begin --> and <!-- growth:end -->,
which report.py keeps when it rewrites the file).

The sentences under the charts are worked out from the run's numbers: for
each server, how much the x value grew between the first and the last point,
how much deliveries/s, CPU per delivery and p99 changed, and for memory the
least-squares slope (bytes per connection) and how well a line fits.
"""
import argparse
import datetime
import json
import math
import os

import sections
from report import rate as fmt_rate

SERVERS = [("tidings", "tidings"), ("uws", "uWS.js")]
COLORS = {"tidings": "0x1f77b4", "uws": "0xff7f0e"}
SAT_PCT = 85.0


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def points(records, sweep, server):
    """[(x, result or None, record)] sorted by x"""
    out = []
    for r in records:
        if r["scenario"] == sweep and r["server"] == server:
            ok = r.get("result") and not r.get("error")
            out.append((int(r["variant"]), r["result"] if ok else None, r))
    return sorted(out, key=lambda p: p[0])


def cpu_us(r):
    if not r or r.get("server_cpu_pct") is None or not r.get("deliveries_per_s"):
        return None
    return r["server_cpu_pct"] / 100.0 / r["deliveries_per_s"] * 1e6


def fmt_num(v, digits=3):
    if v is None:
        return "—"
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 10 ** digits:
        return "{:,.0f}".format(v)
    return "{:,.{}f}".format(v, max(0, digits - 1 - int(math.floor(math.log10(a)))))


def fit(xs, ys):
    """least squares y = a + b x; returns (a, b, r2)"""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    return a, b, (1 - ss_res / ss_tot) if ss_tot else 1.0


def poss(label):
    return label + ("'" if label.endswith("s") else "'s")


def growth_word(f):
    """a change factor in words"""
    if f is None:
        return "?"
    if 0.85 <= f <= 1.18:
        return "about flat (%.2f×)" % f
    return "%.2f×" % f


# --------------------------------------------------------------- pub/sub sweeps
SWEEPS = {
    "subs": ("Subscribers of one topic", "subscribers of the topic", "1 topic, 1 publisher, 64-byte payloads"),
    "topics": ("Topics, 10,000 subscribers spread over them", "topics",
               "10,000 subscribers (subscriber i on topic i mod K), 2 publishers, 64-byte payloads"),
    "size": ("Payload size", "payload bytes", "1,000 subscribers of 1 topic, 1 publisher"),
}


def sweep_sentence(records, sweep):
    """what grows linearly and what does not, from this run's numbers"""
    parts = []
    for s, label in SERVERS:
        pts = [(x, r) for x, r, _ in points(records, sweep, s) if r]
        if len(pts) < 2:
            parts.append("%s: not enough points." % label)
            continue
        (x0, r0), (x1, r1) = pts[0], pts[-1]
        d0, d1 = r0.get("deliveries_per_s") or 0, r1.get("deliveries_per_s") or 0
        m0, m1 = r0.get("e2e_messages_per_s") or 0, r1.get("e2e_messages_per_s") or 0
        c0, c1 = cpu_us(r0), cpu_us(r1)
        p0, p1 = r0.get("latency_p99_ms"), r1.get("latency_p99_ms")
        peak = max(pts, key=lambda p: p[1].get("deliveries_per_s") or 0)
        xf = x1 / x0
        txt = "%s: from %s to %s %s (%s×), deliveries/s went %s → %s (%s, peak %s at %s), messages/s %s → %s" % (
            label, "{:,}".format(x0), "{:,}".format(x1), SWEEPS[sweep][1], fmt_num(xf),
            fmt_rate(d0), fmt_rate(d1), growth_word(d1 / d0 if d0 else None),
            fmt_rate(peak[1].get("deliveries_per_s")), "{:,}".format(peak[0]), fmt_rate(m0), fmt_rate(m1))
        if c0 and c1:
            txt += ", server CPU per delivery %s → %s µs (%s)" % (fmt_num(c0), fmt_num(c1), growth_word(c1 / c0))
        if p0 is not None and p1 is not None:
            txt += ", p99 %s → %s ms" % (fmt_num(p0), fmt_num(p1))
        if sweep == "size" and d0 and d1:
            b0, b1 = d0 * x0, d1 * x1
            txt += "; payload bytes delivered/s %s → %s MiB/s" % (fmt_num(b0 / 1048576), fmt_num(b1 / 1048576))
        lg = [p for p in pts if (p[1].get("cpu_pct") or 0) >= SAT_PCT]
        if lg:
            txt += " (loadgen ≥ %d%% of a core at %s: there the loadgen, not the server, was the limit)" % (
                SAT_PCT, ", ".join("{:,}".format(p[0]) for p in lg))
        parts.append(txt + ".")
    # the reading: what is linear and what is not
    reading = []
    for s, label in SERVERS:
        pts = [(x, r) for x, r, _ in points(records, sweep, s) if r and cpu_us(r)]
        if len(pts) < 2:
            continue
        (xa, ra), (xb, rb) = pts[-2], pts[-1]
        ca, cb = cpu_us(ra), cpu_us(rb)
        c0 = cpu_us(pts[0][1])
        if sweep == "subs":
            # cost = per publish + per delivery: flat CPU per delivery at the
            # top means the cost grows linearly with the subscribers
            if 0.75 <= cb / ca <= 1.33:
                reading.append("%s CPU per delivery falls from %s µs (few subscribers: the per-publish cost "
                               "dominates) and levels off at %s-%s µs from %s subscribers on, so above that its "
                               "cost grows linearly with the subscribers" % (
                                   poss(label), fmt_num(c0), fmt_num(min(ca, cb)), fmt_num(max(ca, cb)),
                                   "{:,}".format(xa)))
            else:
                reading.append("%s CPU per delivery still changes %.2f× between %s and %s subscribers "
                               "(%s → %s µs): not linear there" % (
                                   poss(label), cb / ca, "{:,}".format(xa), "{:,}".format(xb), fmt_num(ca), fmt_num(cb)))
        elif sweep == "topics":
            # deliveries per publish = 10,000 / topics: compare CPU per publish
            def per_pub(r):
                m = r.get("e2e_messages_per_s") or r.get("published_per_s")
                return r["server_cpu_pct"] / 100.0 / m * 1e6 if m else None
            pa, pb, p0 = per_pub(ra), per_pub(rb), per_pub(pts[0][1])
            if pa and pb and p0:
                reading.append("%s CPU per publish went %s µs (1 topic, 10,000 deliveries each) → %s µs (%s "
                               "topics) → %s µs (%s topics, %s deliveries each): %s" % (
                                   poss(label), fmt_num(p0), fmt_num(pa), "{:,}".format(xa), fmt_num(pb),
                                   "{:,}".format(xb), fmt_num(10000 / xb),
                                   "with few subscribers per topic the cost per publish, not per delivery, "
                                   "sets the rate, so deliveries/s falls roughly as 1/topics" if xb >= 1000 else
                                   "the cost per delivery dominates"))
        elif sweep == "size":
            # linear in bytes when CPU per delivery grows like the size
            grow, sz = cb / ca, xb / xa
            reading.append("%s: between %s and %s bytes the CPU per delivery grew %.2f× for %.2f× the bytes "
                           "(%s ns per payload byte at %s B)%s" % (
                               label, "{:,}".format(xa), "{:,}".format(xb), grow, sz,
                               fmt_num(cb * 1000 / xb), "{:,}".format(xb),
                               ": linear in the bytes" if 0.75 * sz <= grow <= 1.33 * sz else
                               (": less than linear, a per-message cost still weighs" if grow < 0.75 * sz
                                else ": more than linear")))
    if reading:
        parts.append("Reading: " + "; ".join(reading) + ".")
    return " ".join(parts)


def sweep_chart(records, sweep, work, title):
    """two panels: deliveries/s and p99 (end-to-end) against x, log x"""
    for s, _ in SERVERS:
        with open(os.path.join(work, "growth-%s-%s.dat" % (sweep, s)), "w") as f:
            for x, r, _ in points(records, sweep, s):
                if not r:
                    continue
                f.write("%d %.6g %.6g %.6g %.6g\n" % (
                    x, (r.get("deliveries_per_s") or 0) / 1e6, r.get("latency_p99_ms") or 0,
                    r.get("e2e_latency_p99_ms") or 0, cpu_us(r) or 0))
    gp = [
        "set terminal pngcairo size 1280,480 font 'DejaVu Sans,11'",
        "set output 'growth-%s.png'" % sweep,
        "set multiplot layout 1,3 title '%s' font ',13'" % title.replace("'", "''"),
        "set logscale x",
        "set grid",
        "set key top right",
        "set xlabel '%s'" % SWEEPS[sweep][1],
        "set yrange [0:*]",
    ]
    # deliveries/s and latency span orders of magnitude over a sweep: log y
    for col, ylabel, logy in [(2, "deliveries/s (millions, log scale)", True),
                              (3, "p99 delivery latency (ms, log scale)", True),
                              (5, "server CPU per delivery (µs)", False)]:
        gp.append("set title '%s'" % ylabel)
        gp.append("set logscale y" if logy else "unset logscale y")
        gp.append("set yrange [*:*]" if logy else "set yrange [0:*]")
        gp.append("plot " + ", ".join(
            "'growth-%s-%s.dat' using 1:%d with linespoints lw 2 pt 7 lc rgb '%s' title '%s'" % (
                sweep, s, col, "#" + COLORS[s][2:], label) for s, label in SERVERS))
    gp.append("unset multiplot")
    with open(os.path.join(work, "growth-%s.gp" % sweep), "w") as f:
        f.write("\n".join(gp) + "\n")


# ------------------------------------------------------------------------- idle
def idle_sentence(records):
    parts = []
    for s, label in SERVERS:
        pts = [(x, r) for x, r, _ in points(records, "idle", s) if r and r.get("server_rss_after") is not None]
        if len(pts) < 2:
            parts.append("%s: not enough points." % label)
            continue
        xs = [float(r.get("held") or x) for x, r in pts]
        ys = [float(r["server_rss_after"]) for _, r in pts]
        f = fit(xs, ys)
        if not f:
            continue
        a, b, r2 = f
        per = [(r.get("server_rss_per_conn") or 0) for _, r in pts]
        parts.append("%s: RSS %s MiB at %s connections to %s MiB at %s; a line fits with R² = %.4f at %s KiB "
                     "per connection (intercept %s MiB) — %s; growth per connection measured at each point "
                     "%s KiB." % (
                         label, fmt_num(ys[0] / 1048576), "{:,}".format(int(xs[0])), fmt_num(ys[-1] / 1048576),
                         "{:,}".format(int(xs[-1])), r2, fmt_num(b / 1024), fmt_num(a / 1048576),
                         "linear" if r2 >= 0.99 else "not a straight line",
                         " / ".join(fmt_num(p / 1024) for p in per)))
    return " ".join(parts)


def idle_chart(records, work, title):
    for s, _ in SERVERS:
        with open(os.path.join(work, "growth-idle-%s.dat" % s), "w") as f:
            for x, r, _ in points(records, "idle", s):
                if r and r.get("server_rss_after") is not None:
                    f.write("%d %.6g %.6g\n" % (r.get("held") or x, r["server_rss_after"] / 1048576,
                                                 (r.get("server_rss_per_conn") or 0) / 1024))
    gp = [
        "set terminal pngcairo size 1280,480 font 'DejaVu Sans,11'",
        "set output 'growth-idle.png'",
        "set multiplot layout 1,2 title '%s' font ',13'" % title.replace("'", "''"),
        "set grid",
        "set key top left",
        "set xlabel 'idle subscribed connections'",
        "set yrange [0:*]",
        "set title 'server RSS with all connected (MiB)'",
        "plot " + ", ".join("'growth-idle-%s.dat' using 1:2 with linespoints lw 2 pt 7 lc rgb '%s' title '%s'" % (
            s, "#" + COLORS[s][2:], label) for s, label in SERVERS),
        "set title 'RSS growth per connection (KiB)'",
        "plot " + ", ".join("'growth-idle-%s.dat' using 1:3 with linespoints lw 2 pt 7 lc rgb '%s' title '%s'" % (
            s, "#" + COLORS[s][2:], label) for s, label in SERVERS),
        "unset multiplot",
    ]
    with open(os.path.join(work, "growth-idle.gp"), "w") as f:
        f.write("\n".join(gp) + "\n")


# ------------------------------------------------------------------------ table
def sweep_table(records, sweep):
    xs = sorted({x for s, _ in SERVERS for x, _, _ in points(records, sweep, s)})
    by = {(s, x): (r, rec) for s, _ in SERVERS for x, r, rec in points(records, sweep, s)}
    out = ["| %s | tidings deliveries/s | uWS deliveries/s | tidings ÷ uWS | tidings p99 ms | uWS p99 ms | "
           "tidings e2e p99 ms | uWS e2e p99 ms | tidings CPU/delivery µs | uWS CPU/delivery µs |" % SWEEPS[sweep][1],
           "|---" * 10 + "|"]
    for x in xs:
        cells = []
        rs = []
        for s, _ in SERVERS:
            r, rec = by.get((s, x), (None, None))
            rs.append(r)
        def c(r, fn):
            return fn(r) if r else "failed"
        t, u = rs
        ratio = "%.2f×" % (t["deliveries_per_s"] / u["deliveries_per_s"]) if t and u and u.get("deliveries_per_s") else "—"
        cells = [c(t, lambda r: fmt_rate(r.get("deliveries_per_s")) + (" ⚠" if (r.get("cpu_pct") or 0) >= SAT_PCT else "")),
                 c(u, lambda r: fmt_rate(r.get("deliveries_per_s")) + (" ⚠" if (r.get("cpu_pct") or 0) >= SAT_PCT else "")),
                 ratio,
                 c(t, lambda r: fmt_num(r.get("latency_p99_ms"))), c(u, lambda r: fmt_num(r.get("latency_p99_ms"))),
                 c(t, lambda r: fmt_num(r.get("e2e_latency_p99_ms"))), c(u, lambda r: fmt_num(r.get("e2e_latency_p99_ms"))),
                 c(t, lambda r: fmt_num(cpu_us(r))), c(u, lambda r: fmt_num(cpu_us(r)))]
        out.append("| {:,} | {} |".format(x, " | ".join(cells)))
    return out


def idle_table(records):
    xs = sorted({x for s, _ in SERVERS for x, _, _ in points(records, "idle", s)})
    by = {(s, x): r for s, _ in SERVERS for x, r, _ in points(records, "idle", s)}
    out = ["| connections | tidings RSS MiB | uWS RSS MiB | tidings KiB/conn | uWS KiB/conn | tidings ÷ uWS (per conn) |",
           "|---|---|---|---|---|---|"]
    for x in xs:
        t, u = by.get(("tidings", x)), by.get(("uws", x))
        def rss(r):
            return fmt_num(r["server_rss_after"] / 1048576) if r and r.get("server_rss_after") is not None else "failed"
        def per(r):
            return fmt_num(r["server_rss_per_conn"] / 1024) if r and r.get("server_rss_per_conn") is not None else "failed"
        ratio = ("%.2f×" % (t["server_rss_per_conn"] / u["server_rss_per_conn"])
                 if t and u and t.get("server_rss_per_conn") and u.get("server_rss_per_conn") else "—")
        out.append("| {:,} | {} | {} | {} | {} | {} |".format(x, rss(t), rss(u), per(t), per(u), ratio))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--elapsed", type=int, default=0)
    ap.add_argument("--quick", default="0")
    ap.add_argument("--placement", default="split")
    ap.add_argument("--window", default="32")
    ap.add_argument("--duration", default="4")
    ap.add_argument("--background-cpu", type=int, default=None)
    a = ap.parse_args()
    records = load(a.results)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    place = {"split": "the loadgen pinned to CPU 0, the server processes to the other CPU(s)",
             "shared": "nothing pinned"}.get(a.placement, a.placement)

    sentences = {}
    for sweep in ("subs", "topics", "size"):
        if any(r["scenario"] == sweep for r in records):
            sweep_chart(records, sweep, a.work, "%s — %s" % (SWEEPS[sweep][0], SWEEPS[sweep][2]))
            sentences[sweep] = sweep_sentence(records, sweep)
    if any(r["scenario"] == "idle" for r in records):
        idle_chart(records, a.work, "Server memory against idle subscribed connections (100 topics)")
        sentences["idle"] = idle_sentence(records)

    with open(os.path.join(a.out, "growth.json"), "w") as f:
        json.dump({"date": now, "command": "make bench-growth", "quick": a.quick == "1",
                   "placement": a.placement, "window": int(a.window), "duration_s": float(a.duration),
                   "elapsed_s": a.elapsed, "background_cpu_pct": a.background_cpu,
                   "readings": sentences, "runs": records}, f, indent=1)
        f.write("\n")

    L = ["<!-- growth:begin -->", "## Growth curves (`make bench-growth`)", ""]
    w = L.append
    w("Generated by `tests/bench/growth.sh` on %s in %d s%s; raw results in `growth.json`. "
      "Placement: %s. Background CPU just before the run: %s%% of a core." % (
          now, a.elapsed, " (**BENCH_QUICK=1: numbers meaningless**)" if a.quick == "1" else "",
          place, "?" if a.background_cpu is None else a.background_cpu))
    w("")
    w("The pub/sub sweeps run each point for %s s (after 1 s of warm-up) at maximum rate in end-to-end "
      "mode (`loadgen --rate 0 --e2e --window %s`): a publisher keeps at most %s messages that have not "
      "yet reached every subscriber of their topic. deliveries/s is then what the server really gets to "
      "everyone, and latency is bounded by the window instead of growing with a queue, so the curves "
      "show capacity and cost rather than the length of the run. A fixed rate would only show latency "
      "and CPU; the maximum is what grows or does not. \"p99\" is per delivery (publish → that "
      "subscriber); \"e2e p99\" is publish → last subscriber. CPU per delivery is the server's CPU "
      "(tidings: master, workers and redis-server) divided by the deliveries. ⚠: the loadgen used "
      "%d%% or more of its core, so it was (close to) the limit at that point." % (
          a.duration, a.window, a.window, SAT_PCT))
    w("")
    for sweep, fname in [("subs", "growth-subs.png"), ("topics", "growth-topics.png"), ("size", "growth-size.png")]:
        if sweep not in sentences:
            continue
        w("### %s (%s)" % (SWEEPS[sweep][0], SWEEPS[sweep][2]))
        w("")
        w("![%s](%s)" % (SWEEPS[sweep][0], fname))
        w("")
        w(sentences[sweep])
        w("")
        L.extend(sweep_table(records, sweep))
        w("")
    if "idle" in sentences:
        w("### Memory against idle subscribed connections")
        w("")
        w("A freshly started server for every point; the loadgen opens the connections at 5,000/s, each "
          "subscribes to one of 100 topics. RSS with all of them subscribed (VmRSS from /proc): tidings' "
          "worker processes (not the master or redis-server, as in scenario 5), uWS's node process.")
        w("")
        w("![memory](growth-idle.png)")
        w("")
        w(sentences["idle"])
        w("")
        L.extend(idle_table(records))
        w("")
    fails = [r for r in records if r.get("error") or not r.get("result")]
    issues = []
    for r in records:
        res = r.get("result") or {}
        if r.get("error") or not r.get("result"):
            issues.append("%s / %s / %s: %s" % (r["scenario"], r["server"], r["variant"], r.get("error") or "no result"))
        elif res.get("lost") or res.get("conn_failed") or res.get("conn_dropped") or res.get("e2e_expired"):
            issues.append("%s / %s / %s: lost %s, connections failed %s, dropped %s, e2e expired %s" % (
                r["scenario"], r["server"], r["variant"], res.get("lost"), res.get("conn_failed"),
                res.get("conn_dropped"), res.get("e2e_expired")))
    w("Flagged: " + ("; ".join(issues) if issues else "nothing (no failed run, loss, dropped "
                                                          "connection or expired message).") +
      (" (%d failed runs)" % len(fails) if fails else ""))
    w("<!-- growth:end -->")
    section = "\n".join(L) + "\n"

    sections.put(os.path.join(a.out, "benchmarks.md"), "growth", section)


if __name__ == "__main__":
    main()
