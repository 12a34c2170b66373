"""Device side: load a model bundle, classify frames, publish results over MQTT.

Never imports TensorFlow: a device installs ``edgeclf[device]`` (LiteRT, OpenCV, paho-mqtt).

    import sdk
    sdk.run(sdk.Config(source="camera:0", model="models/current"))

is what ``edge-classify --camera 0 --model models/current`` does.
"""

__version__ = "0.1.0"

__all__ = ["Config", "load_config", "run", "__version__"]


def __getattr__(name):  # lazy: `import sdk.bundle` (train does) must not pull in OpenCV or paho
    if name == "run":
        from .app import run

        return run
    if name in ("Config", "load_config"):
        from . import config

        return getattr(config, name)
    raise AttributeError(f"module 'sdk' has no attribute {name!r}")
