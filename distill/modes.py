"""What a training run trains: the mode, with the questions the trainer asks of it as properties."""

from __future__ import annotations

import enum

from vidistill.yt8m.errors import ConfigError


class Mode(enum.StrEnum):
    """parallel: teacher (own L_CE) and student (distilled from it) learn together; serial: the student learns
    from a frozen, trained teacher; teacher: a teacher alone (L_CE); student: a student alone (L_CE on its k
    frames, the paper's Uniform-k baselines). A StrEnum: it equals, prints and formats as its value."""

    PARALLEL = "parallel"
    SERIAL = "serial"
    TEACHER = "teacher"
    STUDENT = "student"

    @property
    def has_teacher(self) -> bool:
        return self is not Mode.STUDENT

    @property
    def has_student(self) -> bool:
        return self is not Mode.TEACHER

    @property
    def trains_teacher(self) -> bool:
        return self in (Mode.PARALLEL, Mode.TEACHER)

    @property
    def distills(self) -> bool:
        """The student learns from a teacher (L_REP / L_PRED, the head policy)."""
        return self in (Mode.PARALLEL, Mode.SERIAL)

    @property
    def restores_teacher(self) -> bool:
        """The teacher is a trained run's, restored and frozen (--teacher-run)."""
        return self is Mode.SERIAL

    @classmethod
    def parse(cls, value: str | Mode, what: str = "mode") -> Mode:
        """`value` as a Mode; a ValueError naming `what` and the choices otherwise."""
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"{what} must be one of {', '.join(cls)}, got {value!r}") from None
