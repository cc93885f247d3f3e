"""The breaker's Redis probe against real redis-servers: it must connect the way the
cache's own pool does (ACL user, unix socket, TLS), answer within its timeout, and say
unhealthy when the server is gone."""

import datetime as dt
import ipaddress
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from blipguard.app_patch.pause.probes import ping_pool
from blipguard.localstack.procs import free_port, log_tail, spawn, stop_pid, wait_until

pytestmark = pytest.mark.pause


def make_certs(d: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1, PEM files in `d`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def cert(subject, issuer, key, signer, extensions):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
             .not_valid_after(now + dt.timedelta(days=1)))
        for ext, critical in extensions:
            b = b.add_extension(ext, critical)
        return b.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "probe test CA")])
    ca = cert(ca_name, ca_name, ca_key, ca_key, [(x509.BasicConstraints(ca=True, path_length=None), True)])
    server = cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), ca_name, key, ca_key,
                  [(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)])
    files = {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return files


class Server:
    """redis-server in a temp dir with the given config; ready once `ready_url` pings."""

    def __init__(self, workdir: Path, config: list[tuple], ready_url: str):
        self.workdir, self.config, self.ready_url = workdir, config, ready_url
        self.proc = None

    def start(self):
        conf = [("bind", "127.0.0.1"), ("daemonize", "no"), ("dir", self.workdir), ("save", '""'),
                ("appendonly", "no"), ("protected-mode", "no"), *self.config]
        path = self.workdir / "redis.conf"
        path.write_text("".join(f"{k} {v}\n" for k, v in conf))
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = spawn([binary, str(path)], self.workdir / "redis.log", cwd=self.workdir)
        wait_until(self._ready, 10, f"redis-server in {self.workdir}", 0.01)

    def _ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited:\n{log_tail(self.workdir / 'redis.log')}")
        try:
            with redis.Redis.from_url(self.ready_url, socket_timeout=1, retry=Retry(NoBackoff(), 0)) as r:
                return r.ping()
        except redis.RedisError:
            return False

    def stop(self):
        if self.proc is not None:
            stop_pid(self.proc.pid)
            self.proc = None


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Two servers: one open on TCP, a unix socket and TLS; one whose default user is off,
    reachable only as the ACL user `probe`."""
    d = tmp_path_factory.mktemp("probe-redis")
    certs = make_certs(d)
    port, tls_port, acl_port = free_port(), free_port(), free_port()
    sock = d / "redis.sock"
    tls = f"ssl_ca_certs={certs['ca']}&ssl_cert_reqs=required"
    (d / "open").mkdir()
    (d / "acl").mkdir()
    urls = {
        "tcp": f"redis://127.0.0.1:{port}/1",
        "unix": f"unix://{sock}?db=2",
        "tls": f"rediss://127.0.0.1:{tls_port}/3?{tls}",
        "acl": f"redis://probe:secret@127.0.0.1:{acl_port}/4",
    }
    open_server = Server(d / "open", [
        ("port", port), ("unixsocket", sock), ("unixsocketperm", "700"), ("tls-port", tls_port),
        ("tls-cert-file", certs["cert"]), ("tls-key-file", certs["key"]), ("tls-ca-cert-file", certs["ca"]),
        ("tls-auth-clients", "no"),
    ], urls["tcp"])
    acl_server = Server(d / "acl", [("port", acl_port), ("user", "default off"),
                                    ("user", "probe on >secret ~* +@all")], urls["acl"])
    open_server.start()
    acl_server.start()
    with redis.Redis.from_url(urls["acl"]) as r:
        assert r.acl_whoami() in ("probe", b"probe")
    with redis.Redis(port=acl_port, retry=Retry(NoBackoff(), 0)) as r, pytest.raises(redis.RedisError):
        r.ping()  # the default user is off
    try:
        yield {"urls": urls, "open": open_server, "acl": acl_server}
    finally:
        open_server.stop()
        acl_server.stop()


def pool(url: str) -> redis.ConnectionPool:
    return redis.ConnectionPool.from_url(url)


def old_probe(p: redis.ConnectionPool, timeout: float) -> bool:
    """The probe before the fix: a plain client from host/port/db/password."""
    kwargs = dict(p.connection_kwargs)
    client = redis.Redis(
        host=kwargs.get("host", "localhost"), port=kwargs.get("port", 6379), db=kwargs.get("db", 0),
        password=kwargs.get("password"), socket_timeout=timeout, socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@pytest.mark.parametrize("kind", ["tcp", "unix", "tls", "acl"])
def test_the_probe_connects_like_the_pool(servers, kind):
    p = pool(servers["urls"][kind])
    assert ping_pool(p, timeout=2.0) is True


@pytest.mark.parametrize("kind", ["unix", "tls", "acl"])
def test_the_old_probe_calls_these_servers_down(servers, kind):
    assert old_probe(pool(servers["urls"][kind]), timeout=1.0) is False


@pytest.mark.parametrize("kind", ["tcp", "unix", "tls", "acl"])
def test_a_stopped_server_is_unhealthy(servers, kind):
    which = "acl" if kind == "acl" else "open"
    servers[which].stop()
    try:
        started = time.monotonic()
        assert ping_pool(pool(servers["urls"][kind]), timeout=1.0) is False
        assert time.monotonic() - started < 1.5
    finally:
        servers[which].start()
    assert ping_pool(pool(servers["urls"][kind]), timeout=2.0) is True


def test_wrong_credentials_are_unhealthy(servers):
    url = servers["urls"]["acl"].replace("secret", "wrong")
    assert ping_pool(pool(url), timeout=1.0) is False


class SlowRedis:
    """Answers every command, each after `delay`: no single step times out, but connect,
    AUTH, SELECT, CLIENT SETINFO and PING together take several delays."""

    def __init__(self, delay: float):
        self.delay = delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopping = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        self.listener.settimeout(0.1)
        while not self.stopping:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        buf = b""
        with conn:
            while not self.stopping:
                try:
                    chunk = conn.recv(4096)
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                while True:
                    command, buf = _parse_command(buf)
                    if command is None:
                        break
                    time.sleep(self.delay)
                    conn.sendall(b"+PONG\r\n" if command[0].upper() == b"PING" else b"+OK\r\n")

    def close(self):
        self.stopping = True
        self.listener.close()


def _parse_command(buf: bytes):
    """One RESP array of bulk strings off the front of buf, or (None, buf) if incomplete."""
    if not buf.startswith(b"*") or b"\r\n" not in buf:
        return None, buf
    head, rest = buf.split(b"\r\n", 1)
    parts = []
    for _ in range(int(head[1:])):
        if b"\r\n" not in rest:
            return None, buf
        size, rest = rest.split(b"\r\n", 1)
        n = int(size[1:])
        if len(rest) < n + 2:
            return None, buf
        parts.append(rest[:n])
        rest = rest[n + 2:]
    return parts, rest


def test_the_whole_probe_is_bounded_by_its_timeout():
    slow = SlowRedis(delay=0.3)  # AUTH, SELECT, 2 x CLIENT SETINFO, PING: >= 1.5 s in all
    try:
        url = f"redis://probe:secret@127.0.0.1:{slow.port}/5"
        started = time.monotonic()
        assert ping_pool(pool(url), timeout=0.5) is False
        assert time.monotonic() - started < 1.2
        assert ping_pool(pool(url), timeout=5.0) is True  # it does answer, just too late
    finally:
        slow.close()
