"""A real RTSP server for tests: GStreamer's ``GstRtspServer``, run by the SYSTEM python.

    /usr/bin/python3 tests/rtsp_server.py PORT FRAMES_DIR FPS

serves ``rtsp://127.0.0.1:PORT/stream``: the JPEG files ``FRAMES_DIR/frame_00000.jpg, ...``
(consecutive numbers from 0), looped, at ``FPS`` frames per second, as RTP/JPEG (RFC 2435; the
JPEGs go out as they are, nothing re-encodes them). The media is not shared: every client gets
its own pipeline, which starts at frame 0. It listens on 127.0.0.1 only, prints ``READY`` once
it does and ``CONNECTED`` for each client, and runs until it is killed or terminated (SIGTERM
drops every connection, as a camera that loses power does). It needs Debian's ``python3-gi
gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good``; without them
it exits with status 3 and says so. Only the standard library and ``gi`` are used: the venv's
packages are not there.
"""
from __future__ import annotations

import sys
from pathlib import Path

APT = "apt-get install -y python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good"
PATH = "/stream"
READY = "rtsp-server: ready"
CONNECTED = "rtsp-server: client connected"


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    port, frames_dir, fps = int(argv[0]), argv[1], float(argv[2])
    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GLib, Gst, GstRtspServer
    except (ImportError, ValueError) as e:
        print(f"GStreamer's RTSP server is not installed ({e}): {APT}", file=sys.stderr)
        return 3
    Gst.init(None)
    missing = [e for e in ("appsrc", "jpegparse", "rtpjpegpay") if Gst.ElementFactory.find(e) is None]
    if missing:
        print(f"GStreamer elements missing ({', '.join(missing)}): {APT}", file=sys.stderr)
        return 3

    frames = sorted(Path(frames_dir).glob("frame_*.jpg"))
    if not frames:
        print(f"no frame_*.jpg in {frames_dir}", file=sys.stderr)
        return 2
    jpegs = [f.read_bytes() for f in frames]
    period = round(Gst.SECOND / fps)

    def on_configure(factory, media) -> None:
        """One media per client: its own appsrc, fed from frame 0, timestamped at ``fps``."""
        src = media.get_element().get_child_by_name("src")
        sent = [0]

        def need_data(appsrc, _length) -> None:
            i = sent[0]
            buf = Gst.Buffer.new_wrapped(jpegs[i % len(jpegs)])
            buf.pts, buf.duration = i * period, period
            sent[0] += 1
            appsrc.emit("push-buffer", buf)

        src.connect("need-data", need_data)

    factory = GstRtspServer.RTSPMediaFactory()
    # the sink paces the stream by the timestamps (multifilesrc would give none)
    factory.set_launch(f'( appsrc name=src format=time caps="image/jpeg,framerate={round(fps * 1000)}/1000" '
                       "! jpegparse ! rtpjpegpay name=pay0 pt=26 )")
    factory.set_shared(False)
    factory.connect("media-configure", on_configure)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    server.get_mount_points().add_factory(PATH, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{port}", file=sys.stderr)
        return 1
    server.connect("client-connected", lambda _server, _client: print(CONNECTED, flush=True))
    print(READY, flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
