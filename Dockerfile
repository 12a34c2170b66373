# Two images from one file:
#   docker build --target host -t edgeclf-host .       # training + export (TensorFlow, CPU; GPU when run with --gpus)
#   docker build --target device -t edgeclf-device .   # the device: LiteRT + OpenCV + paho-mqtt, no TensorFlow

# ---- host image: train / evaluate / export ----
FROM python:3.11-slim-bookworm AS host
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 TF_USE_LEGACY_KERAS=1
WORKDIR /opt/edgeclf
COPY pyproject.toml README.md ./
COPY sdk/ sdk/
COPY train/ train/
COPY examples/ examples/
COPY firmware_configs/ firmware_configs/
RUN pip install ".[train,device,demo]"
VOLUME ["/opt/edgeclf/runs"]
ENTRYPOINT ["python", "-m"]
CMD ["train.train", "--help"]

# ---- device image: edge-classify without TensorFlow (LiteRT + OpenCV headless + paho-mqtt) ----
# Builds for linux/amd64 and linux/arm64 (Raspberry Pi OS Bookworm / Jetson userland are both
# Debian-based; every dependency ships aarch64 wheels):
#   docker buildx build --platform linux/arm64,linux/amd64 --target device -t edgeclf-device .
# Run (camera, a bundle mounted at /models/current, broker on the host):
#   docker run --rm --device /dev/video0 -v $PWD/bundle:/models/current:ro \
#     -e EDGECLF_MQTT_USERNAME -e EDGECLF_MQTT_PASSWORD \
#     edgeclf-device --camera 0 --broker host.docker.internal:1883
# Coral USB: add --device /dev/bus/usb and install libedgetpu1-std from Coral's apt repository in a
# derived image (not reachable from our CI); the runtime reports a clear error when it is missing.
FROM python:3.11-slim-bookworm AS device
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
# libgl/libglib are not needed by opencv-python-headless; libgomp is for LiteRT's XNNPACK threads.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/edgeclf
COPY pyproject.toml README.md ./
COPY sdk/ sdk/
COPY firmware_configs/ firmware_configs/
# The base install + the device extra: numpy, pydantic, PyYAML, paho-mqtt, opencv-python-headless,
# ai-edge-litert. The train package is copied by setuptools but never imported on the device.
RUN pip install ".[device]" \
 && python -c "import sys, sdk.cli, sdk.app; bad=[m for m in sys.modules if m.startswith(('tensorflow','keras'))]; sys.exit(1 if bad else 0)" \
 && ! pip show tensorflow >/dev/null 2>&1
RUN useradd --system --create-home --groups video edge && mkdir -p /var/lib/edgeclf && chown edge /var/lib/edgeclf
USER edge
ENV EDGECLF_MQTT_USERNAME="" EDGECLF_MQTT_PASSWORD=""
VOLUME ["/var/lib/edgeclf"]
# Model updates are applied only when signed: mount the fleet's public key and pass it, e.g.
#   docker run -v $PWD/keys/fleet.pub:/etc/edgeclf/update.pub:ro ... --update-key /etc/edgeclf/update.pub
# (without a key every update is refused; --no-update stops listening for them).
# SIGTERM (docker stop) flushes the queue and publishes status offline; unsent messages stay in
# /var/lib/edgeclf/outbox.sqlite for the next start.
STOPSIGNAL SIGTERM
ENTRYPOINT ["edge-classify", "--model", "/models/current", "--outbox", "/var/lib/edgeclf/outbox.sqlite"]
CMD ["--camera", "0"]
