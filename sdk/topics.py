"""Every MQTT topic of the contract (v1), built in one place. See docs/mqtt.md."""
from __future__ import annotations

import re
from dataclasses import dataclass

CONTRACT_VERSION = "v1"
_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]+$")


def check_segment(value: str, what: str) -> str:
    """A topic segment: no wildcards, no slashes, not empty."""
    if not isinstance(value, str) or not _SEGMENT.match(value):
        raise ValueError(f"invalid {what} {value!r}: use letters, digits, '_', '-', '.' (no '/', '+', '#')")
    return value


@dataclass(frozen=True)
class Topics:
    """``{prefix}/v1/{device}/...``; ``prefix`` may hold slashes (``site/edge``)."""

    device: str
    prefix: str = "edge"

    def __post_init__(self) -> None:
        check_segment(self.device, "device id")
        for part in self.prefix.split("/"):
            check_segment(part, "topic prefix segment")

    @property
    def base(self) -> str:
        return f"{self.prefix}/{CONTRACT_VERSION}/{self.device}"

    @property
    def result(self) -> str:
        return f"{self.base}/result"

    @property
    def sample(self) -> str:
        return f"{self.base}/sample"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def metrics(self) -> str:
        return f"{self.base}/metrics"

    @property
    def event(self) -> str:
        return f"{self.base}/event"

    @property
    def model_set(self) -> str:
        return f"{self.base}/model/set"

    @property
    def model_state(self) -> str:
        return f"{self.base}/model/state"

    @property
    def fleet_model_set(self) -> str:
        return f"{self.prefix}/{CONTRACT_VERSION}/fleet/model/set"

    def all_devices(self, kind: str) -> str:
        """Subscription filter for one kind of message from every device (e.g. ``result``)."""
        return f"{self.prefix}/{CONTRACT_VERSION}/+/{kind}"
