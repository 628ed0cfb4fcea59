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
from report import num as fmt_num
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
    "size": ("Payload size", "payload bytes", "1,000 subscribers of 1 topic, 1 publisher; both servers take "
             "messages up to 128 KiB and queue 3 MiB per connection, so that a 64 KiB payload and a window of "
             "32 of them fit"),
}


def per10(x0, x1, v0, v1):
    """the factor by which v changes per 10x of x between two points"""
    if not v0 or not v1 or x1 <= x0:
        return None
    return (v1 / v0) ** (1.0 / math.log10(x1 / x0))


def fword(f):
    """a factor as ×N (grows) or ÷N (falls)"""
    if f is None:
        return "?"
    return "×" + fmt_num(f, 2) if f >= 1 else "÷" + fmt_num(1 / f, 2)


def shape(f):
    """how a quantity behaves per 10x of x: flat, falls ~10x, grows, ..."""
    if f is None:
        return None
    if 0.75 <= f <= 1.33:
        return "flat"
    if f > 1.33:
        return "grows"
    if 1 / 14.0 <= f <= 1 / 7.0:
        return "falls10"
    return "between" if f > 1 / 7.0 else "fallsmore"


# what the deliveries/s per 10x of x says, per sweep and shape
MEANING = {
    "subs": {
        "flat": "flat: linear in deliveries (a message to 10× the subscribers costs 10× as much; messages/s "
                "falls ~10× per 10× subscribers)",
        "grows": "grows: less than linear in deliveries, the per-publish cost still weighs",
        "between": "falls: worse than linear, the cost per delivery grows with the subscribers",
        "falls10": "falls ~10×: the cost per delivery grows like the subscribers (quadratic in all)",
        "fallsmore": "falls more than 10×: far worse than linear",
    },
    "topics": {
        "flat": "flat: the cost is per delivery, the number of topics does not matter",
        "grows": "grows: more topics cost less per delivery",
        "between": "falls: partly a cost per publish (fewer subscribers per topic share it)",
        "falls10": "falls ~10×: the cost is per publish (messages/s about flat), deliveries/s follows the "
                   "subscribers per topic",
        "fallsmore": "falls more than 10×: even messages/s falls, the cost per publish grows with the topics",
    },
    "size": {
        "flat": "flat: the per-message cost dominates, the payload bytes are nearly free",
        "grows": "grows (more bytes, more deliveries/s: not a cost of the size)",
        "between": "falls, less than 10×: part per message, part per byte",
        "falls10": "falls ~10×: linear in the bytes (payload bytes/s about flat)",
        "fallsmore": "falls more than 10×: worse than linear in the bytes",
    },
}


def msgs_per_s(r):
    return r.get("e2e_messages_per_s") or r.get("published_per_s") if r else None


def loglog_per10(pts, fn):
    """per-10x factor of the least-squares line through (log x, log fn(r))"""
    xy = [(math.log10(x), math.log10(fn(r))) for x, r in pts if fn(r)]
    f = fit([a for a, _ in xy], [b for _, b in xy]) if len(xy) >= 2 else None
    return 10 ** f[1] if f else None


def sweep_sentence(records, sweep):
    """what grows linearly and what does not, from this run's numbers: the
    factor per 10x of x of deliveries/s between neighbouring points, read as
    in MEANING, plus p99 and CPU per delivery over the whole sweep"""
    what = SWEEPS[sweep][1]
    parts = []
    for s, label in SERVERS:
        pts = [(x, r) for x, r, _ in points(records, sweep, s) if r and r.get("deliveries_per_s")]
        if len(pts) < 2:
            parts.append("**%s**: not enough points with deliveries." % label)
            continue
        # steps of at least 3x in x (a factor per 10x from a 2x step mostly
        # magnifies noise): anchors picked greedily, the last point always one
        anchors = [pts[0]]
        for x, r in pts[1:]:
            if x >= 3 * anchors[-1][0]:
                anchors.append((x, r))
        if anchors[-1][0] != pts[-1][0]:
            if len(anchors) > 1:
                anchors[-1] = pts[-1]
            else:
                anchors.append(pts[-1])
        steps = []
        for (x0, r0), (x1, r1) in zip(anchors, anchors[1:]):
            f = per10(x0, x1, r0["deliveries_per_s"], r1["deliveries_per_s"])
            m = per10(x0, x1, msgs_per_s(r0), msgs_per_s(r1))
            steps.append((x0, x1, f, shape(f), m))
        # neighbouring steps of the same shape read together
        groups = []
        for st in steps:
            if groups and groups[-1][-1][3] == st[3]:
                groups[-1].append(st)
            else:
                groups.append([st])
        reads = []
        for g in groups:
            rd = "%s from %s to %s" % (", ".join(fword(st[2]) for st in g), "{:,}".format(g[0][0]),
                                       "{:,}".format(g[-1][1]))
            if len(g) > 1:
                rd += " (%s)" % ", ".join("%s→%s" % ("{:,}".format(st[0]), "{:,}".format(st[1])) for st in g)
            rd += ": " + MEANING[sweep].get(g[0][3], "?")
            m = per10(g[0][0], g[-1][1], msgs_per_s(dict(anchors)[g[0][0]]), msgs_per_s(dict(anchors)[g[-1][1]]))
            if m and sweep != "size":   # with a fixed audience messages/s says nothing more
                rd += " [messages/s %s per 10×]" % fword(m)
            reads.append(rd)
        txt = "**%s**: deliveries/s per 10× %s %s" % (label, what, "; then ".join(reads))
        extra = []
        c0, c1 = cpu_us(pts[0][1]), cpu_us(pts[-1][1])
        if c0 and c1:
            extra.append("server CPU per delivery %s → %s µs (%s per 10×)" % (
                fmt_num(c0), fmt_num(c1), fword(loglog_per10(pts, cpu_us))))
        pf = loglog_per10(pts, lambda r: r.get("latency_p99_ms"))
        if pf:
            extra.append("p99 %s → %s ms (%s per 10×%s)" % (
                fmt_num(pts[0][1].get("latency_p99_ms")), fmt_num(pts[-1][1].get("latency_p99_ms")), fword(pf),
                ", linear in the %s" % what if 7 <= pf <= 14 else ""))
        if sweep == "size":
            bytes_pts = [(x, {"b": r["deliveries_per_s"] * x}) for x, r in pts]
            bf = loglog_per10(bytes_pts, lambda r: r["b"])
            extra.append("payload bytes delivered/s %s → %s MiB/s (%s per 10×)" % (
                fmt_num(pts[0][1]["deliveries_per_s"] * pts[0][0] / 1048576),
                fmt_num(pts[-1][1]["deliveries_per_s"] * pts[-1][0] / 1048576), fword(bf)))
        lg = [x for x, r in pts if (r.get("cpu_pct") or 0) >= SAT_PCT]
        if lg:
            extra.append("the loadgen used ≥ %d%% of a core at %s, so there it, not the server, was the limit" % (
                SAT_PCT, ", ".join("{:,}".format(x) for x in lg)))
        extra = "; ".join(extra)
        parts.append(txt + (". " + extra[:1].upper() + extra[1:] if extra else "") + ".")
    # side by side at the top of the range
    t = [(x, r) for x, r, _ in points(records, sweep, "tidings") if r]
    u = {x: r for x, r, _ in points(records, sweep, "uws") if r}
    t = [(x, r) for x, r in t if r.get("deliveries_per_s")][-1:] if t and t[-1][1].get("deliveries_per_s") else []
    if t and t[-1][0] in u and u[t[-1][0]].get("deliveries_per_s"):
        x, r = t[-1]
        parts.append("At %s %s tidings delivers %.2f× uWS's rate." % (
            "{:,}".format(x), what, (r.get("deliveries_per_s") or 0) / u[x]["deliveries_per_s"]))
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
        elif res.get("mode") != "idle" and not res.get("deliveries"):
            issues.append("%s / %s / %s: no delivery in the window (%s of %s publishes acknowledged in all)" % (
                r["scenario"], r["server"], r["variant"], res.get("acked_total"), res.get("published_total")))
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
