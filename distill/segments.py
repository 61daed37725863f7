"""Models for the segment task (2019): the rule that builds a model for one 5-frame segment.

A segments run (`data.segments`) reads whole videos (`data.max_frames` is the read length) and trains on their
rated 5-frame segments. Padding each segment to a video model's 300 frames would cost about 60x, so the run's
models are built for 5 frames instead, wherever a family's weights do not depend on the frame count: then a video
run's checkpoint restores into them unchanged (`--init`). `segment_model_config` is that rule, in one place:

- every family: `frames` = 5;
- hlstm: `chunks` = `default_chunks(5)` (2 chunks of 3 frames; the lower LSTM is shared by the chunks, so the
  weights are the same for any chunk count);
- rnn, netvlad, dbof, nextvlad: nothing else (no weight depends on the frame count; NetVLAD's `sample_frames` draws
  from the segment's real frames);
- transformer: nothing else (its position table has `max_positions` rows whatever `frames` is; a segment takes
  positions 0..4).

A family whose weights do depend on the frame count says so in `FAMILY_CHANGES` by keeping its `frames`
(`lambda config, frames: {"frames": config.frames}`): its segments are then padded to that length (the trainer and the
evaluation pad a window to the model's input length). A student at k >= 5 frames is built for 5 (all of a
segment's frames, whatever its policy); one at k < 5 keeps its k and its policy picks k of each segment's frames.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from vidistill.students.student import StudentConfig, default_chunks
from vidistill.teachers.config import ModelConfig
from vidistill.yt8m.constants import SEGMENT_FRAMES

# family -> the changes, besides the frame count, that build a model of that family for `frames` of a segment
FAMILY_CHANGES: dict[str, Callable[[ModelConfig, int], dict]] = {
    "hlstm": lambda config, frames: {"chunks": default_chunks(frames)},
}


def segment_model_config(config: ModelConfig, frames: int = SEGMENT_FRAMES) -> ModelConfig:
    """`config` built for `frames` (5: one segment) frames, with the same weights (see the module's docstring);
    applying it twice changes nothing more."""
    changes = {"frames": frames, **FAMILY_CHANGES.get(config.family, lambda *_: {})(config, frames)}
    return dataclasses.replace(config, **changes)


def segment_student_config(student: StudentConfig) -> StudentConfig:
    """A student whose backbone is `segment_model_config` of its own: k frames of each segment, k = 5 at most
    (a few-frame student of a segment model keeps its k < 5, e.g. 2 of the 5 frames)."""
    return dataclasses.replace(student, model=segment_model_config(student.model, min(student.k, SEGMENT_FRAMES)))


def segment_train_config(config):
    """A TrainConfig's teacher and student built for segments (`config.data.segments`); returns the config."""
    if config.teacher is not None:
        config.teacher = segment_model_config(config.teacher)
    if config.student is not None:
        config.student = segment_student_config(config.student)
    return config
