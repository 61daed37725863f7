"""Families by name: `build_model(config)` and `model_flops(config)` for any ModelConfig.

Every model takes {"frames": [B, T, 1152], "num_frames": [B]} (T = config.frames, rows >= num_frames are padding)
and returns {"predictions": [B, C] probabilities, "representation": [B, E]}. A family registered with
`classifies=True` (MixNeXtVLAD: its branches have their own classifiers) builds the whole output mapping itself,
and may add training-only outputs beside those two (its loss terms read them; every exported or served function
keeps "predictions" and "representation" only: export/serving.py, students/convert.py, teachers/inference.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import tf_keras as keras

from vidistill.teachers.config import ModelConfig
from vidistill.yt8m.constants import FEATURE_SIZE
from vidistill.yt8m.errors import ConfigError


@dataclass(frozen=True)
class Family:
    encoder: Callable[[ModelConfig], keras.layers.Layer]  # config -> layer(frames, num_frames) -> E [B, E]
    flops: Callable[[ModelConfig], int]  # config -> FLOPs (2 x multiply-accumulates) per video
    # (config, fused) -> weights read from memory per video at batch 1 (see `model_weight_reads`)
    weight_reads: Callable[[ModelConfig, bool], int]
    # True: the encoder layer classifies too and returns the model's outputs ({"predictions", "representation", ...})
    # itself; build_model then adds no ClassifierHead
    classifies: bool = False


FAMILIES: dict[str, Family] = {}


def register(
    family: str,
    *,
    flops: Callable[[ModelConfig], int],
    weight_reads: Callable[[ModelConfig, bool], int],
    classifies: bool = False,
):
    def decorator(encoder):
        FAMILIES[family] = Family(encoder, flops, weight_reads, classifies)
        return encoder

    return decorator


def _family(config: ModelConfig) -> Family:
    import vidistill.teachers.families  # noqa: F401  (registers every family)

    if config.family not in FAMILIES:
        raise ConfigError(f"no builder registered for family {config.family!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[config.family]


def model_inputs(frames: int | None) -> dict[str, keras.Input]:
    return {
        "frames": keras.Input((frames, FEATURE_SIZE), name="frames"),
        "num_frames": keras.Input((), dtype="int32", name="num_frames"),
    }


def build_model(config: ModelConfig, name: str | None = None, *, any_length: bool = False) -> keras.Model:
    """The model a config describes (a functional tf_keras Model: encoder, then the classifier head); `any_length`:
    its frames input takes any number of frames T (an any-k student's backbone), not only config.frames."""
    from vidistill.teachers.heads import ClassifierHead

    inputs = model_inputs(None if any_length else config.frames)
    family = _family(config)
    encoded = family.encoder(config)(inputs["frames"], inputs["num_frames"])
    if family.classifies:
        outputs = dict(encoded)
    else:
        predictions = ClassifierHead(config.num_classes, config.head, name="head")(encoded)
        outputs = {"predictions": predictions, "representation": encoded}
    return keras.Model(inputs, outputs, name=name or config.family)


def model_flops(config: ModelConfig) -> int:
    """Analytic FLOPs per video (2 x multiply-accumulates; elementwise work is not counted)."""
    return _family(config).flops(config)


def model_weight_reads(config: ModelConfig, *, fused: bool = True) -> int:
    """Weights read from memory for one video at batch 1, counted in weights (times bytes per weight = bytes).

    A weight matrix applied to all frames at once is read once; a recurrent layer's matrices are read again at every
    sequential step. `fused` (ONNX Runtime's LSTM/GRU kernels): the input projection of all steps is one matrix
    product, so only the recurrent matrix is read per step; not fused (Keras' step function, the TF SavedModel):
    both are. At batch 1 these models are bound by these reads, not by their FLOPs (bench's roofline)."""
    return _family(config).weight_reads(config, fused)
