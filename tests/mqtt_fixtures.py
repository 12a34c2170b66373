"""A real mosquitto broker for tests, on a free loopback port.

``mosquitto`` (plain, anonymous) and ``secure_mosquitto`` (TLS with a CA, server and client
certificates generated here with ``cryptography``, ``require_certificate``, a password file and
an ACL). ``Broker.kill()`` / ``start()`` simulate a broker crash and restart on the same port.
``Collector`` is a paho v2 subscriber that records everything and resubscribes on reconnect.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"mosquitto did not listen on {port}")


class Broker:
    def __init__(self, workdir: Path, conf_body: str = "allow_anonymous true\n", port: int | None = None,
                 persistent: bool = False, conf_text: str | None = None):
        """``conf_text``: a whole mosquitto.conf (its listener must be on ``port``), instead of the one
        built here from ``conf_body``."""
        if not Path(MOSQUITTO).exists():
            pytest.fail("mosquitto is not installed (apt-get install mosquitto mosquitto-clients)")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.log = self.workdir / "mosquitto.log"
        self.conf = self.workdir / "mosquitto.conf"
        user = "user root\n" if os.geteuid() == 0 else ""
        # persistent: sessions and queued QoS 1 messages survive a SIGKILL (saved on every change)
        persist = (f"persistence true\npersistence_location {self.workdir}/\nautosave_on_changes true\n"
                   "autosave_interval 1\n") if persistent else "persistence false\n"
        if conf_text is not None:
            self.conf.write_text(f"{user}log_dest file {self.log}\nlog_type all\n{conf_text}")
        else:
            self.conf.write_text(f"{user}{persist}log_dest file {self.log}\nlog_type all\n"
                                 f"per_listener_settings false\nlistener {self.port} 127.0.0.1\n{conf_body}")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Broker":
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        try:
            _wait_port(self.port)
        except TimeoutError:
            self.proc.kill()
            raise RuntimeError(f"mosquitto failed: {self.proc.stderr.read().decode()}\n{self.log_text()}")
        return self

    def kill(self) -> None:
        """SIGKILL: a crash, no clean disconnects."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def freeze(self) -> None:
        """SIGSTOP: a broker that hangs (accepts nothing, acknowledges nothing)."""
        self.proc.send_signal(signal.SIGSTOP)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stderr:
                self.proc.stderr.close()

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


# -- certificates --------------------------------------------------------------------------
@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(d: Path, server_hosts: tuple[str, ...] = ("localhost", "127.0.0.1"), ca_name: str = "edgeclf test CA") -> Pki:
    """A CA, a server certificate for ``server_hosts`` (names or IP addresses) and a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key, path):
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name(ca_name)).issuer_name(name(ca_name))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))

    def leaf(cn, usage, san=None):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
             .not_valid_after(now + dt.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(ca_key, hashes.SHA256()), key

    def san(host):
        try:
            return x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            return x509.DNSName(host)

    server, server_key = leaf(server_hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, [san(h) for h in server_hosts])
    client, client_key = leaf("dev1", ExtendedKeyUsageOID.CLIENT_AUTH)
    pki = Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    pki.client_cert.write_bytes(client.public_bytes(serialization.Encoding.PEM))
    write_key(server_key, pki.server_key)
    write_key(client_key, pki.client_key)
    return pki


USERS = {"dev1": "dev1-secret", "dev2": "dev2-secret", "ops": "ops-secret", "collector": "collector-secret",
         "reader": "reader-secret"}
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "mosquitto"
# The ACL the project ships and documents (examples/mosquitto/acl, docs/mqtt.md): devices dev1 and
# dev2 are users named after their device ids.
ACL = (EXAMPLES / "acl").read_text()


def shipped_broker(workdir: Path) -> tuple[Broker, Pki]:
    """mosquitto run with the project's examples/mosquitto/mosquitto.conf and acl, only the paths
    and the port changed: TLS with client certificates, passwords, the fleet ACL, persistence."""
    workdir.mkdir(parents=True, exist_ok=True)
    pki = make_pki(workdir / "pki")
    passwd, acl, db = workdir / "passwd", workdir / "acl", workdir / "db"
    db.mkdir(exist_ok=True)
    _write_passwords(passwd, USERS)
    acl.write_text(ACL)
    for p in (passwd, acl):
        p.chmod(0o600)
    port = free_port()
    conf = (EXAMPLES / "mosquitto.conf").read_text()
    for old, new in (("/var/lib/mosquitto/", f"{db}/"), ("/etc/mosquitto/passwd", str(passwd)),
                     ("/etc/mosquitto/acl", str(acl)), ("/etc/mosquitto/certs/ca.pem", str(pki.ca)),
                     ("/etc/mosquitto/certs/server.pem", str(pki.server_cert)),
                     ("/etc/mosquitto/certs/server.key", str(pki.server_key)),
                     ("listener 8883", f"listener {port} 127.0.0.1")):
        assert old in conf, old
        conf = conf.replace(old, new)
    return Broker(workdir, port=port, conf_text=conf), pki


def _write_passwords(passwd: Path, users: dict[str, str]) -> None:
    for i, (user, pw) in enumerate(users.items()):
        args = ["mosquitto_passwd", "-b"] + (["-c"] if i == 0 else []) + [str(passwd), user, pw]
        subprocess.run(args, check=True, capture_output=True)


def secure_broker(workdir: Path, pki: Pki | None = None, acl_text: str = ACL, users: dict[str, str] = USERS,
                  persistent: bool = False) -> tuple[Broker, Pki]:
    """mosquitto with TLS (``pki``'s server certificate, client certificates required), passwords and an ACL."""
    workdir.mkdir(parents=True, exist_ok=True)
    pki = pki or make_pki(workdir / "pki")
    passwd = workdir / "passwd"
    _write_passwords(passwd, users)
    acl = workdir / "acl"
    acl.write_text(acl_text)
    for p in (passwd, acl):
        p.chmod(0o600)
    body = (f"cafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
            f"require_certificate true\ntls_version tlsv1.2\nallow_anonymous false\n"
            f"password_file {passwd}\nacl_file {acl}\n")
    return Broker(workdir, body, persistent=persistent), pki


@pytest.fixture
def mosquitto(tmp_path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture
def secure_mosquitto(tmp_path):
    b, pki = secure_broker(tmp_path / "secure-broker")
    b.start()
    yield b, pki
    b.stop()


# -- subscriber ------------------------------------------------------------------------------
class Collector:
    """Records ``(topic, payload, retain)`` of everything on ``topics``; resubscribes on reconnect."""

    def __init__(self, port: int, topics=("edge/#",), *, pki: Pki | None = None, username=None, password=None,
                 client_id: str = "", persistent_session: bool = False):
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.refused: str | None = None
        self.topics = topics
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent_session)
        c.reconnect_delay_set(0.05, 0.2)
        if pki:
            c.tls_set(ca_certs=str(pki.ca), certfile=str(pki.client_cert), keyfile=str(pki.client_key),
                      cert_reqs=ssl.CERT_REQUIRED)
        if username:
            c.username_pw_set(username, password)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_subscribe = lambda *a: self.connected.set()
        c.on_disconnect = lambda *a: self.connected.clear()
        self.client = c
        c.connect_async("127.0.0.1", port)
        c.loop_start()

    def _on_connect(self, client, userdata, flags, rc, props):
        if rc.is_failure:
            self.refused = str(rc)
            return
        client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, msg.payload, msg.retain))

    def wait_subscribed(self, timeout: float = 10) -> bool:
        return self.connected.wait(timeout)

    def on(self, suffix: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t.endswith(suffix)]

    def wait_for(self, pred, timeout: float = 20.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred(self):
                return True
            time.sleep(0.05)
        return pred(self)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()
