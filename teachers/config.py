"""Typed model configuration: one dataclass per family, serialized to a plain dict / YAML / JSON.

`config_from_dict(config_to_dict(c)) == c`, and rebuilding a model from a saved config gives the same architecture
and parameter count. `narrow(config, factor)` scales the widths (cells, clusters, hidden sizes) of any family:
the students that are narrower than their teachers.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import numbers
import types
import typing
from dataclasses import dataclass, field
from typing import ClassVar

from vidistill.yt8m.constants import MAX_FRAMES, NUM_CLASSES
from vidistill.yt8m.errors import ConfigError


@dataclass
class HeadConfig:
    """The video-level classifier."""

    kind: str = "moe"  # "moe" (mixture of experts with a dummy expert) or "logistic"
    mixtures: int = 2  # MoE experts per class
    probability_gating: bool = False  # WILLOW's gated MoE: p * sigmoid(BN(p W))
    l2: float = 1e-8  # L2 penalty on the head's weight matrices

    def __post_init__(self) -> None:
        if self.kind not in ("moe", "logistic"):
            raise ConfigError(f"head kind must be 'moe' or 'logistic', got {self.kind!r}")
        if self.mixtures < 1:
            raise ConfigError(f"head mixtures must be >= 1, got {self.mixtures}")


@dataclass
class ModelConfig:
    """What every family has: the classes, the number of input frames, and the head."""

    family: ClassVar[str] = ""
    WIDTH_FIELDS: ClassVar[tuple[str, ...]] = ()  # scaled by narrow()

    num_classes: int = NUM_CLASSES
    frames: int = MAX_FRAMES  # input length T: max_frames for a teacher, k for a few-frame student
    head: HeadConfig = field(default_factory=HeadConfig)

    def __post_init__(self) -> None:
        if isinstance(self.head, dict):
            self.head = from_fields(HeadConfig, self.head, f"{self.family}.head")
        check_range("num_classes", self.num_classes, ">= 1")
        check_range("frames", self.frames, ">= 1")
        for name in self.WIDTH_FIELDS:
            if getattr(self, name) < 1:
                raise ConfigError(f"{self.family}: {name} must be >= 1, got {getattr(self, name)}")


CHUNK_RULES = ("fixed", "sqrt")


def default_chunks(k: int) -> int:
    """H-LSTM students: about sqrt(k) chunks of about sqrt(k) frames (k = 30 gives the paper's 5 chunks of 6)."""
    return max(1, min(k, round(math.sqrt(k))))


@dataclass
class HLSTMConfig(ModelConfig):
    """Hierarchical LSTM (the paper's teacher): chunks of frames -> shared lower LSTM -> upper LSTM over chunks."""

    family: ClassVar[str] = "hlstm"
    WIDTH_FIELDS: ClassVar[tuple[str, ...]] = ("lower_cells", "upper_cells")

    lower_cells: int = 1024
    lower_layers: int = 2
    upper_cells: int = 1024
    upper_layers: int = 2
    chunks: int = 20  # the frames are cut into this many contiguous chunks (of ceil(frames / chunks) frames)
    l2_normalize: bool = True  # each 1152-d frame L2-normalized
    # "fixed": `chunks` chunks of the `frames` input frames; "sqrt": the chunking follows the input's length T at
    # run time, default_chunks(T) chunks (the few-frame students' rule), so that one network runs any k (an any-k
    # student); `chunks` is then default_chunks(frames)
    chunk_rule: str = "fixed"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.chunk_rule not in CHUNK_RULES:
            raise ConfigError(f"hlstm: chunk_rule must be one of {', '.join(CHUNK_RULES)}, got {self.chunk_rule!r}")
        if self.chunk_rule == "sqrt" and self.chunks != default_chunks(self.frames):
            raise ConfigError(
                f"hlstm: chunk_rule 'sqrt' cuts {self.frames} frames into default_chunks({self.frames}) = "
                f"{default_chunks(self.frames)} chunks, but chunks is {self.chunks}: set chunks to that"
            )
        if not 1 <= self.chunks <= self.frames:
            raise ConfigError(f"hlstm: chunks must be in [1, frames={self.frames}], got {self.chunks}")

    @property
    def chunk_frames(self) -> int:
        return -(-self.frames // self.chunks)


@dataclass
class RNNConfig(ModelConfig):
    """Plain stacked LSTM or GRU over the frames; E = the final states of every layer."""

    family: ClassVar[str] = "rnn"
    WIDTH_FIELDS: ClassVar[tuple[str, ...]] = ("cells",)

    cell: str = "lstm"  # "lstm" or "gru"
    cells: int = 1024
    layers: int = 2
    l2_normalize: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cell not in ("lstm", "gru"):
            raise ConfigError(f"rnn: cell must be 'lstm' or 'gru', got {self.cell!r}")


@dataclass
class NetVLADConfig(ModelConfig):
    """WILLOW's NetVLAD family: two streams (rgb K clusters, audio K/2) pooled, hidden FC, context gating.

    `non_local`: a self-attention block over each stream's K x D residual matrix before its intra-normalization
    (Non-local NetVLAD; pooling netvlad or netrvlad only)."""

    family: ClassVar[str] = "netvlad"
    WIDTH_FIELDS: ClassVar[tuple[str, ...]] = ("clusters", "hidden")

    pooling: str = "netvlad"  # "netvlad", "netrvlad" (no centres), "netfv" (Fisher vectors, 2 D K) or "softdbof"
    clusters: int = 256  # rgb clusters; audio gets clusters // 2
    hidden: int = 1024
    context_gating: bool = True
    input_batch_norm: bool = True
    sample_frames: int = 0  # > 0: draw this many frames with replacement (training and inference), 0: all
    non_local: bool = False  # self-attention over the K cluster residuals (pooling netvlad / netrvlad)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pooling not in ("netvlad", "netrvlad", "netfv", "softdbof"):
            raise ConfigError(f"netvlad: pooling must be netvlad, netrvlad, netfv or softdbof, got {self.pooling!r}")
        if self.clusters < 2:
            raise ConfigError(f"netvlad: clusters must be >= 2 (audio gets clusters // 2), got {self.clusters}")
        if self.non_local and self.pooling not in ("netvlad", "netrvlad"):
            raise ConfigError(f"netvlad: non_local needs pooling netvlad or netrvlad, got pooling {self.pooling!r}")


@dataclass
class NeXtVLADConfig(ModelConfig):
    """NeXtVLAD (3rd place 2018): expansion, grouped attention, clusters, SE context gating."""

    family: ClassVar[str] = "nextvlad"
    WIDTH_FIELDS: ClassVar[tuple[str, ...]] = ("clusters", "hidden")

    expansion: int = 2
    groups: int = 8  # rgb groups; audio gets groups // 2
    clusters: int = 128  # rgb clusters; audio gets clusters // 2
    hidden: int = 2048
    se_reduction: int = 8
    dropout: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        for stream, size in (("rgb", 1024), ("audio", 128)):
            groups = self.groups if stream == "rgb" else max(1, self.groups // 2)
            if (self.expansion * size) % groups:
                raise ConfigError(f"nextvlad: expansion * {size} must divide into {groups} groups ({stream})")
        if self.clusters < 2 or self.hidden < self.se_reduction:
            raise ConfigError("nextvlad: clusters must be >= 2 and hidden >= se_reduction")


@dataclass
class DBoFConfig(ModelConfig):
    """WILLOW's gated deep bag of frames: each 1152-d frame projected to `clusters` (BN, ReLU6), pooled over the
    real frames (`pooling` "max" or "average"), hidden FC (BN, ReLU6), context gating."""

    family: ClassVar[str] = "dbof"
    WIDTH_FIELDS: ClassVar[tuple[str, ...]] = ("clusters", "hidden")

    clusters: int = 4096
    hidden: int = 1024
    pooling: str = "max"  # "max" or "average", over the real frames
    context_gating: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pooling not in ("max", "average"):
            raise ConfigError(f"dbof: pooling must be 'max' or 'average', got {self.pooling!r}")


@dataclass
class TransformerConfig(ModelConfig):
    """A BERT-style frame encoder (the 2019 segment challenge's 9th place): frames projected to the hidden size,
    learned positions, `layers` post-LayerNorm encoder layers of `heads` x `head_size` self-attention and a 4x GELU
    feed-forward, then pooling. `streams="cross"`: rgb and audio as two sequences whose layers also attend to each
    other (the seed's "BERTCross"); E is then both streams' pooled vectors."""

    family: ClassVar[str] = "transformer"
    WIDTH_FIELDS: ClassVar[tuple[str, ...]] = ("head_size",)  # hidden = heads x head_size stays divisible

    layers: int = 2
    heads: int = 12
    head_size: int = 64  # hidden size H = heads * head_size (768 for BERT-base's 12 x 64)
    feed_forward: int = 4  # the feed-forward layer's width, in multiples of H
    pooling: str = "mean"  # "cls" (a learned token prepended), "mean" (masked), "first" (frame 0), "max" (masked)
    streams: str = "concat"  # "concat": one 1152-d sequence; "cross": rgb and audio cross-attending
    max_positions: int = MAX_FRAMES  # rows of the learned position table; frames at positions 0..frames-1
    dropout: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pooling not in ("cls", "mean", "first", "max"):
            raise ConfigError(f"transformer: pooling must be cls, mean, first or max, got {self.pooling!r}")
        if self.streams not in ("concat", "cross"):
            raise ConfigError(f"transformer: streams must be 'concat' or 'cross', got {self.streams!r}")
        for name in ("layers", "heads", "feed_forward"):
            if getattr(self, name) < 1:
                raise ConfigError(f"transformer: {name} must be >= 1, got {getattr(self, name)}")
        if self.frames > self.max_positions:
            raise ConfigError(
                f"transformer: frames ({self.frames}) exceeds max_positions ({self.max_positions}): "
                "raise max_positions (the position table) or take fewer frames"
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"transformer: dropout must be in [0, 1), got {self.dropout}")

    @property
    def hidden(self) -> int:
        return self.heads * self.head_size


@dataclass
class MixNeXtVLADConfig(ModelConfig):
    """MixNeXtVLAD (3rd place 2018, on-the-fly distillation): `branches` NeXtVLAD models, each with its own encoder
    (NeXtVLADConfig's fields, the same for every branch) and its own logistic classifier (`head`, which must be
    logistic: the gate mixes the branches' logits), mixed by a softmax gate on the mean of the real frames
    (teachers/mixture.py). Training adds to the mixture's L_CE the branches' L_CE (weight `branch_weight`) and
    T^2 sum_m KL(softmax(z_mix / T) || softmax(z_m / T)) (weight `kl_weight`, T = `temperature`): the mixture teaches
    its branches in the same run (distill/terms.py). These three are the family's training objective, so they live
    here, like `dropout`; they change no weight."""

    family: ClassVar[str] = "mixnextvlad"
    WIDTH_FIELDS: ClassVar[tuple[str, ...]] = ("clusters", "hidden")

    head: HeadConfig = field(default_factory=lambda: HeadConfig(kind="logistic"))  # each branch's classifier
    branches: int = 3
    expansion: int = 2
    groups: int = 8  # rgb groups; audio gets groups // 2
    clusters: int = 128  # rgb clusters; audio gets clusters // 2
    hidden: int = 2048
    se_reduction: int = 8
    dropout: float = 0.5
    temperature: float = 3.0  # T of the on-the-fly KL
    branch_weight: float = 1.0  # weight of the sum of the branches' L_CE
    kl_weight: float = 1.0  # weight of T^2 sum_m KL(mixture || branch m)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head.kind != "logistic" or self.head.probability_gating:
            gating = " with probability gating" if self.head.probability_gating else ""
            raise ConfigError(
                "mixnextvlad: each branch's head must be logistic without probability gating (head kind "
                f"'logistic'), got {self.head.kind!r}{gating}: the gate mixes the branches' logits, which the "
                "on-the-fly KL reads"
            )
        if self.branches < 2:
            raise ConfigError(
                f"mixnextvlad: branches must be >= 2 (one branch is the nextvlad family), got {self.branches}"
            )
        if not 0 < self.temperature < float("inf"):
            raise ConfigError(f"mixnextvlad: temperature must be a finite number > 0, got {self.temperature}")
        for name in ("branch_weight", "kl_weight"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise ConfigError(f"mixnextvlad: {name} must be a finite number >= 0, got {getattr(self, name)}")
        self.temperature, self.branch_weight, self.kl_weight = map(
            float, (self.temperature, self.branch_weight, self.kl_weight)
        )
        try:
            self.branch  # noqa: B018  (NeXtVLADConfig's own checks of the branch's fields)
        except ConfigError as e:
            raise ConfigError(f"mixnextvlad branch: {e}") from None

    @property
    def branch(self) -> NeXtVLADConfig:
        """Each branch's NeXtVLAD configuration (encoder and classifier)."""
        return NeXtVLADConfig(
            num_classes=self.num_classes,
            frames=self.frames,
            head=self.head,
            expansion=self.expansion,
            groups=self.groups,
            clusters=self.clusters,
            hidden=self.hidden,
            se_reduction=self.se_reduction,
            dropout=self.dropout,
        )


CONFIG_CLASSES: dict[str, type[ModelConfig]] = {
    cls.family: cls
    for cls in (
        HLSTMConfig,
        RNNConfig,
        NetVLADConfig,
        NeXtVLADConfig,
        TransformerConfig,
        MixNeXtVLADConfig,
        DBoFConfig,
    )
}


def config_to_dict(config: ModelConfig) -> dict:
    return {"family": config.family, **dataclasses.asdict(config)}


def _expected(value, hint) -> str | None:
    """None when `value` fits the type annotation `hint`, else what was expected. Scalars only: nested configs
    (dataclasses given as mappings) check their own fields."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        return _expected(value, options[0]) if len(options) == 1 else None
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if hint is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if hint is str:
        return None if isinstance(value, str) else "a string"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        choices = [member.value for member in hint]
        return None if value in choices else f"one of {', '.join(map(str, choices))}"
    return None


def from_fields(cls, data: dict, what: str):
    """`cls(**data)`, with a clear error naming `what`, the options it does not know, and any option whose value
    has the wrong type (a float where an integer belongs, a word where a number belongs). A number written as a
    string ("1e-3", which YAML reads as a string) is taken for a float option."""
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: expected a mapping of options, got {data!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{what}: unknown option(s) {unknown}; known: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    data = dict(data)
    for name, value in data.items():
        hint = hints.get(name)
        if hint in (float, float | None) and isinstance(value, str):
            try:
                data[name] = value = float(value)
            except ValueError:
                pass
        expected = _expected(value, hint)
        if expected is not None:
            raise ConfigError(f"{what}.{name} must be {expected}, got {value!r}")
    return cls(**data)


class OutOfRange(ConfigError):
    """A number outside its option's range, or no number (check_range). `option` and `problem` ("must be >= 1, got
    0") let a command line name the flag that set it as well (vidistill/commands/options.py: flags_named)."""


RULES = {">= 0": lambda v: v >= 0, ">= 1": lambda v: v >= 1, "> 0": lambda v: v > 0}


def range_problem(value, rule: str) -> str | None:
    """What is wrong with `value` under `rule` ("must be >= 1, got 0"), None when nothing: ">= 0" and ">= 1" take
    an integer (a count), "> 0" a finite number (a rate, a factor, seconds); NaN and infinities obey no rule."""
    integer = rule != "> 0"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if integer else numbers.Real):
        return f"must be {'an integer' if integer else 'a number'}, got {value!r}"
    if not (math.isfinite(value) and RULES[rule](value)):
        return f"must be {rule}, got {value}"
    return None


def check_range(option: str, value, rule: str) -> None:
    """The check of a numeric option against its rule (range_problem): an OutOfRange naming `option` when broken."""
    problem = range_problem(value, rule)
    if problem is not None:
        error = OutOfRange(f"{option} {problem}")
        error.option, error.problem = option, problem
        raise error


def config_from_dict(data: dict) -> ModelConfig:
    data = dict(data)
    family = data.pop("family", None)
    if family not in CONFIG_CLASSES:
        raise ConfigError(f"unknown model family {family!r}; choose one of {sorted(CONFIG_CLASSES)}")
    return from_fields(CONFIG_CLASSES[family], data, family)


def save_config(config: ModelConfig, path: str) -> None:
    """YAML for .yaml/.yml, else JSON."""
    data = config_to_dict(config)
    with open(path, "w") as f:
        if path.endswith((".yaml", ".yml")):
            import yaml

            yaml.safe_dump(data, f, sort_keys=False)
        else:
            json.dump(data, f, indent=2)


def read_mapping(path: str) -> dict:
    """A JSON (.json) or YAML (any other name) file's content; ValueError naming the file for a syntax error or a
    file that does not hold a mapping."""
    import yaml

    with open(path) as f:
        try:
            data = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            raise ConfigError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of options, got {type(data).__name__}")
    return data


def load_config(path: str) -> ModelConfig:
    data = read_mapping(path)
    try:
        return config_from_dict(data.get("model", data))
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None


def narrow(config: ModelConfig, factor: float) -> ModelConfig:
    """The same family with every width field scaled by `factor` (rounded, at least 2)."""
    check_width(factor)
    scaled = {name: max(2, round(getattr(config, name) * factor)) for name in config.WIDTH_FIELDS}
    return dataclasses.replace(config, **scaled)


def check_width(factor: float) -> None:
    """A student's width factor (narrow's `factor`, `--width`): > 0."""
    check_range("width", factor, "> 0")
