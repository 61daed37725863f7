"""ONNX files whose weights live in a file beside the graph (ONNX external data), and filling such a graph's
weights with seeded random values when only the graph travelled.

Why: a paper-size model's weights (hundreds of MB) exceed what can be moved to a benchmark machine at once, but its
latency does not depend on their values. So the graph travels alone (`split_weights` writes `X.onnx` plus
`X.onnx.data`; send `X.onnx` and its card), and `fill_weights` writes `X.onnx.data` there: every external tensor
gets values of its shape and type, drawn from a stream seeded by the tensor's NAME, so the fp32, fp16 and bf16
files of one model (whose initializers keep their names) hold the same weights, up to rounding, and can still be
checked against each other. Needs onnx and numpy only.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import TensorProto
from onnx.external_data_helper import uses_external_data

from vidistill.yt8m.files import atomic_write
from vidistill.yt8m.errors import ConfigError

FLOAT_SCALE = 0.05  # random float weights are uniform in [-FLOAT_SCALE, FLOAT_SCALE]
MIN_EXTERNAL_BYTES = 1024  # smaller tensors (shapes, scalars) stay inside the graph, with their real values


def data_file(path: str) -> str:
    return os.path.basename(path) + ".data"


def split_weights(model: onnx.ModelProto | str, path: str) -> tuple[str, str]:
    """Writes `path` (the graph) and `path`.data (every tensor of at least 1 KiB), each atomically; returns both."""
    if isinstance(model, str):
        model = onnx.load(model)
    else:
        model = onnx.ModelProto.FromString(model.SerializeToString())  # the caller's model keeps its weights
    folder = os.path.dirname(os.path.abspath(path))
    location = data_file(path)
    tmp_graph, tmp_data = f"{path}.tmp", os.path.join(folder, f"{location}.tmp")
    try:
        onnx.save_model(
            model,
            tmp_graph,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=f"{location}.tmp",
            size_threshold=MIN_EXTERNAL_BYTES,
        )
        # the graph names the final data file: rename the location entries before the files move into place
        graph = onnx.load(tmp_graph, load_external_data=False)
        for tensor in _tensors(graph.graph):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save_model(graph, tmp_graph)
        os.replace(tmp_data, os.path.join(folder, location))
        os.replace(tmp_graph, path)
    finally:
        for leftover in (tmp_graph, tmp_data):
            if os.path.exists(leftover):
                os.remove(leftover)
    return path, os.path.join(folder, location)


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Initializers and tensor attributes of `graph` and of its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            yield from attr.tensors
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def _positive_inputs(graph: onnx.GraphProto) -> set[str]:
    """Tensors that must be positive for the graph to compute finite values: BatchNormalization variances, also
    where they reach it through Casts (an fp16 / bf16 file keeps BatchNormalization in float32)."""
    producer = {out: node for node in graph.node for out in node.output}
    pending = [node.input[4] for node in graph.node if node.op_type == "BatchNormalization" and len(node.input) > 4]
    positive = set()
    while pending:
        name = pending.pop()
        positive.add(name)
        node = producer.get(name)
        if node is not None and node.op_type in ("Cast", "Identity"):
            pending.append(node.input[0])
    return positive


def random_values(name: str, dims: list[int], data_type: int, seed: int = 0, positive: bool = False) -> bytes:
    """The bytes of a tensor `name` of shape `dims` and ONNX type `data_type`, from a stream seeded by (seed,
    name): the same name gives the same values in every file (floats rounded to the tensor's type)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    count = int(np.prod(dims, dtype=np.int64))
    if data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE):
        values = rng.random(count, dtype=np.float32)
        values = (0.5 + values) if positive else (2 * values - 1) * FLOAT_SCALE
        if data_type == TensorProto.FLOAT16:
            return values.astype(np.float16).tobytes()
        if data_type == TensorProto.BFLOAT16:
            from vidistill.export.precision import bf16_bits

            return bf16_bits(values).tobytes()
        return values.astype(np.float64 if data_type == TensorProto.DOUBLE else np.float32).tobytes()
    if data_type == TensorProto.INT8:
        return rng.integers(-127, 128, count, dtype=np.int8).tobytes()
    if data_type == TensorProto.UINT8:
        return rng.integers(0, 256, count, dtype=np.uint8).tobytes()
    dtype = onnx.helper.tensor_dtype_to_np_dtype(data_type)
    return np.zeros(count, dtype).tobytes()  # integer tensors this large are indices: 0 is always valid


def fill_weights(path: str, seed: int = 0) -> dict:
    """Writes the external data file(s) of the graph `path` with random values (see the module docstring).
    Returns {"tensors", "bytes", "files"}. Raises ValueError when the graph has no external tensors."""
    model = onnx.load(path, load_external_data=False)
    folder = os.path.dirname(os.path.abspath(path))
    positive = _positive_inputs(model.graph)
    layout: dict[str, list[tuple[int, str | None, onnx.TensorProto]]] = {}
    for tensor in _tensors(model.graph):
        if not uses_external_data(tensor):
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        layout.setdefault(info["location"], []).append((int(info.get("offset", 0)), info.get("length"), tensor))
    if not layout:
        raise ConfigError(f"{path} has no external tensors: its weights are inside it, there is nothing to fill")
    written = tensors = 0
    for location, entries in layout.items():
        with atomic_write(os.path.join(folder, location), "wb") as f:
            for offset, length, tensor in sorted(entries, key=lambda e: e[0]):
                data = random_values(
                    tensor.name, list(tensor.dims), tensor.data_type, seed, positive=tensor.name in positive
                )
                if length is not None and int(length) != len(data):
                    raise ConfigError(f"{path}: tensor {tensor.name} should take {length} bytes, not {len(data)}")
                f.seek(offset)
                f.write(data)
                written += len(data)
                tensors += 1
    return {"tensors": tensors, "bytes": written, "files": sorted(layout)}
