"""JWT authentication at the WebSocket handshake and per-topic permissions.

With --jwt-secret / --jwt-secret-file (HS256) or --jwt-public-key (RS256 for
an RSA key, ES256 for a P-256 key) the upgrade on `/` needs a token, from
"Authorization: Bearer", else "?token=", else the Sec-WebSocket-Protocol
pair "tidings.jwt" + "tidings.jwt.<jwt>".  A missing or invalid token is
answered 401 with "WWW-Authenticate: Bearer" and no upgrade; the algorithm
is the configured one, never the token's.  The "subscribe" and "publish"
claims list the topic patterns a client may use; anything else gets a
"forbidden" error and the connection stays open.

HS256 tokens are made with the standard library (make_jwt); RS256 and ES256
tokens are signed with the openssl command line tool.
"""
import base64
import hashlib
import hmac
import json
import subprocess
import time

import pytest

import wsraw
from conftest import free_port, run_tidings
from helpers import (check_refused, expect_silence, recv_json, request, run, send_json,
                     subscribe, ws_connect)
from wsraw import handshake

SECRET = "test-secret-do-not-use-in-production"
ALL = {"subscribe": ["*"], "publish": ["*"]}  # the claims of a client allowed everything
FORBIDDEN = {"error": "Not allowed for this topic", "code": "forbidden"}
# why a handshake was refused, from the 401 body "Unauthorized: <reason>"
NO_TOKEN, MALFORMED, BAD_ALG = "no token", "malformed token", "token algorithm not accepted"
BAD_SIG, EXPIRED, NOT_YET = "bad token signature", "token expired", "token not yet valid"


# ---- tokens ----

def b64url(data):
    """base64url without padding (RFC 7515 section 2)."""
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def signing_input(claims, header):
    """b64url(header) "." b64url(claims): the bytes a JWS signature covers."""
    def part(obj):
        return b64url(json.dumps(obj, separators=(",", ":")))
    return part(header) + "." + part(claims)


HMAC_HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def make_jwt(claims, secret, alg="HS256", header=None):
    """A JWS compact token (header.payload.signature) with an HMAC signature.

    claims: the payload, e.g. {"sub": "alice", "exp": int(time.time()) + 60,
            "subscribe": ["news.*"], "publish": ["news.sports"]}.
    secret: the HMAC key, str (UTF-8 encoded) or bytes.
    alg:    "HS256" (HMAC-SHA-256, what --jwt-secret means), "HS384" or
            "HS512"; it picks the hash and is the header's "alg".
    header: the whole header to use instead of {"alg": alg, "typ": "JWT"}
            (whatever its "alg" says, the signature is made with `alg`).
    """
    if header is None:
        header = {"alg": alg, "typ": "JWT"}
    key = secret.encode() if isinstance(secret, str) else secret
    data = signing_input(claims, header)
    sig = hmac.new(key, data.encode("ascii"), HMAC_HASHES[alg]).digest()
    return data + "." + b64url(sig)


def der_ecdsa_to_raw(der, size=32):
    """An ECDSA signature as openssl writes it, the DER of
        ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }
    to the JWS form: r || s, each `size` bytes big-endian (RFC 7518
    section 3.4; 32 bytes each for P-256)."""
    def tlv(buf, pos, tag):
        assert buf[pos] == tag, f"expected tag {tag:#x} at {pos}: {buf.hex()}"
        n, pos = buf[pos + 1], pos + 2
        if n & 0x80:  # long form: the next n & 0x7f bytes are the length
            k = n & 0x7F
            n, pos = int.from_bytes(buf[pos:pos + k], "big"), pos + k
        return buf[pos:pos + n], pos + n

    body, end = tlv(der, 0, 0x30)
    assert end == len(der), der.hex()
    r, pos = tlv(body, 0, 0x02)
    s, pos = tlv(body, pos, 0x02)
    assert pos == len(body), der.hex()
    # INTEGERs are signed: a leading 0x00 keeps a high first bit positive
    return b"".join(int.from_bytes(x, "big").to_bytes(size, "big") for x in (r, s))


def openssl_sign(data, private_key):
    """The DER signature (SHA-256) of data with a PEM private key file."""
    return subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(private_key)],
                          input=data.encode("ascii"), capture_output=True, check=True,
                          timeout=20).stdout


def make_jwt_pk(claims, private_key, alg):
    """An RS256 or ES256 token signed by openssl with a private key file."""
    data = signing_input(claims, {"alg": alg, "typ": "JWT"})
    sig = openssl_sign(data, private_key)
    if alg == "ES256":
        sig = der_ecdsa_to_raw(sig)
    return data + "." + b64url(sig)


def valid_for(seconds=300, **claims):
    """Claims that expire `seconds` from now, allowing everything unless
    overridden."""
    return {**ALL, "exp": int(time.time()) + seconds, **claims}


# ---- keys (openssl CLI) ----

def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Private and public PEM files: rsa (2048), ec (P-256), and, for the
    start-up checks, rsa1024 and p384."""
    d = tmp_path_factory.mktemp("keys")
    gen = {"rsa": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
           "rsa1024": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
           "ec": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
           "p384": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"]}
    out = {}
    for name, opts in gen.items():
        priv, pub = d / f"{name}.pem", d / f"{name}.pub.pem"
        openssl("genpkey", *opts, "-out", str(priv))
        openssl("pkey", "-in", str(priv), "-pubout", "-out", str(pub))
        out[name] = (priv, pub)
    return out


# ---- handshakes ----

def bearer(token):
    return [("Authorization", f"Bearer {token}")]


def status_with(srv, token):
    """The handshake status with the token as a Bearer header."""
    return handshake(srv.port, bearer(token)).status


def assert_refused(srv, extra=(), path="/", reason=None):
    """401, "WWW-Authenticate: Bearer", no upgrade, connection closed; with
    `reason`, the body "Unauthorized: <reason>" says why (so that a test
    meant to hit one check does not pass on another)."""
    resp = handshake(srv.port, extra, path)
    assert resp.status == 401, resp
    assert resp.header("www-authenticate") == "Bearer", resp
    assert resp.header("upgrade") is None and resp.header("sec-websocket-accept") is None, resp
    assert resp.eof, resp
    if reason is not None:
        assert resp.body == f"Unauthorized: {reason}\n".encode(), resp
    return resp


def assert_serves_with(srv, token):
    """A fresh client with a valid token still gets a pong."""
    async def go():
        async with ws_connect(srv.url, extra_headers=bearer(token)) as ws:
            assert await request(ws, {"type": "ping"}) == {"type": "pong"}
    run(go(), timeout=15)


def hs256_server(start_server, *args):
    return start_server(args=["--jwt-secret", SECRET, *args])


# ---- no key: anonymous ----

def test_without_a_key_access_is_anonymous(start_server):
    srv = start_server()
    assert "anonymous access" in srv.log_text()

    async def go():
        async with ws_connect(srv.url) as sub, ws_connect(srv.url) as pub:
            await subscribe(sub, "any.topic")
            assert await request(pub, {"type": "publish", "topic": "any.topic", "payload": 1}) \
                == {"status": "published", "topic": "any.topic"}
            assert await recv_json(sub) == {"type": "notification", "topic": "any.topic",
                                            "payload": 1}
    run(go())
    # a token is not looked at
    assert handshake(srv.port, bearer("not.a.token")).status == 101


# ---- refusals ----

def test_missing_token_is_401(start_server):
    srv = hs256_server(start_server)
    assert "JWT authentication on (HS256)" in srv.log_text()
    assert SECRET not in srv.log_text()
    assert_refused(srv, reason=NO_TOKEN)
    # empty carriers and another scheme are no token either
    assert_refused(srv, [("Authorization", "Bearer ")], reason=NO_TOKEN)
    assert_refused(srv, [("Authorization", "Basic dXNlcjpwYXNz")], reason=NO_TOKEN)
    assert_refused(srv, path="/?token=", reason=NO_TOKEN)
    assert_refused(srv, [("Sec-WebSocket-Protocol", "tidings.jwt")], reason=NO_TOKEN)
    # a plain GET / is not a handshake and needs nothing
    assert wsraw.http_get(srv.port, "/").status == 200
    assert_serves_with(srv, make_jwt(valid_for(), SECRET))


def test_expiry_with_leeway(start_server):
    srv = hs256_server(start_server)  # default leeway: 30 s
    now = int(time.time())
    assert status_with(srv, make_jwt({**ALL, "exp": now - 120}, SECRET)) == 401
    assert status_with(srv, make_jwt({**ALL, "exp": now - 60}, SECRET)) == 401
    assert status_with(srv, make_jwt({**ALL, "exp": now - 10}, SECRET)) == 101
    assert status_with(srv, make_jwt({**ALL, "exp": now + 60}, SECRET)) == 101
    assert status_with(srv, make_jwt(ALL, SECRET)) == 101  # no exp: never expires
    assert_refused(srv, bearer(make_jwt({**ALL, "exp": now - 60}, SECRET)), reason=EXPIRED)
    assert_serves_with(srv, make_jwt(valid_for(), SECRET))


def test_not_before_with_leeway(start_server):
    srv = hs256_server(start_server)
    now = int(time.time())
    assert status_with(srv, make_jwt({**ALL, "nbf": now + 120}, SECRET)) == 401
    assert status_with(srv, make_jwt({**ALL, "nbf": now + 60}, SECRET)) == 401
    assert status_with(srv, make_jwt({**ALL, "nbf": now + 10}, SECRET)) == 101
    assert status_with(srv, make_jwt({**ALL, "nbf": now - 10}, SECRET)) == 101
    assert_refused(srv, bearer(make_jwt({**ALL, "nbf": now + 60}, SECRET)), reason=NOT_YET)
    assert_serves_with(srv, make_jwt(valid_for(), SECRET))


def test_leeway_option(start_server):
    now = int(time.time())
    strict = hs256_server(start_server, "--jwt-leeway", "0")
    assert status_with(strict, make_jwt({**ALL, "exp": now - 5}, SECRET)) == 401
    assert status_with(strict, make_jwt({**ALL, "nbf": now + 5}, SECRET)) == 401
    assert_serves_with(strict, make_jwt(valid_for(), SECRET))
    lax = hs256_server(start_server, "--jwt-leeway", "120")
    assert status_with(lax, make_jwt({**ALL, "exp": now - 60}, SECRET)) == 101
    assert status_with(lax, make_jwt({**ALL, "nbf": now + 60}, SECRET)) == 101
    assert status_with(lax, make_jwt({**ALL, "exp": now - 180}, SECRET)) == 401


def test_tampered_token_is_401(start_server):
    srv = hs256_server(start_server)
    token = make_jwt(valid_for(subscribe=["mine"], publish=[]), SECRET)
    head, payload, sig = token.split(".")
    # a payload granting more, with the signature of the original
    forged = b64url(json.dumps(valid_for()))
    assert_refused(srv, bearer(f"{head}.{forged}.{sig}"), reason=BAD_SIG)
    # one signature byte changed
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[0] ^= 1
    assert_refused(srv, bearer(f"{head}.{payload}.{b64url(bytes(raw))}"), reason=BAD_SIG)
    # the signature left out
    assert_refused(srv, bearer(f"{head}.{payload}."), reason=BAD_SIG)
    assert status_with(srv, token) == 101
    assert_serves_with(srv, token)


def test_other_secret_is_401(start_server):
    srv = hs256_server(start_server)
    assert_refused(srv, bearer(make_jwt(valid_for(), "another-secret")), reason=BAD_SIG)
    assert_refused(srv, bearer(make_jwt(valid_for(), SECRET + "x")), reason=BAD_SIG)
    assert_serves_with(srv, make_jwt(valid_for(), SECRET))


@pytest.mark.parametrize("trailing_dot", [True, False], ids=["with-dot", "without-dot"])
def test_alg_none_is_401(start_server, trailing_dot):
    srv = hs256_server(start_server)
    token = signing_input(valid_for(), {"alg": "none", "typ": "JWT"})
    # with the dot: three parts, refused for its algorithm; without: not
    # even three parts
    reason = BAD_ALG if trailing_dot else MALFORMED
    if trailing_dot:
        token += "."
    assert_refused(srv, bearer(token), reason=reason)
    assert_refused(srv, path="/?token=" + token, reason=reason)
    # "none" with an HMAC signature after all is no better
    assert_refused(srv, bearer(make_jwt(valid_for(), SECRET,
                                        header={"alg": "none", "typ": "JWT"})), reason=BAD_ALG)
    assert_serves_with(srv, make_jwt(valid_for(), SECRET))


def test_other_hmac_algorithm_is_401(start_server):
    srv = hs256_server(start_server)
    assert_refused(srv, bearer(make_jwt(valid_for(), SECRET, alg="HS384")), reason=BAD_ALG)
    assert_refused(srv, bearer(make_jwt(valid_for(), SECRET, alg="HS512")), reason=BAD_ALG)
    # an HS256 signature under a header that claims HS384
    assert_refused(srv, bearer(make_jwt(valid_for(), SECRET,
                                        header={"alg": "HS384", "typ": "JWT"})), reason=BAD_ALG)
    assert_serves_with(srv, make_jwt(valid_for(), SECRET))


# ---- public keys ----

async def pubsub_roundtrip(url, token, topic="keys.t"):
    """Two clients with the token: one subscribes, the other publishes."""
    async with ws_connect(url, extra_headers=bearer(token)) as sub, \
            ws_connect(url, extra_headers=bearer(token)) as pub:
        await subscribe(sub, topic)
        assert await request(pub, {"type": "publish", "topic": topic, "payload": [1, 2]}) == \
            {"status": "published", "topic": topic}
        assert await recv_json(sub) == {"type": "notification", "topic": topic, "payload": [1, 2]}


def test_rs256_token_and_algorithm_confusion(start_server, keys):
    priv, pub = keys["rsa"]
    srv = start_server(args=["--jwt-public-key", str(pub)])
    assert "JWT authentication on (RS256)" in srv.log_text()
    token = make_jwt_pk(valid_for(), priv, "RS256")
    assert status_with(srv, token) == 101
    run(pubsub_roundtrip(srv.url, token))
    # the attacker knows the public key and uses its PEM text as an HS256 secret
    pem = pub.read_bytes()
    assert_refused(srv, bearer(make_jwt(valid_for(), pem)), reason=BAD_ALG)
    assert_refused(srv, bearer(make_jwt(valid_for(), pem.rstrip(b"\n"))), reason=BAD_ALG)
    # an RS256 token signed by another key, an ES256 token
    other_priv = keys["rsa1024"][0]
    assert_refused(srv, bearer(make_jwt_pk(valid_for(), other_priv, "RS256")), reason=BAD_SIG)
    assert_refused(srv, bearer(make_jwt_pk(valid_for(), keys["ec"][0], "ES256")),
                   reason=BAD_ALG)
    # expiry applies to RS256 too
    assert_refused(srv, bearer(make_jwt_pk(valid_for(-120), priv, "RS256")), reason=EXPIRED)
    assert_serves_with(srv, token)


def test_es256_token(start_server, keys):
    priv, pub = keys["ec"]
    srv = start_server(args=["--jwt-public-key", str(pub)])
    assert "JWT authentication on (ES256)" in srv.log_text()
    token = make_jwt_pk(valid_for(), priv, "ES256")
    assert len(base64.urlsafe_b64decode(token.split(".")[2] + "==")) == 64
    assert status_with(srv, token) == 101
    run(pubsub_roundtrip(srv.url, token))
    # the DER signature openssl makes is not the JWS form
    data = signing_input(valid_for(), {"alg": "ES256", "typ": "JWT"})
    assert_refused(srv, bearer(data + "." + b64url(openssl_sign(data, priv))), reason=BAD_SIG)
    # the HS256 confusion, an RS256 token
    assert_refused(srv, bearer(make_jwt(valid_for(), pub.read_bytes())), reason=BAD_ALG)
    assert_refused(srv, bearer(make_jwt_pk(valid_for(), keys["rsa"][0], "RS256")),
                   reason=BAD_ALG)
    assert_serves_with(srv, token)


# ---- where the token comes from ----

@pytest.mark.parametrize("carrier", ["bearer", "query", "subprotocol"])
def test_token_carriers(start_server, carrier):
    srv = hs256_server(start_server)
    token = make_jwt(valid_for(), SECRET)
    kw, url = {}, srv.url
    if carrier == "bearer":
        kw["extra_headers"] = bearer(token)
    elif carrier == "query":
        url += "?token=" + token
    else:
        kw["subprotocols"] = ["tidings.jwt", "tidings.jwt." + token]

    async def go():
        async with ws_connect(url, **kw) as ws:
            assert ws.subprotocol == ("tidings.jwt" if carrier == "subprotocol" else None)
            await subscribe(ws, "carried")
            await send_json(ws, {"type": "publish", "topic": "carried", "payload": carrier})
            got = [await recv_json(ws), await recv_json(ws)]
            assert sorted(got, key=json.dumps) == sorted(
                [{"status": "published", "topic": "carried"},
                 {"type": "notification", "topic": "carried", "payload": carrier}],
                key=json.dumps), got
    run(go())
    # the same carrier with a bad token is refused
    bad = make_jwt(valid_for(), "wrong")
    if carrier == "bearer":
        assert_refused(srv, bearer(bad), reason=BAD_SIG)
    elif carrier == "query":
        assert_refused(srv, path="/?token=" + bad, reason=BAD_SIG)
    else:
        assert_refused(srv, [("Sec-WebSocket-Protocol", f"tidings.jwt, tidings.jwt.{bad}")],
                       reason=BAD_SIG)
    assert_serves_with(srv, token)


def test_subprotocol_echo(start_server):
    srv = hs256_server(start_server)
    token = make_jwt(valid_for(), SECRET)
    # the marker is echoed, never the token item; order and other offers do not matter
    for offer in [f"tidings.jwt, tidings.jwt.{token}", f"tidings.jwt.{token}, tidings.jwt",
                  f"chat, tidings.jwt.{token},tidings.jwt"]:
        resp = handshake(srv.port, [("Sec-WebSocket-Protocol", offer)])
        assert resp.status == 101, (offer, resp)
        assert resp.header("sec-websocket-protocol") == "tidings.jwt", (offer, resp)
    # the token item without the marker is refused
    assert_refused(srv, [("Sec-WebSocket-Protocol", f"tidings.jwt.{token}")], reason=MALFORMED)
    # a token in a header: no subprotocol is echoed
    resp = handshake(srv.port, bearer(token))
    assert resp.status == 101 and resp.header("sec-websocket-protocol") is None, resp


# ---- permissions ----

def test_topic_permissions(start_server):
    srv = hs256_server(start_server)
    token = make_jwt(valid_for(sub="writer", subscribe=["news.*"], publish=["news.sports"]),
                     SECRET)
    spy = make_jwt(valid_for(sub="spy"), SECRET)  # subscribe and publish: ["*"]

    async def go():
        async with ws_connect(srv.url, extra_headers=bearer(token)) as ws, \
                ws_connect(srv.url, extra_headers=bearer(token)) as reader, \
                ws_connect(srv.url, extra_headers=bearer(spy)) as other:
            await subscribe(ws, "news.a")
            await subscribe(ws, "news.a.b", id=1)
            await subscribe(reader, "news.sports")
            for topic in ["other", "news", "newsx", "xnews.a"]:
                assert await request(ws, {"type": "subscribe", "topic": topic}) == \
                    {**FORBIDDEN, "topic": topic}
            assert await request(ws, {"type": "subscribe", "topic": "other", "id": "s1"}) == \
                {**FORBIDDEN, "topic": "other", "id": "s1"}
            assert await request(ws, {"type": "ping"}) == {"type": "pong"}

            # allowed publish: delivered
            assert await request(ws, {"type": "publish", "topic": "news.sports",
                                      "payload": "goal", "id": 7}) == \
                {"status": "published", "topic": "news.sports", "id": 7}
            assert await recv_json(reader) == {"type": "notification", "topic": "news.sports",
                                               "payload": "goal"}
            # forbidden publishes: refused and not delivered
            await subscribe(other, "news.other")
            await subscribe(other, "news.sports.x")
            for topic in ["news.other", "news.sports.x", "news"]:
                assert await request(ws, {"type": "publish", "topic": topic, "payload": 0}) == \
                    {**FORBIDDEN, "topic": topic}
            assert await request(ws, {"type": "publish", "topic": "news.other", "payload": 0,
                                      "id": "p1"}) == \
                {**FORBIDDEN, "topic": "news.other", "id": "p1"}
            # the refused subscription to "other" did not happen
            assert await request(other, {"type": "publish", "topic": "other", "payload": 1}) == \
                {"status": "published", "topic": "other"}
            await expect_silence(ws)
            await expect_silence(other)
            # still open and working
            assert await request(ws, {"type": "ping"}) == {"type": "pong"}
            assert await request(other, {"type": "publish", "topic": "news.a", "payload": 2}) == \
                {"status": "published", "topic": "news.a"}
            assert await recv_json(ws) == {"type": "notification", "topic": "news.a",
                                           "payload": 2}
    run(go())
    assert_serves_with(srv, token)


def test_token_without_permission_claims_allows_nothing(start_server):
    srv = hs256_server(start_server)
    bare = make_jwt({"sub": "nobody", "exp": int(time.time()) + 300}, SECRET)
    empty = make_jwt(valid_for(subscribe=[], publish=[]), SECRET)

    async def go():
        for token in (bare, empty):
            async with ws_connect(srv.url, extra_headers=bearer(token)) as ws:
                assert await request(ws, {"type": "subscribe", "topic": "t", "id": 1}) == \
                    {**FORBIDDEN, "topic": "t", "id": 1}
                assert await request(ws, {"type": "publish", "topic": "t", "payload": 1}) == \
                    {**FORBIDDEN, "topic": "t"}
                assert await request(ws, {"type": "ping"}) == {"type": "pong"}
    run(go())
    assert_serves_with(srv, make_jwt(valid_for(), SECRET))


def test_sub_is_logged_at_debug(start_server):
    srv = hs256_server(start_server, "--log-level", "debug")

    async def go():
        token = make_jwt(valid_for(sub="alice@example.com"), SECRET)
        async with ws_connect(srv.url, extra_headers=bearer(token)) as ws:
            assert await request(ws, {"type": "ping"}) == {"type": "pong"}
        # control characters cannot forge log lines
        token = make_jwt(valid_for(sub="mallory\nFORGED LINE\x1b[0m"), SECRET)
        async with ws_connect(srv.url, extra_headers=bearer(token)) as ws:
            assert await request(ws, {"type": "ping"}) == {"type": "pong"}
    run(go())
    log = srv.log_text()
    assert "as alice@example.com" in log, log
    assert "as mallory?FORGED LINE?[0m" in log, log
    assert not any(line.startswith("FORGED") for line in log.splitlines()), log
    assert "\x1b" not in log


# ---- key options ----

@pytest.mark.parametrize("what", ["not-pem", "private-key", "rsa-1024", "p-384", "missing"])
def test_unusable_public_key_is_refused(keys, tmp_path, what):
    if what == "not-pem":
        path = tmp_path / "key.txt"
        path.write_text("this is not a key\n")
    elif what == "private-key":
        path = keys["rsa"][0]
    elif what == "rsa-1024":
        path = keys["rsa1024"][1]
    elif what == "p-384":
        path = keys["p384"][1]
    else:
        path = tmp_path / "nope.pem"
    base = ["--bind", "127.0.0.1", "--port", str(free_port()), "--workers", "1"]
    check_refused(run_tidings(base + ["--jwt-public-key", str(path)], timeout=10))


@pytest.mark.parametrize("combo", [("--jwt-secret", "--jwt-public-key"),
                                   ("--jwt-secret", "--jwt-secret-file"),
                                   ("--jwt-secret-file", "--jwt-public-key")],
                         ids=["secret+public-key", "secret+secret-file",
                              "secret-file+public-key"])
def test_two_key_options_are_refused(keys, tmp_path, combo):
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    value = {"--jwt-secret": SECRET, "--jwt-secret-file": str(secret_file),
             "--jwt-public-key": str(keys["rsa"][1])}
    args = ["--bind", "127.0.0.1", "--port", str(free_port()), "--workers", "1"]
    for opt in combo:
        args += [opt, value[opt]]
    line = check_refused(run_tidings(args, timeout=10))
    assert "only one of" in line, line


def test_secret_file(start_server, tmp_path):
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")  # the trailing newline is not part of the secret
    srv = start_server(args=["--jwt-secret-file", str(path)])
    assert status_with(srv, make_jwt(valid_for(), SECRET)) == 101
    assert_refused(srv, bearer(make_jwt(valid_for(), SECRET + "\n")), reason=BAD_SIG)
    assert_serves_with(srv, make_jwt(valid_for(), SECRET))
