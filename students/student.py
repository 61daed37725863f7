"""Few-frame students: any family looking at k frames chosen by a selection policy, optionally narrower than
its teacher.

A student model takes the whole video ({"frames": [B, T, 1152], "num_frames": [B]}, any T), selects k of its
real frames (students/selection.py), and runs its backbone - a model of any family built for `frames = k` - on
them. It returns the backbone's {"predictions", "representation"}. The teacher and the student need not be of
the same family; when their representation widths differ, a `RepresentationProjection` maps E_S to E_T's width
so that L_REP can compare them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import tf_keras as keras

from vidistill.students.selection import POLICIES, FrameSelector
from vidistill.teachers.config import (
    HLSTMConfig,
    ModelConfig,
    config_from_dict,
    config_to_dict,
    default_chunks,
    narrow,
)
from vidistill.teachers.registry import build_model
from vidistill.yt8m.errors import ConfigError


@dataclass
class StudentConfig:
    """A backbone config built for k = model.frames frames, and how those frames are chosen.

    An any-k student (`frame_counts`, two or more k's): one backbone trained at every k of the set (the largest is
    model.frames, and the default k), which takes any number of frames at run time; its H-LSTM chunks each k as a
    student built for that k alone would (chunk rule "sqrt")."""

    model: ModelConfig
    policy: str = "uniform"
    seed: int = 0  # for the random policy
    frame_counts: list[int] = field(default_factory=list)  # an any-k student's k's ([]: k = model.frames only)

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = config_from_dict(self.model)
        if self.policy not in POLICIES:
            raise ConfigError(f"unknown frame-selection policy {self.policy!r}; choose one of {', '.join(POLICIES)}")
        self.frame_counts = list(check_frame_counts(self.frame_counts)) if self.frame_counts else []
        if len(self.frame_counts) == 1:
            raise ConfigError(
                f"student.frame_counts holds one k ({self.frame_counts[0]}): an any-k student needs two or more; "
                "for one k set the model's frames (--frames K) and leave frame_counts empty"
            )
        if self.frame_counts and self.frame_counts[-1] != self.model.frames:
            raise ConfigError(
                f"an any-k student's backbone is built for its largest k ({self.frame_counts[-1]}), but its "
                f"model.frames is {self.model.frames}: set them equal"
            )
        if self.frame_counts and isinstance(self.model, HLSTMConfig) and self.model.chunk_rule != "sqrt":
            raise ConfigError(
                "an any-k H-LSTM student chunks each k as a student of that k would: set its model's chunk_rule to "
                f"'sqrt' (and chunks to {default_chunks(self.model.frames)}), or build it with student_config()"
            )

    @property
    def k(self) -> int:
        """The default k (an any-k student's largest)."""
        return self.model.frames

    @property
    def ks(self) -> tuple[int, ...]:
        """Every k this student is trained and served at, ascending."""
        return tuple(self.frame_counts) or (self.model.frames,)

    @property
    def any_k(self) -> bool:
        return len(self.ks) > 1

    def check_k(self, k: int | None) -> int:
        """`k` (None: the default k) if this student was trained at it, else a ConfigError naming its k's."""
        if k is None:
            return self.k
        if k not in self.ks:
            trained = ", ".join(map(str, self.ks))
            raise ConfigError(
                f"this student was trained at k = {trained}; k={k} is not one of them: choose one of those "
                "(or train an any-k student with that k in its --frames set)"
            )
        return k

    def to_dict(self) -> dict:
        data = {"model": config_to_dict(self.model), "policy": self.policy, "seed": self.seed}
        if self.frame_counts:
            data["frame_counts"] = list(self.frame_counts)
        return data

    def frames_to_decode(self, *, training: bool = False, k: int | None = None):
        """The reader's `select` for this student at k (None: its default k): its k frames, picked before
        decoding, bit for bit the frames its FrameSelector takes (which then passes them through unchanged). None
        where training draws `random` frames afresh each step, or trains an any-k student (each k selects its own
        frames): the selectors must see the whole video."""
        if training and (self.policy == "random" or self.any_k):
            return None
        from vidistill.students.selection import frames_to_decode

        return frames_to_decode(self.check_k(k), self.policy, self.seed)

    @classmethod
    def from_dict(cls, data: dict) -> StudentConfig:
        from vidistill.teachers.config import from_fields

        return from_fields(cls, data, "student")


def check_frame_counts(counts) -> tuple[int, ...]:
    """A set of k's, ascending; a ConfigError for a k < 1, a duplicate, or a value that is not a whole number."""
    values = []
    for value in counts:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"frame counts must be whole numbers of frames, got {value!r} in {list(counts)}")
        if value < 1:
            raise ConfigError(f"a student needs k >= 1 frames, got {value} in {list(counts)}")
        values.append(value)
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        raise ConfigError(f"frame counts {list(counts)} repeat {', '.join(map(str, duplicates))}: give each k once")
    return tuple(sorted(values))


def parse_frame_counts(text: str, option: str = "--frames") -> tuple[int, ...]:
    """'6,10,15' -> (6, 10, 15), checked as check_frame_counts does; errors name `option`."""
    prefix = f"{option}: " if option else ""
    parts = [part.strip() for part in str(text).split(",")]
    try:
        values = [int(part) for part in parts]
    except ValueError:
        raise ConfigError(
            f"{prefix}expected a whole number of frames or a comma-separated set of them (6,10,15), got {text!r}"
        ) from None
    try:
        return check_frame_counts(values)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e}") from None


def student_config(
    base: ModelConfig,
    *,
    k: int | Sequence[int],
    policy: str = "uniform",
    width: float = 1.0,
    num_classes: int | None = None,
    seed: int = 0,
) -> StudentConfig:
    """The student of `base` (usually the teacher's config): the same family at k frames, widths times `width`;
    `k` a set of two or more k's: an any-k student (built for the largest, H-LSTM chunk rule "sqrt")."""
    ks = check_frame_counts([k] if isinstance(k, int) else list(k))
    if not ks:
        raise ConfigError("a student needs a k: got an empty set of frame counts")
    model = narrow(base, width) if width != 1.0 else base
    changes: dict = {"frames": ks[-1]}
    if num_classes is not None:
        changes["num_classes"] = num_classes
    if isinstance(model, HLSTMConfig):
        changes["chunks"] = default_chunks(ks[-1])
        changes["chunk_rule"] = "sqrt" if len(ks) > 1 else "fixed"
    counts = list(ks) if len(ks) > 1 else []
    return StudentConfig(dataclasses.replace(model, **changes), policy=policy, seed=seed, frame_counts=counts)


def width_for_parameters(base: ModelConfig, *, k: int, fraction: float, num_classes: int | None = None) -> float:
    """The width factor whose student (at k frames) has about `fraction` of the parameters of `base` at its own
    size (bisection on the built models' parameter counts)."""
    target = fraction * build_model(base).count_params()
    low, high = 0.01, 1.0
    for _ in range(12):
        middle = (low + high) / 2
        count = build_model(student_config(base, k=k, width=middle, num_classes=num_classes).model).count_params()
        low, high = (middle, high) if count < target else (low, middle)
    return round((low + high) / 2, 3)


def build_student(config: StudentConfig, name: str = "student") -> keras.Model:
    """Whole video in, k selected frames through the backbone, {"predictions", "representation"} out (an any-k
    student: at its default k; `student_views` gives it at every k)."""
    backbone = build_model(config.model, name=f"{name}_backbone", any_length=config.any_k)
    return _view(backbone, config, config.k, name)


def _view(backbone: keras.Model, config: StudentConfig, k: int, name: str) -> keras.Model:
    from vidistill.yt8m.constants import FEATURE_SIZE

    frames = keras.Input((None, FEATURE_SIZE), name="frames")
    num_frames = keras.Input((), dtype="int32", name="num_frames")
    selector = FrameSelector(k, config.policy, seed=config.seed, name="select")
    selected, counts = selector(frames, num_frames)
    outputs = backbone({"frames": selected, "num_frames": counts})
    return keras.Model({"frames": frames, "num_frames": num_frames}, outputs, name=name)


def student_at(student: keras.Model, config: StudentConfig, k: int | None = None) -> keras.Model:
    """The student model at k (None: its default k; `student` itself there): the same backbone, and so the same
    weights, behind a selection of k frames. A ConfigError for a k it was not trained at."""
    k = config.check_k(k)
    if k == config.k:
        return student
    return _view(backbone_of(student), config, k, f"{student.name}_k{k}")


def backbone_of(student: keras.Model) -> keras.Model:
    """The backbone inside a student model (`build_student`)."""
    inner = [layer for layer in student.layers if isinstance(layer, keras.Model)]
    if len(inner) != 1:
        raise ConfigError(f"{student.name} is not a student model (expected one backbone inside, found {len(inner)})")
    return inner[0]


def student_views(student: keras.Model, config: StudentConfig) -> dict[int, keras.Model]:
    """{k: the student at k} for every k it is trained at (one entry for a single-k student)."""
    return {k: student_at(student, config, k) for k in config.ks}


class RepresentationProjection(keras.layers.Dense):
    """A learned linear map from the student's representation width to the teacher's (for L_REP)."""

    def __init__(self, teacher_width: int, **kwargs):
        super().__init__(teacher_width, use_bias=True, **kwargs)
