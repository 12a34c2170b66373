"""Every MQTT topic of the contract (v1), built in one place. See docs/mqtt.md."""
from __future__ import annotations

import re
from dataclasses import dataclass

CONTRACT_VERSION = "v1"
DEFAULT_PREFIX = "edge"
FLEET = "fleet"  # the device segment of the fleet-wide topics; not usable as a device id
# The message kinds under a device; a region (preprocess.regions) may not take one of these names.
KINDS = frozenset({"result", "sample", "status", "metrics", "event", "model", "ha"})
# Every pattern here is used with fullmatch: '^...$' with match() accepts a trailing newline.
_SEGMENT = re.compile(r"[A-Za-z0-9_.-]+")
_UPDATE_ID = re.compile(r"[0-9a-f]{8,64}")
_INDEX = re.compile(r"[0-9]{1,9}")


def is_segment(value: object) -> bool:
    """Whether ``value`` may be a topic segment (and a file name): letters, digits, ``_ - .``."""
    return isinstance(value, str) and _SEGMENT.fullmatch(value) is not None


def check_segment(value: str, what: str) -> str:
    """A topic segment: no wildcards, no slashes, no control characters, not empty."""
    if not is_segment(value):
        raise ValueError(f"invalid {what} {value!r}: use letters, digits, '_', '-', '.' (no '/', '+', '#')")
    return value


@dataclass(frozen=True)
class Topics:
    """``{prefix}/v1/{device}/...``; ``prefix`` may hold slashes (``site/edge``)."""

    device: str
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        check_segment(self.device, "device id")
        check_prefix(self.prefix)

    @property
    def base(self) -> str:
        return f"{self.prefix}/{CONTRACT_VERSION}/{self.device}"

    @property
    def result(self) -> str:
        return f"{self.base}/result"

    @property
    def sample(self) -> str:
        return f"{self.base}/sample"

    def region_result(self, region: str | None) -> str:
        """``{base}/{region}/result``: the results of one named region of the frame (``result`` for None)."""
        if region is None:
            return self.result
        return f"{self.base}/{check_region(region)}/result"

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
        return fleet_model_set(self.prefix)

    @property
    def fleet_base(self) -> str:
        return f"{self.prefix}/{CONTRACT_VERSION}/{FLEET}"

    def all_devices(self, kind: str) -> str:
        """Subscription filter for one kind of message from every device (e.g. ``result``)."""
        return all_devices(kind, self.prefix)


def check_region(name: str) -> str:
    """A region name: a topic segment that is not one of the message kinds under a device."""
    check_segment(name, "region name")
    if name in KINDS or name == FLEET:
        raise ValueError(f"region name {name!r} is taken by the topics ({', '.join(sorted(KINDS))}); choose another")
    return name


def check_prefix(prefix: str) -> str:
    """A topic prefix: one or more segments joined by ``/``."""
    if not isinstance(prefix, str):
        raise ValueError(f"invalid topic prefix {prefix!r}")
    for part in prefix.split("/"):
        check_segment(part, "topic prefix segment")
    return prefix


def all_devices(kind: str, prefix: str = DEFAULT_PREFIX) -> str:
    """``{prefix}/v1/+/{kind}``: the subscription filter for one kind of message (``sample``,
    ``model/state``, ...) from every device."""
    return f"{check_prefix(prefix)}/{CONTRACT_VERSION}/+/{kind}"


def all_regions(kind: str, prefix: str = DEFAULT_PREFIX) -> str:
    """``{prefix}/v1/+/+/{kind}``: one kind of message (``result``) from every region of every device."""
    return f"{check_prefix(prefix)}/{CONTRACT_VERSION}/+/+/{kind}"


def shared(group: str, topic_filter: str) -> str:
    """``$share/{group}/{filter}``: an MQTT 5 shared subscription, so several subscribers in ``group``
    split the messages matching ``topic_filter`` between them (each message reaches one)."""
    return f"$share/{check_segment(group, 'shared-subscription group')}/{topic_filter}"


def device_of(topic: str, kind: str, prefix: str = DEFAULT_PREFIX) -> str | None:
    """The device id in ``{prefix}/v1/{device}/{kind}``, or None when ``topic`` is not of that form
    or its device segment is not a valid device id."""
    head, tail = f"{prefix}/{CONTRACT_VERSION}/", f"/{kind}"
    if not (topic.startswith(head) and topic.endswith(tail)) or len(topic) <= len(head) + len(tail):
        return None
    device = topic[len(head):-len(tail)]
    return device if is_segment(device) and device != FLEET else None


def fleet_model_set(prefix: str = DEFAULT_PREFIX) -> str:
    """``{prefix}/v1/fleet/model/set``: model updates for every device."""
    return f"{check_prefix(prefix)}/{CONTRACT_VERSION}/{FLEET}/model/set"


def model_chunk(set_topic: str, update_id: str, index: int) -> str:
    """``{set topic}/{update_id}/{index}``: one binary chunk of an update's archive."""
    if not isinstance(update_id, str) or not _UPDATE_ID.fullmatch(update_id):
        raise ValueError(f"invalid update_id {update_id!r}: 8 to 64 lower-case hex digits")
    if index < 0:
        raise ValueError(f"chunk index must be >= 0 (got {index})")
    return f"{set_topic}/{update_id}/{index}"


def parse_model_chunk(set_topic: str, topic: str) -> tuple[str, int] | None:
    """``(update_id, index)`` when ``topic`` is a chunk topic under ``set_topic``, else None."""
    if not topic.startswith(set_topic + "/"):
        return None
    parts = topic[len(set_topic) + 1:].split("/")
    if len(parts) != 2 or not _UPDATE_ID.fullmatch(parts[0]) or not _INDEX.fullmatch(parts[1]):
        return None  # str.isdigit() would accept other scripts' digits that int() rejects or mis-reads
    return parts[0], int(parts[1])
