"""The few API calls kopf does not make for us: the guard's status from a daemon, and
the broker Secret. Uses the credentials kopf logged in with (``remember``)."""

from __future__ import annotations

import base64
import ssl
import tempfile
from typing import Any

import aiohttp

from . import crd

_info: Any = None  # kopf's ConnectionInfo


def remember(info: Any) -> Any:
    global _info
    _info = info
    return info


class KubeError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def _ssl_context(info: Any) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    ctx = ssl.create_default_context()
    if info.ca_path:
        ctx.load_verify_locations(cafile=info.ca_path)
    elif info.ca_data:
        ctx.load_verify_locations(cadata=_pem(info.ca_data).decode())
    cert, key = info.certificate_path, info.private_key_path
    if info.certificate_data and info.private_key_data:  # ssl loads key pairs from files only
        cert, key = _tmp(_pem(info.certificate_data)), _tmp(_pem(info.private_key_data))
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def _pem(data: str | bytes) -> bytes:
    """Kubeconfig ``*-data`` fields are base64 of PEM; accept plain PEM too."""
    raw = data if isinstance(data, bytes) else data.encode()
    return raw if b"-----BEGIN" in raw else base64.b64decode(raw)


def _tmp(raw: bytes) -> str:
    f = tempfile.NamedTemporaryFile(prefix="blipguard-", delete=False)
    f.write(raw)
    f.close()
    return f.name


class Kube:
    def __init__(self, info: Any | None = None) -> None:
        self.info = info or _info
        if self.info is None:
            raise RuntimeError("not logged in to Kubernetes yet")
        headers = {}
        if self.info.token:
            headers["Authorization"] = f"{self.info.scheme or 'Bearer'} {self.info.token}"
        self._session = aiohttp.ClientSession(
            base_url=self.info.server.rstrip("/") + "/",
            headers=headers,
            connector=aiohttp.TCPConnector(ssl=_ssl_context(self.info)),
            timeout=aiohttp.ClientTimeout(total=10),
        )

    async def close(self) -> None:
        await self._session.close()

    async def _call(self, method: str, path: str, body: Any = None, content_type: str | None = None) -> Any:
        headers = {"Content-Type": content_type} if content_type else {}
        async with self._session.request(method, path.lstrip("/"), json=body, headers=headers) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                message = data.get("message") if isinstance(data, dict) else str(data)
                raise KubeError(resp.status, message or resp.reason or "")
            return data

    async def patch_status(self, namespace: str, name: str, status: dict) -> Any:
        path = f"apis/{crd.GROUP}/{crd.VERSION}/namespaces/{namespace}/{crd.PLURAL}/{name}/status"
        return await self._call("PATCH", path, {"status": status}, "application/merge-patch+json")

    async def secret_value(self, namespace: str, name: str, key: str) -> str:
        """One key of a Secret in ``namespace``; a clear error if it is missing."""
        try:
            secret = await self._call("GET", f"api/v1/namespaces/{namespace}/secrets/{name}")
        except KubeError as e:
            if e.status == 404:
                raise KubeError(404, f"Secret {namespace}/{name} not found") from None
            if e.status == 403:
                raise KubeError(403, f"not allowed to read Secret {namespace}/{name}: {e}") from None
            raise
        data = secret.get("data") or {}
        if key not in data:
            raise KubeError(404, f"Secret {namespace}/{name} has no key {key!r} (keys: {sorted(data)})")
        return base64.b64decode(data[key]).decode()
