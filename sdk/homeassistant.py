"""Home Assistant MQTT discovery: retained configs so a device shows up with no YAML.

Entities: last label and confidence (%) (one pair per named region when ``regions`` are given),
fps (from the metrics heartbeat) and a connectivity binary sensor; all use the retained ``status``
topic for availability.
"""
from __future__ import annotations

import json
from typing import Sequence

from .topics import Topics

Message = tuple[str, bytes, int, bool]


def discovery_messages(topics: Topics, *, model_name: str = "", model_version: str = "", sw_version: str = "",
                       discovery_prefix: str = "homeassistant", regions: Sequence[str] = ()) -> list[Message]:
    """``(topic, payload, qos, retain)`` of every discovery config, to publish on connect and again
    whenever the running model changes (the device card shows ``model_name model_version``)."""
    dev = topics.device
    model = " ".join(part for part in (model_name, model_version) if part) or "edge classifier"
    device = {"identifiers": [f"edgeclf_{dev}"], "name": f"edgeclf {dev}", "manufacturer": "edgeclf",
              "model": model, "sw_version": sw_version}
    avail = {"availability_topic": topics.status, "payload_available": "online", "payload_not_available": "offline"}
    entities: list[tuple[str, str, dict]] = []
    names: list[str | None] = list(regions) or [None]
    for region in names:
        key, title = ("", "") if region is None else (f"{region}_", f"{region}: ")
        state = topics.region_result(region)
        entities += [
            ("sensor", f"{key}label", {"name": f"{title}Last label", "state_topic": state, "icon": "mdi:label",
                                       "value_template": "{{ value_json.top_k[0].label if value_json.top_k else 'none' }}"}),
            ("sensor", f"{key}confidence", {
                "name": f"{title}Confidence", "state_topic": state, "unit_of_measurement": "%", "state_class": "measurement",
                "value_template": "{{ (value_json.top_k[0].score * 100) | round(1) if value_json.top_k else 0 }}"}),
        ]
    entities += [
        ("sensor", "fps", {"name": "Frames per second", "state_topic": topics.metrics, "unit_of_measurement": "fps",
                           "state_class": "measurement", "value_template": "{{ value_json.fps | round(1) }}"}),
        ("binary_sensor", "online", {"name": "Online", "state_topic": topics.status, "device_class": "connectivity",
                                     "payload_on": "online", "payload_off": "offline"}),
    ]
    out = []
    for component, key, cfg in entities:
        payload = {**cfg, "unique_id": f"edgeclf_{dev}_{key}", "object_id": f"edgeclf_{dev}_{key}",
                   "device": device}
        if component != "binary_sensor":
            payload.update(avail)
        out.append((f"{discovery_prefix}/{component}/{dev}/{key}/config",
                    json.dumps(payload, separators=(",", ":")).encode(), 1, True))
    return out
