"""TLS (CA + client certificate), username/password from the environment, and an ACL,
against mosquitto configured with a password file, an ACL file and TLS (certificates made here)."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

import sdk
from mqtt_fixtures import USERS, Collector, secure_mosquitto  # noqa: F401  (fixture)
from sdk.config import Config
from sdk.errors import MqttConfigError
from sdk.mqtt import MqttPublisher, TlsSettings
from sdk_bundle_fixture import load_mnist, sdk_bundle  # noqa: F401  (fixture)
from train.data.videos import write_digit_video


@pytest.fixture
def video(tmp_path, mnist_dir):
    x, _ = load_mnist(mnist_dir, "test")
    return write_digit_video(tmp_path / "v.avi", x[:8], seed=4)


def secure_config(bundle, video, broker, pki, tmp_path, device="dev1") -> Config:
    return Config(device_id=device, source=f"video:{video}", model=str(bundle), sampling={"enabled": False},
                  homeassistant={"enabled": True},
                  mqtt={"broker": f"localhost:{broker.port}", "outbox_path": str(tmp_path / f"{device}.sqlite"),
                        "username_env": "TEST_MQTT_USER", "password_env": "TEST_MQTT_PASS",
                        "reconnect_min_s": 0.2, "reconnect_max_s": 0.5, "flush_timeout_s": 10,
                        "tls": {"enabled": True, "ca_certs": str(pki.ca), "certfile": str(pki.client_cert),
                                "keyfile": str(pki.client_key)}})


def test_tls_auth_acl_end_to_end(sdk_bundle, video, secure_mosquitto, tmp_path, monkeypatch):
    broker, pki = secure_mosquitto
    monkeypatch.setenv("TEST_MQTT_USER", "dev1")
    monkeypatch.setenv("TEST_MQTT_PASS", USERS["dev1"])
    reader = Collector(broker.port, ("edge/#", "homeassistant/#"), pki=pki, username="reader",
                       password=USERS["reader"])
    assert reader.wait_subscribed(), reader.refused
    stats = sdk.run(secure_config(sdk_bundle, video, broker, pki, tmp_path))
    assert stats.published == 8
    assert reader.wait_for(lambda c: len(c.on("dev1/result")) >= 8)
    assert sorted(json.loads(p)["seq"] for p in reader.on("dev1/result")) == list(range(8))
    # Home Assistant discovery configs are retained and point at the device's topics
    disc = [(t, json.loads(p)) for t, p, _ in reader.messages if t.startswith("homeassistant/")]
    assert {t.split("/")[-2] for t, _ in disc} == {"label", "confidence", "fps", "online"}
    assert all(d["device"]["identifiers"] == ["edgeclf_dev1"] for _, d in disc)
    # mosquitto_sub over TLS with the reader's credentials sees the retained status
    sub = subprocess.run(["mosquitto_sub", "-h", "localhost", "-p", str(broker.port), "--cafile", str(pki.ca),
                          "--cert", str(pki.client_cert), "--key", str(pki.client_key), "-u", "reader",
                          "-P", USERS["reader"], "-t", "edge/v1/dev1/status", "-C", "1", "-W", "10"],
                         capture_output=True, text=True, timeout=30)
    assert sub.returncode == 0 and sub.stdout.strip() == "offline", sub.stderr
    reader.close()


def test_acl_blocks_publishing_as_another_device(sdk_bundle, video, secure_mosquitto, tmp_path, monkeypatch):
    broker, pki = secure_mosquitto
    monkeypatch.setenv("TEST_MQTT_USER", "dev1")
    monkeypatch.setenv("TEST_MQTT_PASS", USERS["dev1"])
    reader = Collector(broker.port, ("edge/#",), pki=pki, username="reader", password=USERS["reader"])
    assert reader.wait_subscribed()
    # user dev1 may only write edge/v1/dev1/#: results as "dev2" are dropped by the broker
    sdk.run(secure_config(sdk_bundle, video, broker, pki, tmp_path, device="dev2"))
    time.sleep(1.0)
    assert reader.on("dev2/result") == []
    assert "denied publish" in broker.log_text().lower()
    reader.close()


def test_wrong_password_is_refused_and_reported(secure_mosquitto, tmp_path):
    broker, pki = secure_mosquitto
    tls = TlsSettings(str(pki.ca), str(pki.client_cert), str(pki.client_key))
    with MqttPublisher("localhost", broker.port, "bad", tls=tls, username="dev1", password="wrong",
                       reconnect_min_s=0.2, reconnect_max_s=0.5) as pub:
        pub.publish("edge/v1/dev1/result", b"{}")
        end = time.monotonic() + 10
        while pub.last_error is None and time.monotonic() < end:
            time.sleep(0.05)
        assert not pub.connected
        assert "Not authorized" in (pub.last_error or "") or "Bad user name or password" in (pub.last_error or "")
        assert pub.queue_depth == 1  # kept for when the credentials are fixed


def test_tls_without_client_certificate_is_refused(secure_mosquitto):
    broker, pki = secure_mosquitto
    with MqttPublisher("localhost", broker.port, "nocert", tls=TlsSettings(str(pki.ca)), username="dev1",
                       password=USERS["dev1"], reconnect_min_s=0.2, reconnect_max_s=0.5) as pub:
        assert not pub.wait_connected(2.0)


def test_plain_tcp_to_tls_listener_never_connects(secure_mosquitto):
    broker, _ = secure_mosquitto
    with MqttPublisher("localhost", broker.port, "plain", username="dev1", password=USERS["dev1"],
                       reconnect_min_s=0.2, reconnect_max_s=0.5) as pub:
        assert not pub.wait_connected(1.5)


def test_missing_tls_files_are_a_config_error(tmp_path):
    with pytest.raises(MqttConfigError, match="ca_certs file not found"):
        MqttPublisher("localhost", 8883, tls=TlsSettings(str(tmp_path / "nope.pem")))
