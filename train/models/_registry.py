"""The model registry: ``@register_model`` to add a builder, ``create_model`` to build one.

Modelled on timm: one registry, one factory, ``list_models("res*")`` to discover. A builder is
a plain function ``fn(input_shape, num_classes, *, kw=default, ...) -> keras.Model``; its
keyword-only parameters are the options ``create_model`` accepts for that model.
"""
from __future__ import annotations

import difflib
import fnmatch
import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from train.errors import UsageError

logger = logging.getLogger(__name__)

Builder = Callable[..., Any]


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one model."""

    name: str
    builder: Builder
    description: str
    default_input_shape: tuple[int, int, int]
    kwargs: dict[str, Any] = field(default_factory=dict)  # option -> default


_REGISTRY: dict[str, ModelSpec] = {}



class ModelOptionError(UsageError):
    """An unknown model name, or a model option (size, width, backbone...) that cannot work."""

def _options(fn: Builder) -> dict[str, Any]:
    """Keyword-only parameters of a builder and their defaults."""
    params = inspect.signature(fn).parameters
    return {
        p.name: (None if p.default is inspect.Parameter.empty else p.default)
        for p in params.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def register_model(
    name: str,
    *,
    description: str | None = None,
    default_input_shape: tuple[int, int, int] = (28, 28, 1),
) -> Callable[[Builder], Builder]:
    """Register ``fn(input_shape, num_classes, *, ...) -> keras.Model`` under ``name``.

    A name can be registered once; registering it again raises ``ValueError``.
    ``description`` defaults to the first line of the builder's docstring.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    shape = _check_input_shape(default_input_shape)

    def decorator(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(
                f"model {name!r} is already registered (by {_REGISTRY[name].builder.__module__})"
            )
        doc = (inspect.getdoc(fn) or "").strip().splitlines()
        _REGISTRY[name] = ModelSpec(
            name=name,
            builder=fn,
            description=description or (doc[0] if doc else ""),
            default_input_shape=shape,
            kwargs=_options(fn),
        )
        return fn

    return decorator


def unknown_choice(kind: str, value: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(value, valid, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} {value!r}.{hint} Valid: {', '.join(valid) or '(none)'}"


def get_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``; ``ValueError`` with close matches if there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelOptionError(unknown_choice("model", str(name), list_models())) from None


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def model_info(name: str) -> dict[str, Any]:
    """Description, default input shape and accepted options (with defaults) of a model."""
    spec = get_spec(name)
    return {
        "name": spec.name,
        "description": spec.description,
        "default_input_shape": spec.default_input_shape,
        "kwargs": dict(spec.kwargs),
    }


def _check_input_shape(shape: Any) -> tuple[int, int, int]:
    try:
        dims = tuple(int(d) for d in shape)
        ok = len(dims) == 3 and all(d > 0 for d in dims) and all(int(d) == d for d in shape)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ModelOptionError(f"input_shape must be (height, width, channels) of positive ints, got {shape!r}")
    return dims  # type: ignore[return-value]


def create_model(
    name: str,
    input_shape: tuple[int, int, int] | None = None,
    num_classes: int = 10,
    **kwargs: Any,
):
    """Build a registered model.

    The model takes raw pixels (float32 0..255, NHWC), normalises them in its first layer
    (a ``Rescaling``) and outputs float32 softmax probabilities. ``input_shape`` defaults to
    the model's ``default_input_shape``. Options a model does not accept raise ``ValueError``
    (they usually come from a config file or the command line) naming the accepted ones.
    """
    spec = get_spec(name)
    shape = spec.default_input_shape if input_shape is None else _check_input_shape(input_shape)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ModelOptionError(f"num_classes must be an int >= 2, got {num_classes!r}")
    for key in kwargs:
        if key not in spec.kwargs:
            raise ModelOptionError(unknown_choice(f"option for model {name!r}:", key, sorted(spec.kwargs)))
    logger.debug("building %s input_shape=%s num_classes=%d %s", name, shape, num_classes, kwargs)
    return spec.builder(shape, num_classes, **kwargs)
