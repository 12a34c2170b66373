"""Training configuration: one pydantic model, YAML/JSON file first, CLI flags override.

The resolved config is written into every run directory (``config.json``) so that a run can be
reproduced, evaluated again, and exported with the same data split and preprocessing.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from train.errors import ConfigFileError


class AugmentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Apply random augmentation to training batches.")
    rotation: float = Field(10.0, ge=0, le=180, description="Max rotation, degrees.")
    shift: float = Field(0.1, ge=0, le=0.5, description="Max translation, fraction of size.")
    zoom: float = Field(0.1, ge=0, le=0.5, description="Max zoom in/out, fraction.")
    crop: float = Field(0.0, ge=0, le=0.5, description="Random crop fraction (pad-and-crop).")
    brightness: float = Field(0.0, ge=0, le=1, description="Max brightness change, fraction of range.")
    contrast: float = Field(0.0, ge=0, le=1, description="Max contrast factor change.")
    elastic: float = Field(
        0.0, ge=0, le=100,
        description="Elastic distortion strength alpha in pixels (Simard et al. 2003 use 34 on 28x28 digits); 0 is off. "
                    "Applied even when enabled is false, then without the geometric defaults.",
    )
    elastic_sigma: float = Field(4.0, gt=0, le=32, description="Smoothness of the elastic displacement field (Gaussian sigma, pixels).")
    cutout: float = Field(
        0.0, ge=0, le=1,
        description="Cutout (DeVries and Taylor 2017): blank one square of this side, a fraction of the image side, "
                    "at a random centre per image (clipped at the edges); 0.5 is the paper's 16x16 on CIFAR-10. 0 is off. "
                    "Applied even when enabled is false, then alone.",
    )
    hflip: bool = Field(False, description="Horizontal flips; only where the classes allow (not digits).")
    vflip: bool = Field(False, description="Vertical flips; only where the classes allow.")
    noise_std: float = Field(
        0.0, ge=0, le=128,
        description="Gaussian noise std in pixel units (0-255) added to training images: the noise-injection "
                    "defence (python -m train.robustness measures it). Applied even when enabled is false, then alone.",
    )


class AdversarialConfig(BaseModel):
    """Adversarial training: a share of every batch replaced by attacks on the current weights."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["fgsm", "pgd"] = Field(description="Attack that makes the training examples: fgsm (cheap) or pgd.")
    epsilon: float = Field(gt=0, le=255, description="L-inf size of the perturbation, in pixel units (0-255).")
    ratio: float = Field(0.5, gt=0, le=1, description="Share of each batch replaced by adversarial examples.")
    pgd_steps: int = Field(7, ge=1, le=100, description="PGD steps per example (step size 2.5 * epsilon / steps).")


class TrainConfig(BaseModel):
    """Everything a training run depends on. Defaults: seed 001 Table III (Adam, lr 1e-3, batch 64, 20 epochs)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field("lenet5", description="Registered model name (python -m train.train --list-models).")
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments for the model factory.")
    data: str = Field("mnist", description="Dataset spec: a name, a Kaggle CSV, an IDX folder, an image folder, a .zip or a .npz.")
    test_data: str | None = Field(None, description="Held-out test set spec; default: the dataset's own test split when it has one.")
    image_size: list[int] | None = Field(None, min_length=2, max_length=2, description="Resize images to H W (image folders).")
    colour: Literal["grey", "rgb"] | None = Field(None, description="Force grey or RGB input (default: as the data is).")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Stratified validation share (seed 000: 0.1).")
    test_fraction: float = Field(0.0, ge=0, lt=1, description="Stratified test share carved from data when no test set exists.")
    train_limit: int | None = Field(None, ge=10, description="Use a stratified sample of this many training images.")
    epochs: int = Field(20, ge=1, description="Maximum epochs (early stopping may end sooner).")
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    optimizer: Literal["adam", "sgd", "adamw"] = "adam"
    lr_schedule: Literal["plateau", "cosine", "none"] = Field("plateau", description="ReduceLROnPlateau, cosine decay, or constant.")
    early_stopping_patience: int = Field(5, ge=0, description="Epochs without val improvement before stopping (0 = off).")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    adversarial: AdversarialConfig | None = Field(
        None, description="Adversarial training (FGSM/PGD examples mixed into each batch); off when null."
    )
    seed: int = 42
    mixed_precision: Literal["auto", "on", "off"] = Field("auto", description="auto = on when a GPU is present.")
    distribute: Literal["auto", "none", "mirrored", "multiworker"] = Field("auto", description="tf.distribute strategy.")
    transfer_stages: bool = Field(True, description="For 'transfer' models: train the head first, then fine-tune the top layers.")
    fine_tune_layers: int = Field(20, ge=0, description="Backbone layers unfrozen in the fine-tune stage.")
    fine_tune_epochs: int = Field(5, ge=0)
    runs_dir: str = Field("runs", description="Where run directories are created.")
    run_name: str | None = Field(None, description="Run directory name (default: model-data-timestamp).")
    tensorboard: bool = True
    verbose: int = Field(1, ge=0, le=2)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        p = Path(path)
        try:
            raw = yaml.safe_load(p.read_text()) if p.suffix in (".yaml", ".yml") else json.loads(p.read_text())
        except FileNotFoundError as e:
            raise ConfigFileError(f"{p}: config file not found") from e
        except (yaml.YAMLError, json.JSONDecodeError) as e:
            raise ConfigFileError(f"{p}: cannot parse config: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigFileError(f"{p}: config must be a mapping of field: value")
        raw.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise ConfigFileError(f"{p}: invalid config:\n{e}") from e
