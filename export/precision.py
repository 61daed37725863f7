"""fp16 and bf16 variants of an fp32 ONNX model: one graph pass for both.

Every node whose op type is not blocked computes in the low precision, but an op that only moves data (DATA_MOVEMENT)
follows its input: it runs low only when that input already is. Casts are inserted where a tensor crosses between
a low-precision node and a float32 one; the graph's inputs and outputs stay float32 (ONNX Runtime's `run`
takes no bf16 numpy arrays). Every float initializer is stored in the low precision (half the bytes: the 2018
4th-place trick), with a Cast back to float32 for blocked consumers (ONNX Runtime folds it once, at load).
Nodes with subgraphs are never converted, nor those of the layers in FLOAT32_SCOPES (whose values float16 cannot
hold).

The block list is per precision and execution provider: the ops that provider has no kernel for in that precision.
`lower_precision_for` starts from the documented list (stack.md, ONNX Runtime 1.31) and, when the provider is
present, creates a session: each "could not find an implementation for <Op>" adds <Op> to the block list and the
pass is redone, so the file always loads on the provider it was made for. The final list goes into the card.
(onnxconverter-common's fp16 converter is not used: it mis-types shared initializers in tf2onnx graphs - checked
here - and it has no bf16.)
"""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vidistill.export.errors import ExportError
from vidistill.export.fusion import FUSED_CONTRIB_OPS, MS_DOMAIN
from vidistill.export.protos import copy_fields
from vidistill.yt8m.errors import ConfigError

LOW = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}

# Ops without a kernel in that precision on that provider (ONNX Runtime 1.31; see stack.md). On CPU the list is
# completed by trial (see the module docstring).
BLOCKED = {
    ("fp16", "cuda"): {"TopK"},
    ("bf16", "cuda"): {
        "LSTM",
        "GRU",
        "RNN",
        "BatchNormalization",
        "Reciprocal",
        "ReduceL2",
        "ReduceMean",
        "ReduceMax",
        "TopK",
    },
    ("fp16", "cpu"): {"LSTM", "GRU", "RNN", "TopK"},
    ("bf16", "cpu"): None,  # no bf16 arithmetic on CPU at all: every op but DATA_MOVEMENT is blocked
}
# Layers kept in float32 whatever the precision (their nodes' names hold the layer's scope): Non-local NetVLAD's
# attention sums products of un-normalized cluster residuals (sums over the frames), past float16's 65,504 (NaN
# scores in a test's fp16 file); the rest of the model still computes in the low precision.
FLOAT32_SCOPES = ("/non_local/",)
# Ops that only move or reshape data: the CPU provider has bf16 kernels for these (measured, ONNX Runtime 1.31).
DATA_MOVEMENT = {
    "Cast",
    "Concat",
    "Reshape",
    "Shape",
    "Slice",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "Identity",
    "Flatten",
    "Gather",
    "Greater",
    "Min",
    "Sub",
}
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


_CHUNK = 1 << 22  # elements converted at a time: the temporaries stay small next to a large weight


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even (NaN stays NaN). Chunk by chunk in
    uint32 (only a NaN can carry past 32 bits, and NaNs are set apart), so a 1 GB weight needs no 8-byte copies."""
    flat = np.ascontiguousarray(values, np.float32).reshape(-1)
    out = np.empty(flat.size, np.uint16)
    for start in range(0, flat.size, _CHUNK):
        chunk = flat[start : start + _CHUNK]
        bits = chunk.view(np.uint32)
        rounded = bits + np.uint32(0x7FFF)
        rounded += (bits >> 16) & np.uint32(1)
        part = (rounded >> 16).astype(np.uint16)
        part[np.isnan(chunk)] = 0x7FC0
        out[start : start + chunk.size] = part
    return out.reshape(np.shape(values))


def bf16_values(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns -> float32."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << 16).view(np.float32)


def _low_initializer(init: onnx.TensorProto, precision: str, name: str) -> onnx.TensorProto:
    values = numpy_helper.to_array(init).astype(np.float32, copy=False)
    if precision == "fp16":
        if np.isfinite(values).all() and np.abs(values).max(initial=0) > 65504:
            raise ExportError(f"initializer {init.name} has values beyond the fp16 range (65504): use bf16")
        low = values.astype(np.float16)
        del values
        return numpy_helper.from_array(low, name)
    tensor = TensorProto(name=name, data_type=TensorProto.BFLOAT16, dims=list(values.shape))
    tensor.raw_data = bf16_bits(values).tobytes()
    return tensor


def _without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with everything but the graph's initializers (never a copy of the weights)."""
    copy = onnx.ModelProto()
    copy_fields(model, copy, skip="graph")
    copy_fields(model.graph, copy.graph, skip="initializer")
    return copy


_SKELETON_ELEMENTS = 1024  # initializers this small keep their values for shape inference (shapes, axes)


def _float_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor, by shape inference on the graph with its large initializers' values left out
    (their dims and types are what inference reads): a fraction of the model's memory, not copies of it."""
    skeleton = _without_initializers(model)
    for node in skeleton.graph.node:  # ONNX's inference does not know the fused contrib ops: typed as Identity
        if node.domain == MS_DOMAIN and node.op_type in FUSED_CONTRIB_OPS:
            node.op_type, node.domain = "Identity", ""
            del node.input[1:]
            del node.attribute[:]
    for init in model.graph.initializer:
        if int(np.prod(init.dims)) <= _SKELETON_ELEMENTS:
            skeleton.graph.initializer.add().CopyFrom(init)
        else:
            skeleton.graph.initializer.add(name=init.name, data_type=init.data_type, dims=init.dims)
    inferred = onnx.shape_inference.infer_shapes(skeleton)
    types = {}
    graph = inferred.graph
    for value in [*graph.input, *graph.output, *graph.value_info]:
        types[value.name] = value.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    return types


def lower_precision(model: onnx.ModelProto, precision: str, blocked: set[str]) -> onnx.ModelProto:
    """The graph pass (see the module docstring): returns a new model; float32 inputs and outputs."""
    if precision not in LOW:
        raise ConfigError(f"unknown low precision {precision!r}; choose one of {', '.join(LOW)}")
    low = LOW[precision]
    types = _float_types(model)
    source = model
    model = _without_initializers(source)  # the new model; its initializers are added below, converted or not
    graph = model.graph
    is_float = lambda name: types.get(name) == TensorProto.FLOAT  # noqa: E731
    initializers = {init.name: init for init in source.graph.initializer}

    def converts(node) -> bool:
        """Whether `node` computes in the low precision; decided in graph order, so `types` already says which of
        its inputs are low. An op that only moves data follows its data: it runs low only when a float input
        already is (a Reshape between two float32 ops made low would cost two Casts and round its values, and a
        Cast from integers to bf16 is exact only up to 256)."""
        if (
            node.op_type in blocked
            or any(scope in node.name for scope in FLOAT32_SCOPES)
            or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        ):
            return False
        if node.op_type in DATA_MOVEMENT and not any(types.get(t) == low for t in node.input if t):
            return False
        return any(is_float(t) for t in [*node.input, *node.output] if t)

    consumers = {name for node in graph.node for name in node.input}

    # Every float initializer is stored low; blocked consumers get it through a Cast (added below, on first use).
    low_name: dict[str, str] = {}  # float32 tensor -> its low-precision twin
    for name, init in initializers.items():
        if init.data_type == TensorProto.FLOAT and name in consumers:  # stored low whoever reads it
            graph.initializer.append(_low_initializer(init, precision, name))
            low_name[name] = name
            types[name] = low
        else:
            graph.initializer.add().CopyFrom(init)

    float_name: dict[str, str] = {}  # low tensor -> its float32 twin
    nodes = []

    def cast(source: str, to: int, target: str) -> str:
        nodes.append(helper.make_node("Cast", [source], [target], to=to, name=f"{target}_cast"))
        return target

    for node in graph.node:
        conv = converts(node)
        for i, name in enumerate(node.input):
            if not name:
                continue
            if conv and is_float(name):
                if name not in low_name:
                    low_name[name] = cast(name, low, f"{name}_{precision}")
                node.input[i] = low_name[name]
            elif not conv and types.get(name) == low:
                if name not in float_name:
                    float_name[name] = cast(name, TensorProto.FLOAT, f"{name}_fp32")
                node.input[i] = float_name[name]
        if conv:
            for attr in node.attribute:  # ops whose output type an attribute fixes
                if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = low
                if (
                    attr.name == "value"
                    and attr.type == onnx.AttributeProto.TENSOR
                    and attr.t.data_type == TensorProto.FLOAT
                ):
                    attr.t.CopyFrom(_low_initializer(attr.t, precision, attr.t.name))
            for name in node.output:
                if is_float(name):
                    types[name] = low
                    low_name[name] = name
        nodes.append(node)

    outputs = {o.name for o in graph.output}
    renamed = {}
    for name in outputs:
        if types.get(name) == low:
            renamed[name] = f"{name}_{precision}"
    for node in nodes:
        node.output[:] = [renamed.get(n, n) for n in node.output]
        node.input[:] = [renamed.get(n, n) for n in node.input]
    for name, inner in renamed.items():
        nodes.append(helper.make_node("Cast", [inner], [name], to=TensorProto.FLOAT, name=f"{name}_output_cast"))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    return model  # onnx_export.save_model checks the file


_MISSING_KERNEL = re.compile(r"Could not find an implementation for (\w+)\(\d+\)")


def lower_precision_for(
    model: onnx.ModelProto, precision: str, provider: str = "cpu", *, available: list[str] | None = None
) -> tuple[onnx.ModelProto, set[str], bool]:
    """`lower_precision` with the block list of (precision, provider), grown by trial when the provider is present.
    Returns (model, block list, verified: whether a session on that provider loaded it)."""
    import onnxruntime as ort

    if (precision, provider) not in BLOCKED:
        raise ConfigError(f"no {precision} rules for provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    rule = BLOCKED[(precision, provider)]
    blocked = set(rule) if rule is not None else {n.op_type for n in model.graph.node} - DATA_MOVEMENT
    present = provider == "cpu" or (available is not None and PROVIDERS[provider] in available)
    for _ in range(64):
        lowered = lower_precision(model, precision, blocked)
        if not present:
            return lowered, blocked, False
        try:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            ort.InferenceSession(lowered.SerializeToString(), options, providers=[PROVIDERS[provider]])
            return lowered, blocked, True
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own NOT_IMPLEMENTED / Fail types
            missing = _MISSING_KERNEL.search(str(e))
            if missing is None or missing.group(1) in blocked:
                raise ExportError(f"the {precision} model does not load on {provider}: {e}") from None
            blocked.add(missing.group(1))
    raise ExportError(f"the {precision} model still does not load on {provider} after blocking {sorted(blocked)}")
