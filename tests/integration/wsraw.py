"""Raw HTTP and WebSocket helpers for inputs a library client cannot produce:
hand-written request heads, unmasked or malformed frames, invalid UTF-8,
clients that never answer pings.

Everything here is blocking and every read has a timeout.
"""
import base64
import hashlib
import json
import os
import socket
import struct
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SO_TIMESTAMPNS = 35  # Linux; also the control message's type (SCM_TIMESTAMPNS)

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class Timeout(AssertionError):
    pass


def connect(port, timeout=5.0, host="127.0.0.1", rcvbuf=None):
    """A connected TCP socket; `rcvbuf` sets SO_RCVBUF before the connect
    (a small one keeps the kernel from buffering much for a slow reader)."""
    if rcvbuf is None:
        s = socket.create_connection((host, port), timeout=timeout)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(timeout)
        try:
            s.connect((host, port))
        except BaseException:
            s.close()
            raise
    s.settimeout(timeout)
    return s


class ArrivalSocket:
    """A socket whose recv() notes when the kernel received what it returns
    (SO_TIMESTAMPNS): .arrival, in time.time() seconds.  The test process's
    own scheduling does not move it."""

    def __init__(self, sock):
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._s = sock
        self.arrival = None

    def recv(self, n):
        data, anc, _, _ = self._s.recvmsg(n, socket.CMSG_SPACE(16))
        for level, kind, value in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, ns = struct.unpack("qq", value[:16])
                self.arrival = sec + ns / 1e9
        return data

    def __getattr__(self, name):
        return getattr(self._s, name)


def new_key():
    return base64.b64encode(os.urandom(16)).decode()


def accept_for(key):
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def upgrade_request(path="/", key=None, host="127.0.0.1", version="13", extra=None,
                    method="GET", http="HTTP/1.1", omit=()):
    """Builds an upgrade request head.  `extra` is a list of (name, value)
    appended; `omit` names headers (lower case) to leave out."""
    key = new_key() if key is None else key
    headers = [("Host", host), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
               ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", version)]
    headers = [(n, v) for n, v in headers if n.lower() not in omit and v is not None]
    headers += list(extra or [])
    head = f"{method} {path} {http}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
    return head.encode()


class Response:
    def __init__(self, raw, eof):
        self.raw = raw
        self.eof = eof  # the server closed the connection after the response
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status_line = lines[0]
        parts = lines[0].split(" ", 2)
        self.version = parts[0]
        self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers.setdefault(name.strip().lower(), value.strip())
        if (self.header("transfer-encoding") or "").lower() == "chunked":
            self.body = _dechunk(self.body)

    def header(self, name):
        return self.headers.get(name.lower())

    def __repr__(self):
        return f"Response({self.raw[:300]!r}, eof={self.eof})"


def _dechunk(data):
    """A chunked body (RFC 9112 7.1) joined; what is incomplete is left out."""
    out = b""
    while True:
        line, sep, rest = data.partition(b"\r\n")
        size = line.split(b";")[0].strip()
        if not sep or not size or int(size, 16) == 0:
            return out
        n = int(size, 16)
        out += rest[:n]
        data = rest[n + 2:]


def read_head(sock, timeout=None):
    """Reads up to the end of an HTTP response head, within `timeout`
    seconds in all (None: the socket's own timeout for each read); returns
    (head with its blank line, what followed)."""
    data = b""
    deadline = None if timeout is None else time.monotonic() + timeout
    while b"\r\n\r\n" not in data:
        if deadline is not None:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"connection closed during the handshake: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


def read_until_eof(sock, timeout=5.0, limit=1 << 20):
    """Reads until the peer closes.  Returns (data, eof) where eof is False
    when the timeout expired first."""
    deadline = time.monotonic() + timeout
    data = b""
    while len(data) < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, False
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return data, False
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def http_exchange(port, request, timeout=5.0, host="127.0.0.1", sock=None):
    """Sends raw bytes, reads the whole response until the server closes.
    `sock`: a connected socket to use (and close) instead of a new one."""
    s = connect(port, timeout, host) if sock is None else sock
    try:
        s.sendall(request)
        data, eof = read_until_eof(s, timeout)
    finally:
        s.close()
    return Response(data, eof)


def http_get(port, path="/", timeout=5.0, headers=None, host="127.0.0.1"):
    head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
    head += "".join(f"{n}: {v}\r\n" for n, v in (headers or []))
    return http_exchange(port, (head + "\r\n").encode(), timeout, host)


def handshake(port, extra=(), path="/"):
    """Sends an upgrade request; returns the response (a Response).  A 101
    is returned as soon as its head is in, anything else only once the
    server has closed the connection (resp.eof) with the body read."""
    with connect(port) as s:
        s.sendall(upgrade_request(path=path, extra=list(extra)))
        head, rest = read_head(s)
        data = head + rest
        if data.startswith(b"HTTP/1.1 101 "):
            return Response(data, False)
        rest, eof = read_until_eof(s)
        return Response(data + rest, eof)


def build_frame(opcode, payload=b"", fin=True, mask=True, rsv=0, mask_key=None,
                length=None):
    """One WebSocket frame.  `length` overrides the declared payload length
    (to announce more than is sent)."""
    if isinstance(payload, str):
        payload = payload.encode()
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0x0F)
    n = len(payload) if length is None else length
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask:
        key = os.urandom(4) if mask_key is None else mask_key
        payload = bytes(c ^ key[i % 4] for i, c in enumerate(payload))
        head += key
    return head + payload


def close_payload(code, reason=b""):
    return struct.pack("!H", code) + reason


class RawWS:
    """A blocking WebSocket client on a plain socket."""

    def __init__(self, sock, leftover=b""):
        self.sock = sock
        self.buf = leftover
        self.response = None  # the 101, when open() made the handshake

    @classmethod
    def open(cls, port, path="/", timeout=5.0, extra=None, sock=None):
        """Connects and upgrades; `sock`: a connected socket to use instead
        of a new one (one that counts its bytes, or has a small buffer)."""
        s = connect(port, timeout) if sock is None else sock
        try:
            key = new_key()
            s.sendall(upgrade_request(path=path, key=key, extra=extra))
            head, rest = read_head(s, timeout)
            resp = Response(head, False)
            assert resp.status == 101, resp
            assert resp.header("sec-websocket-accept") == accept_for(key), resp
            ws = cls(s, rest)
            ws.response = resp
            return ws
        except BaseException:
            s.close()
            raise

    def send_raw(self, data):
        self.sock.sendall(data)

    def send_frame(self, opcode, payload=b"", **kw):
        self.sock.sendall(build_frame(opcode, payload, **kw))

    def send_text(self, text, **kw):
        self.send_frame(OP_TEXT, text, **kw)

    def send_json(self, obj):
        """One text message, compact JSON."""
        self.send_text(json.dumps(obj, separators=(",", ":")))

    def recv_json(self, timeout=5.0):
        """The next data message, which must be one whole text frame of
        JSON; returns (the decoded value, its raw bytes)."""
        fin, op, payload = self.recv_data(timeout)
        assert fin and op == OP_TEXT, (fin, op, payload[:200])
        return json.loads(payload), payload

    def subscribe(self, topic):
        self.send_json({"type": "subscribe", "topic": topic})
        msg, _ = self.recv_json()
        assert msg == {"status": "subscribed", "topic": topic}, msg

    def _fill(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout("timed out waiting for a frame")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise Timeout("timed out waiting for a frame") from None
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk

    def recv_frame(self, timeout=5.0):
        """Returns (fin, opcode, payload); raises EOFError on a closed
        connection (also ConnectionResetError), Timeout on timeout."""
        deadline = time.monotonic() + timeout
        self._fill(2, deadline)
        b0, b1 = self.buf[0], self.buf[1]
        n = b1 & 0x7F
        pos = 2
        if n == 126:
            self._fill(4, deadline)
            n = struct.unpack("!H", self.buf[2:4])[0]
            pos = 4
        elif n == 127:
            self._fill(10, deadline)
            n = struct.unpack("!Q", self.buf[2:10])[0]
            pos = 10
        assert not b1 & 0x80, "the server sent a masked frame"
        self._fill(pos + n, deadline)
        payload = self.buf[pos:pos + n]
        self.buf = self.buf[pos + n:]
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def recv_data(self, timeout=5.0, answer_pings=True):
        """Next text/binary/close frame; pings are answered (or not) and skipped."""
        deadline = time.monotonic() + timeout
        while True:
            fin, op, payload = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if op == OP_PING:
                if answer_pings:
                    self.send_frame(OP_PONG, payload)
                continue
            if op == OP_PONG:
                continue
            return fin, op, payload

    def expect_close(self, timeout=5.0):
        """Reads until a close frame; returns its code (None without one).
        Answers the close and then expects the server to close TCP."""
        fin, op, payload = self.recv_data(timeout)
        assert op == OP_CLOSE, f"expected a close frame, got opcode {op}: {payload[:200]!r}"
        code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
        try:
            self.send_frame(OP_CLOSE, payload[:2])
        except OSError:
            pass
        return code

    def wait_eof(self, timeout=5.0):
        """Reads and discards until the server closes TCP; returns the
        frames seen meanwhile."""
        deadline = time.monotonic() + timeout
        frames = []
        while True:
            try:
                frames.append(self.recv_frame(max(0.0, deadline - time.monotonic())))
            except (EOFError, ConnectionResetError):
                return frames

    def close_handshake(self, code=1000):
        """A clean close from the client: a close frame, the server's
        answer, then the server closes TCP (after which the server has
        forgotten the connection); the socket is closed."""
        self.send_frame(OP_CLOSE, close_payload(code))
        fin, op, payload = self.recv_data()
        assert op == OP_CLOSE and payload[:2] == close_payload(code), (op, payload)
        self.wait_eof()
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
