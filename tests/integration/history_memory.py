"""Measures what the history library keeps in Redis per message: the
numbers of docs/history.md.  Not a test (pytest does not collect it):

    make bin/unit/test_history_lib
    /usr/bin/python3 tests/integration/history_memory.py

Starts its own redis-server on a free loopback port, loads the library as
the server would, and for each payload size and message count publishes to
a fresh topic, then reads MEMORY USAGE ... SAMPLES 0 (every element counted)
of the stream and of the meta hash.  "full" publishes N messages with
maxlen N (nothing trimmed yet), "steady" publishes 10 N with maxlen N (the
window after exact trimming has run for a while).  Last, the cost of exact
(=) against approximate (~) trimming and of history reads, as redis-server's
CPU time per call.

Arguments are passed to redis-server, e.g. --stream-node-max-bytes 0.
"""
import subprocess
import sys
import os
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_history_redis import LIBTOOL, RedisServer  # noqa: E402

SIZES = (64, 1024)
TICK = os.sysconf("SC_CLK_TCK")
COUNTS = (100, 1000)


def proc_cpu(pid):
    """user + system seconds of the process pid"""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def main():
    lib = subprocess.run([str(LIBTOOL), "--print", "", "1000", "3600"], check=True,
                         capture_output=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        r = RedisServer(Path(tmp), *sys.argv[1:])
        r.start()
        try:
            r.call("FUNCTION", "LOAD", "REPLACE", lib)
            print(r.call("INFO", "server").split(b"\r\n")[1].decode())
            print("stream-node-max-bytes", r.call("CONFIG", "GET", "stream-node-max-bytes")[1].decode(),
                  "stream-node-max-entries", r.call("CONFIG", "GET", "stream-node-max-entries")[1].decode())
            print(f"{'payload':>7} {'kept':>5} {'mode':>6} {'stream B':>9} {'meta B':>6} "
                  f"{'B/msg':>6} {'B/msg - payload':>15}")
            for size in SIZES:
                payload = b"x" * size
                for n in COUNTS:
                    for mode, total in (("full", n), ("steady", 10 * n)):
                        topic = f"m{size}-{n}-{mode}"
                        conn = r.conn
                        for _ in range(total):  # pipelined
                            conn.send("FCALL", "tidings_publish", 1, topic, payload, n, 3600)
                        for _ in range(total):
                            conn.read()
                        stream = r.call("MEMORY", "USAGE", "{%s}:hist" % topic, "SAMPLES", 0)
                        meta = r.call("MEMORY", "USAGE", "{%s}:meta" % topic, "SAMPLES", 0)
                        assert r.call("XLEN", "{%s}:hist" % topic) == n
                        per = (stream + meta) / n
                        print(f"{size:>7} {n:>5} {mode:>6} {stream:>9} {meta:>6} {per:>6.1f} "
                              f"{per - size:>15.1f}")
            # CPU: redis-server's user + system time (/proc) over many pipelined
            # calls, so that time spent descheduled on a busy machine does not
            # count; the baseline PUBLISH is mostly the cost of a request.
            def cpu_per_call(label, *cmd, n=50000):
                c0 = proc_cpu(r.proc.pid)
                for _ in range(n // 1000):
                    for _ in range(1000):
                        r.conn.send(*cmd)
                    for _ in range(1000):
                        r.conn.read()
                print(f"{label}: {(proc_cpu(r.proc.pid) - c0) / n * 1e6:.1f} us CPU per call")

            p64 = b"x" * 64
            cpu_per_call("PUBLISH, 64 B", "PUBLISH", "c", p64)
            cpu_per_call("tidings_publish, 64 B, maxlen 1000 (exact =)",
                         "FCALL", "tidings_publish", 1, "cpu", p64, 1000, 3600)
            r.call("FUNCTION", "LOAD", "REPLACE",
                   lib.replace(b"'MAXLEN', '=',", b"'MAXLEN', '~',"))
            cpu_per_call("tidings_publish, 64 B, maxlen 1000 (approximate ~)",
                         "FCALL", "tidings_publish", 1, "cpu~", p64, 1000, 3600)
            cpu_per_call("tidings_history, 1 message of 64 B",
                         "FCALL_RO", "tidings_history", 1, "cpu", 0, 1, n=20000)
            cpu_per_call("tidings_history, 100 messages of 64 B",
                         "FCALL_RO", "tidings_history", 1, "cpu", 0, 100, n=5000)
        finally:
            r.kill()


if __name__ == "__main__":
    main()
