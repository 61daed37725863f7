"""vidistill: teacher-student distillation, quantization, export and benchmarks for few-frame video classifiers.

Everything installs under this one name: `vidistill.yt8m` (the data format, synthetic data, metrics),
`vidistill.teachers`, `vidistill.students`, `vidistill.distill`, `vidistill.export`, `vidistill.bench`, and the
command line (`vidistill.cli`). The names users call are available from here directly, imported on first use
(so `vidistill --help` and the Predictor never import TensorFlow):

    import vidistill
    ds = vidistill.read_frame_dataset("train*.tfrecord", batch_size=64)
    predictor = vidistill.Predictor("export/k30/int8-dynamic.onnx")

The whole export is `vidistill.export_model` and the benchmark `vidistill.run_benchmark` (`vidistill.export` and
`vidistill.bench` are the subpackages).
"""

import os

# tensorflow-model-optimization (int8-qat) needs Keras 2 behind tf.keras; set here, the one place, before
# anything imports TensorFlow (every subpackage is imported through this package), unless the user chose a value
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's oneDNN build keeps every byte it ever allocated in its own pool (resident until exit): a model's
# random initialization (3 transient copies of its weights), the checkpoint restore, the gradients and Adam's
# temporaries stayed resident under every later stage (measured on a 1.29 GB model: 4.2 GB held after building it,
# 1.8 GB with this). With the system allocator the oneDNN kernels stay and freed tensors go back to the OS; TF
# latency unchanged within noise (docs/BENCHMARKS.md, paper scale)
os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")

__version__ = "0.1.0"

# In a source checkout (tests, a machine that runs it from the tree with PYTHONPATH), the subpackages are the
# folders beside this one (the repository's layout: teachers/, students/, ...); an installed wheel holds them
# inside this package (setup.cfg maps each folder to vidistill.<name>).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(_ROOT, "setup.cfg")) and os.path.isfile(os.path.join(_ROOT, "yt8m", "__init__.py")):
    __path__.append(_ROOT)  # a package's __path__ is set by the import system

# public name -> the module that defines it
_PUBLIC = {
    # data: readers, writers, metrics
    "read_frame_dataset": "vidistill.yt8m.readers",
    "read_video_level_dataset": "vidistill.yt8m.readers",
    "BadRecords": "vidistill.yt8m.readers",
    "UserError": "vidistill.yt8m.errors",
    "DataError": "vidistill.yt8m.errors",
    "ConfigError": "vidistill.yt8m.errors",
    "write_frame_records": "vidistill.yt8m.records",
    "VideoMetrics": "vidistill.yt8m.metrics",
    "gap": "vidistill.yt8m.metrics",
    "hit_at_one": "vidistill.yt8m.metrics",
    "perr": "vidistill.yt8m.metrics",
    "mean_average_precision": "vidistill.yt8m.metrics",
    # models
    "PRESETS": "vidistill.teachers.presets",
    "build_model": "vidistill.teachers.registry",
    "model_flops": "vidistill.teachers.registry",
    "HLSTMConfig": "vidistill.teachers.config",
    "RNNConfig": "vidistill.teachers.config",
    "NetVLADConfig": "vidistill.teachers.config",
    "NeXtVLADConfig": "vidistill.teachers.config",
    "DBoFConfig": "vidistill.teachers.config",
    "HeadConfig": "vidistill.teachers.config",
    "load_config": "vidistill.teachers.config",
    "save_config": "vidistill.teachers.config",
    "student_config": "vidistill.students.student",
    "build_student": "vidistill.students.student",
    # training, conversion
    "Distiller": "vidistill.distill.distiller",
    "Mode": "vidistill.distill.modes",
    "TrainConfig": "vidistill.distill.config",
    "LossWeights": "vidistill.distill.losses",
    "LossTerm": "vidistill.distill.terms",
    "register_loss_term": "vidistill.distill.terms",
    "train": "vidistill.distill.trainer",
    "convert": "vidistill.distill.runs",
    "finetune": "vidistill.distill.finetune",
    # export, inference, benchmarks
    "ExportConfig": "vidistill.export.config",
    "export_source": "vidistill.sources",
    "export_model": "vidistill.export.exporter",
    "Predictor": "vidistill.export.predictor",
    "BenchConfig": "vidistill.bench.benchmark",
    "run_benchmark": "vidistill.bench.benchmark",
}
# where the public name differs from the name in its module ("export" and "bench" are the subpackages' names)
_RENAMED = {"convert": "convert_run", "export_model": "export"}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'vidistill' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_PUBLIC[name]), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
