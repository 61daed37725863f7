"""What `export` exports, found from a directory: a converted student (`vidistill convert`) or a run directory (its
student, or with which="teacher" its teacher). It needs distill/ (reading runs) and export/ (the source type),
which may not import each other, so it lives above both."""

from __future__ import annotations


def export_source(path: str, which: str = "auto"):
    """The `vidistill.export.source.ExportSource` of a converted student or of a run's student / teacher."""
    import os

    from vidistill.distill.config import load_train_config
    from vidistill.distill.runs import load_model
    from vidistill.export.source import student_source, teacher_source
    from vidistill.students.convert import is_student_dir, load_student_config

    from vidistill.distill.ensemble import is_ensemble

    if is_ensemble(path):
        return _ensemble_source(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such directory (give a converted student or a run directory)")
    loaded = load_model(path, which)
    if is_student_dir(path):
        return student_source(loaded.model, load_student_config(path), path)
    config = load_train_config(path)
    if loaded.which == "teacher":
        return teacher_source(loaded.model, config.teacher, path)
    return student_source(loaded.model, config.student, path)


def _ensemble_source(path: str):
    """An ensemble's source: each member a whole-video model (a run's teacher), converted alone, then joined."""
    from vidistill.distill.config import load_train_config
    from vidistill.distill.ensemble import build_ensemble, ensemble_config, load_members
    from vidistill.export.errors import ExportError
    from vidistill.export.source import ensemble_source, teacher_source

    config = ensemble_config(path).pruned()  # members of weight 0 are not exported
    members = load_members(config)
    sources = []
    for member in members:
        if member.which != "teacher":
            raise ExportError(
                f"ensemble member {member.path} is a few-frame student: the ensemble's ONNX graph takes whole "
                "videos, so export takes ensembles of teachers (export the student on its own)"
            )
        sources.append(teacher_source(member.model, load_train_config(member.path).teacher, member.path))
    how = {
        "weights": config.normalized_weights,
        "representation": config.representation,
        "rep_weights": config.normalized_rep_weights,
    }
    return ensemble_source(build_ensemble(config, members), sources, how, path)
