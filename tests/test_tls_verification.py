"""The broker's TLS certificate is verified by every client: the device (``edge-classify``),
``train.collect`` and ``train.publish`` each refuse a broker whose certificate comes from a CA
they do not trust, or is issued for another host name, with an error that names the broker and
the reason, and a distinct exit code (10 untrusted, 11 wrong host name). Real mosquitto with
TLS, client certificates and passwords; real certificates made here."""
from __future__ import annotations

import sqlite3
import time

import pytest

import sdk
from mqtt_fixtures import USERS, make_pki, secure_broker
from sdk import cli
from sdk.config import Config
from sdk.errors import BrokerCertificateError, BrokerHostnameError
from sdk.mqtt import TlsSettings
from sdk_bundle_fixture import load_mnist, sdk_bundle  # noqa: F401  (fixture)
from train import collect, publish
from train.data.videos import write_digit_video
from train.loop.store import FeedbackStore

CASES = {
    # the broker's certificate is signed by a CA the clients were not given
    "untrusted_ca": (BrokerCertificateError, 10, "is not trusted"),
    # signed by the CA the clients trust, but issued for broker.example while they connect to localhost
    "wrong_host": (BrokerHostnameError, 11, "is not valid for the host name 'localhost'"),
}


@pytest.fixture(params=list(CASES))
def refusing_broker(request, tmp_path, monkeypatch):
    """``(case, broker, client_pki)``: a TLS broker whose certificate the client must refuse."""
    case = request.param
    client_pki = make_pki(tmp_path / "trusted")
    if case == "untrusted_ca":
        server_pki = make_pki(tmp_path / "rogue", ca_name="rogue CA")
        # the broker accepts the clients' certificates (same CA file as theirs), only its own is rogue
        server_pki.ca.write_bytes(client_pki.ca.read_bytes())
    else:
        server_pki = make_pki(tmp_path / "other-host", server_hosts=("broker.example",))
        client_pki = server_pki  # trusted CA, client certificate from it: only the host name is wrong
    broker, _ = secure_broker(tmp_path / "broker", pki=server_pki)
    broker.start()
    monkeypatch.setenv("EDGECLF_MQTT_USERNAME", "dev1")
    monkeypatch.setenv("EDGECLF_MQTT_PASSWORD", USERS["dev1"])
    yield case, broker, client_pki
    broker.stop()


def _expect(case, code, err, port):
    cls, exit_code, words = CASES[case]
    assert code == exit_code, err
    assert f"localhost:{port}" in err and words in err, err


@pytest.fixture(scope="module")
def video(tmp_path_factory, mnist_dir):
    x, _ = load_mnist(mnist_dir, "test")
    return write_digit_video(tmp_path_factory.mktemp("tls-video") / "v.avi", x[:20], seed=7)


def test_device_refuses_the_broker_and_keeps_what_it_classified(refusing_broker, sdk_bundle, video, tmp_path,
                                                                 capsys):
    case, broker, pki = refusing_broker
    outbox = tmp_path / "outbox.sqlite"
    args = ["--video", str(video), "--loop", "--fps-cap", "50", "--max-frames", "2000", "--model", str(sdk_bundle),
            "--broker", f"localhost:{broker.port}", "--device-id", "dev1", "--outbox", str(outbox), "--no-update",
            "--config", str(_short_flush(tmp_path)), "--ca-certs", str(pki.ca), "--certfile", str(pki.client_cert),
            "--keyfile", str(pki.client_key)]
    t0 = time.monotonic()
    code = cli.main(args)
    err = capsys.readouterr().err
    _expect(case, code, err, broker.port)
    assert time.monotonic() - t0 < 20, "the device must stop at the refusal, not run on"
    db = sqlite3.connect(outbox)
    try:  # what it classified before the refusal stays queued for when the settings are fixed
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] >= 1
    finally:
        db.close()


def _short_flush(tmp_path):
    path = tmp_path / "device.yaml"
    path.write_text("mqtt: {flush_timeout_s: 3}\nsampling: {enabled: false}\n")
    return path


def test_sdk_run_raises_the_refusal(refusing_broker, sdk_bundle, video, tmp_path):
    case, broker, pki = refusing_broker
    config = Config(device_id="dev1", source=f"video:{video}", loop=True, max_frames=2000, fps_cap=50,
                    model=str(sdk_bundle), sampling={"enabled": False}, update={"enabled": False},
                    mqtt={"broker": f"localhost:{broker.port}", "outbox_path": str(tmp_path / "o.sqlite"),
                          "tls": {"enabled": True, "ca_certs": str(pki.ca), "certfile": str(pki.client_cert),
                                  "keyfile": str(pki.client_key)}})
    with pytest.raises(CASES[case][0], match=CASES[case][2]):
        sdk.run(config)


def test_collector_refuses_the_broker(refusing_broker, tmp_path, capsys):
    case, broker, pki = refusing_broker
    code = collect.main(["--broker", f"localhost:{broker.port}", "--out", str(tmp_path / "feedback"),
                         "--ca-certs", str(pki.ca), "--certfile", str(pki.client_cert), "--keyfile", str(pki.client_key),
                         "--timeout", "20", "-q"])
    _expect(case, code, capsys.readouterr().err, broker.port)


def test_publisher_refuses_the_broker(refusing_broker, sdk_bundle, tmp_path, capsys):
    case, broker, pki = refusing_broker
    code = publish.main(["--bundle", str(sdk_bundle), "--device", "dev1", "--broker", f"localhost:{broker.port}",
                         "--ca-certs", str(pki.ca), "--certfile", str(pki.client_cert), "--keyfile", str(pki.client_key),
                         "--connect-timeout", "20"])
    _expect(case, code, capsys.readouterr().err, broker.port)


def test_the_same_clients_connect_when_the_certificate_is_right(tmp_path, sdk_bundle, video, monkeypatch):
    """The control: with the right CA and host name each of the three connects (so the refusals
    above are about the certificate, not the set-up)."""
    broker, pki = secure_broker(tmp_path / "broker")
    broker.start()
    monkeypatch.setenv("EDGECLF_MQTT_USERNAME", "dev1")
    monkeypatch.setenv("EDGECLF_MQTT_PASSWORD", USERS["dev1"])
    try:
        config = Config(device_id="dev1", source=f"video:{video}", model=str(sdk_bundle), sampling={"enabled": False},
                        update={"enabled": False},
                        mqtt={"broker": f"localhost:{broker.port}", "outbox_path": str(tmp_path / "o.sqlite"),
                              "tls": {"enabled": True, "ca_certs": str(pki.ca), "certfile": str(pki.client_cert),
                                      "keyfile": str(pki.client_key)}})
        stats = sdk.run(config)
        assert stats.published == 20 and stats.undelivered == 0 and stats.delivered == stats.queued
        tls = TlsSettings(str(pki.ca), str(pki.client_cert), str(pki.client_key))
        with FeedbackStore(tmp_path / "feedback") as store, \
                collect.Collector(store, "localhost", broker.port, client_id="c1", tls=tls, username="reader",
                                  password=USERS["reader"]) as col:
            assert col.wait_subscribed(10) and col.fatal is None, col.last_error
        assert publish.main(["--bundle", str(sdk_bundle), "--device", "dev1", "--broker", f"localhost:{broker.port}",
                             "--ca-certs", str(pki.ca), "--certfile", str(pki.client_cert),
                             "--keyfile", str(pki.client_key)]) == 0
    finally:
        broker.stop()


def test_the_connection_flags_are_spelled_the_same_in_every_command(capsys):
    flags = ["--tls", "--ca-certs", "--certfile", "--keyfile", "--tls-insecure", "--username-env", "--password-env"]
    for name, main in (("edge-classify", cli.main), ("train.collect", collect.main), ("train.publish", publish.main)):
        try:
            main(["--help"])
        except SystemExit:  # train.collect leaves --help to argparse
            pass
        out = capsys.readouterr().out
        missing = [f for f in flags if f"{f} " not in out and f"{f}\n" not in out]
        assert not missing, (name, missing)
