"""Private ``redis-server`` processes with the options the security tests need: TLS with a
self-signed CA made by ``openssl`` here, passwords, ACL users. Each binds loopback on a free port."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from tests.conftest import free_port


@dataclass(frozen=True)
class Certificates:
    ca: Path
    cert: Path
    key: Path


def make_certificates(folder: Path, names: tuple[str, ...] = ("localhost",),
                      addresses: tuple[str, ...] = ("127.0.0.1",)) -> Certificates:
    """A throw-away CA and a server certificate it signed, for ``names`` and ``addresses``."""
    assert shutil.which("openssl"), "openssl is missing (apt-get install openssl)"
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (folder / n for n in ("ca.key", "ca.crt", "tls.key", "tls.csr", "tls.crt"))
    san = ",".join([*(f"DNS:{n}" for n in names), *(f"IP:{a}" for a in addresses)])
    ext = folder / "san.ext"
    ext.write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth\n")
    steps = [
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=conveyor test CA",
         "-keyout", str(ca_key), "-out", str(ca)],
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={names[0]}", "-keyout", str(key),
         "-out", str(csr)],
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
         "-days", "2", "-extfile", str(ext), "-out", str(cert)],
    ]
    for args in steps:
        subprocess.run(args, check=True, capture_output=True)
    for path in (key, ca_key):
        path.chmod(0o644)  # readable by the test containers' uid too
    return Certificates(ca, cert, key)


class RedisProcess:
    """One redis-server; ``admin`` is a client of its default user."""

    def __init__(self, folder: Path, *args: str, tls: Certificates | None = None, password: str | None = None):
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls = tls
        self.password = password
        command = [shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", str(folder), "--logfile", str(folder / "redis.log")]
        if tls:
            command += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(tls.cert),
                        "--tls-key-file", str(tls.key), "--tls-ca-cert-file", str(tls.ca), "--tls-auth-clients", "no"]
        else:
            command += ["--port", str(self.port)]
        if password:
            command += ["--requirepass", password]
        self.process = subprocess.Popen([*command, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.folder = folder
        self.admin = redis.Redis.from_url(self.url(password=password), decode_responses=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.admin.ping()
                break
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("redis-server did not start: " + (folder / "redis.log").read_text()) from None
                time.sleep(0.02)

    def url(self, *, user: str = "", password: str | None = None, db: int = 0) -> str:
        auth = f"{user}:{password}@" if password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/{db}?ssl_ca_certs={self.tls.ca}"
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
