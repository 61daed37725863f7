"""The teacher-student method: losses, trainer, checkpoints, eval and predict."""
