"""A local Redis Cluster for the tests: three masters with one replica each,
redis-server --cluster-enabled yes six times on free loopback ports, joined
with redis-cli --cluster create.  Each node keeps its files (append-only,
fsync always) in a directory of its own under the test's tmp_path; every
process is killed on stop()."""
import socket
import subprocess

from conftest import Redis
from helpers import wait_for

NODE_TIMEOUT_MS = 1000  # how soon a dead master is failed over


def cluster_port(avoid):
    """A free port p whose cluster bus port p + 10000 is free too."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p > 55535 or p in avoid or p + 10000 in avoid:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", p + 10000))
        except OSError:
            continue
        return p


class RedisCluster:
    def __init__(self, tmp_path, masters=3, replicas=1):
        self.nodes = []
        used = set()
        for i in range(masters * (1 + replicas)):
            port = cluster_port(used)
            used |= {port, port + 10000}
            r = Redis(tmp_path / f"node{i}", "--cluster-enabled", "yes",
                      "--cluster-config-file", "nodes.conf",
                      "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                      "--appendonly", "yes", "--appendfsync", "always")
            r.port = port
            self.nodes.append(r)
        self.replicas = replicas

    def start(self):
        for r in self.nodes:
            r.start()
        out = subprocess.run(
            ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{r.port}" for r in self.nodes],
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        wait_for("the cluster to be ok", lambda: all(self.state(r) == "ok" for r in self.nodes),
                 timeout=30)
        # a replica can take over only once it has synchronised with its master
        wait_for("every replica in sync", lambda: sum(self.in_sync(r) for r in self.nodes) ==
                 len(self.nodes) - len(self.nodes) // (1 + self.replicas), timeout=30)
        return self

    @staticmethod
    def in_sync(r):
        info = r.cli("INFO", "replication").decode()
        return "role:slave" in info and "master_link_status:up" in info

    def stop(self):
        for r in self.nodes:
            r.kill()

    def live(self):
        return [r for r in self.nodes if r.proc is not None and r.proc.poll() is None]

    @staticmethod
    def state(r):
        try:
            info = r.cli("CLUSTER", "INFO").decode()
        except subprocess.SubprocessError:
            return None
        for line in info.splitlines():
            if line.startswith("cluster_state:"):
                return line.split(":", 1)[1].strip()
        return None

    @property
    def seeds(self):
        return ",".join(f"127.0.0.1:{r.port}" for r in self.nodes[:2])

    @staticmethod
    def keyslot(key):
        """CRC16/XMODEM of the key mod 16384 (no hash tags in topic names)."""
        crc = 0
        for c in key.encode():
            crc ^= c << 8
            for _ in range(8):
                crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
        return crc % 16384

    def owners(self):
        """{slot: node} as a live node sees the cluster now."""
        out = {}
        for line in self.live()[0].cli("CLUSTER", "NODES").decode().splitlines():
            f = line.split()
            if "master" not in f[2] or "fail" in f[2]:
                continue
            port = int(f[1].split("@")[0].rsplit(":", 1)[1])
            node = next(r for r in self.nodes if r.port == port)
            for rng in f[8:]:
                if rng.startswith("["):
                    continue  # a slot being migrated
                lo, _, hi = rng.partition("-")
                for slot in range(int(lo), int(hi or lo) + 1):
                    out[slot] = node
        return out

    def owner(self, slot):
        """The node serving slot, or None."""
        return self.owners().get(slot)

    def wait_failover(self, dead, slot, timeout=30):
        """Waits until a live node serves slot, which the killed `dead` did."""
        def promoted():
            o = self.owner(slot)
            return o is not None and o is not dead and self.state(self.live()[0]) == "ok"
        wait_for(f"slot {slot} failed over", promoted, timeout=timeout)
        return self.owner(slot)
