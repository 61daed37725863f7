"""Runners: one model on one provider, created, run, closed. OnnxRunner (ONNX Runtime) and SavedModelRunner
(TensorFlow, imported only when a SavedModel is run), plus which provider ran each node (ORT profiling).

Sessions are made by `export.sessions.create_session`, which checks that the provider asked for really loaded.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from vidistill.yt8m.errors import ConfigError

from vidistill.export.sessions import (
    EXECUTION_PROVIDERS,
    GPU_PROVIDERS,
    PROVIDER_NAMES,
    ProviderUnavailable,
    create_session,
    gpu_present,
)


class BatchUnsupported(ValueError):
    """The model cannot take this input shape (a static batch or frames dimension)."""


def parse_providers(spec: str) -> list[str]:
    """'cpu,cuda' -> ['cpu', 'cuda']; 'auto' -> ['auto']. Unknown names raise ValueError listing the valid ones."""
    names = [p.strip().lower() for p in spec.split(",") if p.strip()]
    if names == ["auto"]:
        return names
    unknown = [p for p in names if p not in EXECUTION_PROVIDERS]
    if unknown or not names:
        raise ConfigError(
            f"unknown provider {', '.join(map(repr, unknown)) or repr(spec)}: "
            f"choose from {', '.join(PROVIDER_NAMES)} (comma-separated), or auto"
        )
    return list(dict.fromkeys(names))


def _probe_model() -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def probe_provider(provider: str) -> str | None:
    """None when a session on `provider` really loads and runs, else why not (one line)."""
    if provider == "cpu":
        return None
    if not gpu_present():
        return "no NVIDIA GPU on this machine"
    ort.set_default_logger_severity(4)  # the failed library load is reported below, in one line
    try:
        session = create_session(_probe_model(), provider, 1)
        session.run(None, {"x": np.ones([2, 2], np.float32)})
    except Exception as e:  # noqa: BLE001
        return first_line(e)
    finally:
        ort.set_default_logger_severity(2)  # ORT's default (warnings)
    return None


def first_line(error: BaseException, limit: int = 240) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


class OnnxRunner:
    kind = "onnx"

    @staticmethod
    def prepare(threads: int) -> None:
        """Nothing to do: onnxruntime is imported with this module."""

    def __init__(self, path: str, provider: str, threads: int):
        self.provider = provider
        self.session = create_session(path, provider, threads)
        self.providers = self.session.get_providers()
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def modes(self) -> list[str]:
        """'run': session.run with numpy in and out (host copies included); 'iobinding' on a GPU: inputs already
        on the device, outputs left there."""
        return ["run", "iobinding"] if self.provider in GPU_PROVIDERS else ["run"]

    def check_inputs(self, inputs: dict[str, np.ndarray]) -> None:
        for arg in self.session.get_inputs():
            if arg.name not in inputs:
                raise ConfigError(f"the model's input {arg.name!r} is not in the model card ({sorted(inputs)})")
            shape = inputs[arg.name].shape
            for axis, (static, given) in enumerate(zip(arg.shape, shape)):
                if isinstance(static, int) and static != given:
                    what = "batch" if axis == 0 else f"dimension {axis}"
                    raise BatchUnsupported(
                        f"input {arg.name} has a static {what} of {static}: cannot take {given} ({list(shape)})"
                    )

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(None, inputs)))

    def bound(self, input_sets: list[dict[str, np.ndarray]]) -> Callable[[int], None]:
        """run(i) with IO binding: every input set copied to the GPU once, outputs bound to the GPU."""
        keep, bindings = [], []
        for inputs in input_sets:
            binding = self.session.io_binding()
            for name, array in inputs.items():
                value = ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0)
                keep.append(value)
                binding.bind_ortvalue_input(name, value)
            for name in self.output_names:
                binding.bind_output(name, "cuda", 0)
            bindings.append(binding)

        def run(i: int) -> None:
            binding = bindings[i % len(bindings)]
            self.session.run_with_iobinding(binding)
            binding.synchronize_outputs()

        run.keep = keep  # the device copies live as long as the function
        return run

    def close(self) -> None:
        self.session = None


def _configure_tensorflow(threads: int):
    import tensorflow as tf

    try:  # only possible before TensorFlow's runtime starts; afterwards the report shows what it has
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass
    return tf


class SavedModelRunner:
    """A TF SavedModel's "serving_default" signature, called with tensors made from the numpy inputs and returning
    numpy (the host copies included, like OnnxRunner's 'run' mode)."""

    kind = "tf"

    @staticmethod
    def prepare(threads: int) -> None:
        """Import and configure TensorFlow before anything is timed or measured, so that neither the import's
        seconds nor its memory count as loading the model (ONNX Runtime is imported before too)."""
        _configure_tensorflow(threads)

    def __init__(self, path: str, provider: str, threads: int):
        if provider == "tensorrt":
            raise ProviderUnavailable("TensorRT is an ONNX Runtime provider: a SavedModel runs on TF cpu or cuda")
        tf = _configure_tensorflow(threads)
        self._tf = tf
        if provider == "cuda" and not tf.config.list_physical_devices("GPU"):
            raise ProviderUnavailable("TensorFlow sees no GPU")
        self.provider = provider
        self.device = "/GPU:0" if provider == "cuda" else "/CPU:0"
        with tf.device(self.device):
            self._loaded = tf.saved_model.load(path)
        if "serving_default" not in self._loaded.signatures:
            raise ConfigError(f"{path} has no 'serving_default' signature ({sorted(self._loaded.signatures)})")
        self._serve = self._loaded.signatures["serving_default"]
        intra = tf.config.threading.get_intra_op_parallelism_threads()
        inter = tf.config.threading.get_inter_op_parallelism_threads()
        self.providers = [f"TensorFlow {tf.__version__} {self.device} (intra-op {intra}, inter-op {inter})"]

    modes = ["tf"]

    def check_inputs(self, inputs: dict[str, np.ndarray]) -> None:
        _, kwargs = self._serve.structured_input_signature
        missing = set(kwargs) - set(inputs)
        if missing:
            raise ConfigError(f"the signature's inputs {sorted(missing)} are not in the model card")

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tf = self._tf
        with tf.device(self.device):
            outputs = self._serve(**{name: tf.constant(array) for name, array in inputs.items()})
        return {name: value.numpy() for name, value in outputs.items()}

    def close(self) -> None:
        self._serve = self._loaded = None


INTEGER_TYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool")


def _integer_only(args: dict) -> bool:
    """Whether every output of a profiled node is an integer (or bool) tensor: shape and length arithmetic, which
    ONNX Runtime keeps on the CPU by design on every GPU provider (ORT profiles list "output_type_shape")."""
    outputs = args.get("output_type_shape") or []
    return bool(outputs) and all(dtype in INTEGER_TYPES for out in outputs for dtype in out)


def parse_profile(events: list[dict], main_provider: str) -> dict:
    """Which provider ran each node, from an ORT profile: {"nodes": {provider: count}, "fallbacks": count of nodes
    on the CPU that compute floats (or whose outputs the profile does not type) while `main_provider` is a GPU
    provider, "fallback_ops": {op type: count} of those, "shape_ops": count of integer-only nodes on the CPU
    (shape arithmetic, placed there by ONNX Runtime on purpose), "op_ms": kernel ms per op type in the last run}."""
    placed: dict[str, tuple[str, str, bool]] = {}
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    timed_from = runs[-1] if runs else 0  # the op times of the last run only (the first one allocates)
    op_ms: Counter = Counter()
    for event in events:
        args = event.get("args") or {}
        if event.get("cat") == "Node" and "provider" in args:
            name = event.get("name", "").removesuffix("_kernel_time")
            placed[name] = (args["provider"], args.get("op_name", "?"), _integer_only(args))
            if event.get("ts", 0) >= timed_from:
                op_ms[args.get("op_name", "?")] += event.get("dur", 0) / 1000
    nodes = Counter(provider for provider, _, _ in placed.values())
    on_gpu = main_provider != "CPUExecutionProvider"
    on_cpu = [(op, integer) for provider, op, integer in placed.values() if provider == "CPUExecutionProvider"]
    fallback_ops = dict(Counter(op for op, integer in on_cpu if not integer)) if on_gpu else {}
    shape_ops = sum(integer for _, integer in on_cpu) if on_gpu else 0
    return {
        "nodes": dict(nodes),
        "fallbacks": sum(fallback_ops.values()),
        "fallback_ops": fallback_ops,
        "shape_ops": shape_ops,
        "op_ms": dict(op_ms),
    }


def node_placement(path: str, provider: str, threads: int, inputs: dict[str, np.ndarray]) -> dict:
    """Runs `inputs` once through a short extra session with profiling on, and parses which provider ran each node."""
    with tempfile.TemporaryDirectory(prefix="vidistill-profile-") as tmp:
        session = create_session(path, provider, threads, profile_prefix=os.path.join(tmp, "profile"))
        session.run(None, inputs)
        session.run(None, inputs)
        profile = session.end_profiling()
        with open(profile) as f:
            events = json.load(f)
    return parse_profile(events, EXECUTION_PROVIDERS[provider][0])


def top_ops(placement: dict | None, count: int = 4) -> str:
    """Where a profiled run spent its kernel time: "LSTM 61%, MatMul 20%, ..." (the why behind a latency)."""
    op_ms = (placement or {}).get("op_ms") or {}
    total = sum(op_ms.values())
    if not total:
        return ""
    ranked = sorted(op_ms.items(), key=lambda kv: -kv[1])[:count]
    return ", ".join(f"{op} {100 * ms / total:.0f}%" for op, ms in ranked)


def placement_summary(placement: dict | None) -> tuple[str, int | None, str, int | None]:
    """(nodes per provider, CPU fallbacks, fallback op types, integer shape nodes on the CPU) as report cells."""
    if not placement:
        return "", None, "", None
    short = {p: p.removesuffix("ExecutionProvider") for p in placement["nodes"]}
    nodes = ", ".join(f"{short[p]} {n}" for p, n in sorted(placement["nodes"].items(), key=lambda kv: -kv[1]))
    ops = ", ".join(f"{op} x{n}" for op, n in sorted(placement["fallback_ops"].items(), key=lambda kv: -kv[1]))
    return nodes, placement["fallbacks"], ops, placement.get("shape_ops")
