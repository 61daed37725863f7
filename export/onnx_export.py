"""Keras network -> ONNX through tf2onnx, with fused recurrent nodes.

tf2onnx turns a MASKED Keras LSTM into a `Loop` (it does not map the mask; upstream support is an open PR), and
only fused `LSTM` nodes run fast and can be dynamically quantized. So the network is traced with its masks off
(`StackedRNN.ignore_mask`), which gives fused LSTM/GRU nodes, and each such node then gets `sequence_lens`
computed from `num_frames` inside the graph. ONNX's `sequence_lens` stops a sequence at its length and returns
the state of its last real step: exactly what the Keras mask does (steps past the length carry the state over).
For the H-LSTM the lower LSTM runs over every chunk of every video (length of chunk j: clip(n - j * size, 0, size);
ONNX Runtime returns zero states for length 0, as the masked Keras layer does) and the upper LSTM over the chunks
that hold a real frame (ceil(n / size)).
"""

from __future__ import annotations

import contextlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vidistill.export.errors import ExportError
from vidistill.export.serving import serving_function, signature
from vidistill.export.tf2onnx_lean import function_to_onnx
from vidistill.teachers.config import HLSTMConfig, ModelConfig, RNNConfig, TransformerConfig
from vidistill.teachers.recurrent import StackedRNN
from vidistill.yt8m.files import atomic_write

OPSET = 17
RECURRENT_OPS = ("LSTM", "GRU")
UNFUSED_OPS = ("Loop", "Scan")


@contextlib.contextmanager
def unmasked_recurrence(model):
    """While tracing, every StackedRNN in `model` ignores its mask (see the module docstring)."""
    layers = [layer for layer in model.submodules if isinstance(layer, StackedRNN)]
    for layer in layers:
        layer.ignore_mask = True
    try:
        yield layers
    finally:
        for layer in layers:
            layer.ignore_mask = False


FUSION_NOTE = "vidistill_fusion"  # metadata key: what export/fusion.py fused (a transformer network)


def convert(
    network, config: ModelConfig, *, opset: int = OPSET, fuse: bool = True, any_length: bool = False
) -> onnx.ModelProto:
    """The network as an ONNX model: inputs frames [batch, frames, 1152] float32 ([batch, k, 1152], k dynamic, with
    `any_length`: an any-k student's backbone) and num_frames [batch] int32, outputs predictions and
    representation; recurrent layers as fused nodes with sequence lengths; a transformer's attention, LayerNorm and
    GELU as fused nodes unless `fuse` is False (export/fusion.py, whose report is kept in the model's metadata under
    FUSION_NOTE)."""
    frames = None if any_length else config.frames
    with unmasked_recurrence(network) as recurrent:
        proto = function_to_onnx(serving_function(network, frames), signature(frames), opset=opset)
    unfused = sorted({n.op_type for n in proto.graph.node if n.op_type in UNFUSED_OPS})
    if unfused:
        raise ExportError(f"tf2onnx produced {', '.join(unfused)} nodes instead of fused recurrent nodes")
    if recurrent:
        attach_sequence_lengths(proto, config, any_length=any_length)
    if fuse and isinstance(config, TransformerConfig):
        from vidistill.export.fusion import fuse_transformer

        report = fuse_transformer(proto, config.heads, config.head_size)
        helper.set_model_props(proto, {FUSION_NOTE: report.note()})
    proto.doc_string = f"vidistill {config.family} network, " + (
        "any number of input frames" if any_length else f"{config.frames} input frames"
    )
    return proto  # checked by save_model, from the file (a check of the proto would serialize a copy of it)


def convert_source(source, *, opset: int = OPSET, fuse: bool = True) -> onnx.ModelProto:
    """An ExportSource's network as ONNX: `convert`, or for an ensemble each member's `convert` joined into one
    graph (export/ensemble_graph.py)."""
    if not source.members:
        any_length = source.input_frames is None
        return convert(source.network, source.config, opset=opset, fuse=fuse, any_length=any_length)
    from vidistill.export.ensemble_graph import join_members

    protos = [convert(m.network, m.config, opset=opset, fuse=fuse) for m in source.members]
    return join_members(protos, [m.frames for m in source.members], **source.ensemble)


def _lengths_nodes(config: ModelConfig, any_length: bool = False) -> tuple[list, list, dict[str, str]]:
    """ONNX nodes computing the sequence lengths from the graph inputs (num_frames; with `any_length`, the frames
    input's length T too); returns (nodes, initializers, {which recurrent stack: lengths tensor name})."""

    def const(name, value, dtype=np.int32):
        return numpy_helper.from_array(np.asarray(value, dtype), f"vidistill_{name}")

    c = lambda name: f"vidistill_{name}"  # noqa: E731
    inits = [const("zero", 0), const("one", 1), const("axis0", [0], np.int64), const("axis1", [1], np.int64)]
    nodes = [helper.make_node("Max", ["num_frames", c("zero")], [c("n_nonneg")])]
    if any_length:  # T: the frames input's second dimension
        nodes += [
            helper.make_node("Shape", ["frames"], [c("shape")]),
            helper.make_node("Gather", [c("shape"), c("one")], [c("length64")], axis=0),
            helper.make_node("Cast", [c("length64")], [c("frames")], to=TensorProto.INT32),
        ]
    else:
        inits.append(const("frames", config.frames))
    nodes.append(helper.make_node("Min", [c("n_nonneg"), c("frames")], [c("n")]))
    if isinstance(config, HLSTMConfig):
        if config.chunk_rule == "sqrt":  # chunks = clip(round(sqrt(T)), 1, T) of ceil(T / chunks) frames
            inits.append(const("minus_one", -1))
            nodes += [
                helper.make_node("Max", [c("frames"), c("one")], [c("t")]),
                helper.make_node("Cast", [c("t")], [c("t_float")], to=TensorProto.FLOAT),
                helper.make_node("Sqrt", [c("t_float")], [c("root")]),
                helper.make_node("Round", [c("root")], [c("root_rounded")]),
                helper.make_node("Cast", [c("root_rounded")], [c("root_int")], to=TensorProto.INT32),
                helper.make_node("Max", [c("root_int"), c("one")], [c("chunks_low")]),
                helper.make_node("Min", [c("chunks_low"), c("t")], [c("chunks")]),
                helper.make_node("Add", [c("t"), c("chunks")], [c("t_plus")]),
                helper.make_node("Add", [c("t_plus"), c("minus_one")], [c("t_ceil")]),
                helper.make_node("Div", [c("t_ceil"), c("chunks")], [c("chunk_size")]),
                helper.make_node("Range", [c("zero"), c("chunks"), c("one")], [c("chunk_index")]),
                helper.make_node("Mul", [c("chunk_index"), c("chunk_size")], [c("chunk_starts_flat")]),
                helper.make_node("Unsqueeze", [c("chunk_starts_flat"), c("axis0")], [c("chunk_starts")]),
            ]
        else:
            size, chunks = config.chunk_frames, config.chunks
            inits += [const("chunk_starts", (np.arange(chunks) * size)[None]), const("chunk_size", size)]
        inits.append(const("flat", [-1], np.int64))
        nodes += [
            helper.make_node("Unsqueeze", [c("n"), c("axis1")], [c("n_col")]),
            helper.make_node("Sub", [c("n_col"), c("chunk_starts")], [c("left")]),
            helper.make_node("Max", [c("left"), c("zero")], [c("left_nonneg")]),
            helper.make_node("Min", [c("left_nonneg"), c("chunk_size")], [c("chunk_lengths")]),
            helper.make_node("Reshape", [c("chunk_lengths"), c("flat")], [c("lower_lengths")]),
            helper.make_node("Greater", [c("n_col"), c("chunk_starts")], [c("chunk_used")]),
            helper.make_node("Cast", [c("chunk_used")], [c("chunk_used_int")], to=TensorProto.INT32),
            helper.make_node("ReduceSum", [c("chunk_used_int"), c("axis1")], [c("upper_lengths")], keepdims=0),
        ]
        return nodes, inits, {"lower": c("lower_lengths"), "upper": c("upper_lengths")}
    if isinstance(config, RNNConfig):
        return nodes, inits, {"rnn": c("n")}
    raise ExportError(f"no sequence-length rule for recurrent layers of family {config.family!r}")


def _stack_of(node, stacks: list[str]) -> str:
    """Which StackedRNN a fused node belongs to, from the TF name scope tf2onnx keeps on its input."""
    found = [s for s in stacks if f"/{s}/" in node.input[0]]
    if len(found) != 1:
        raise ExportError(f"cannot tell which recurrent stack ONNX node {node.name} ({node.input[0]}) belongs to")
    return found[0]


def attach_sequence_lengths(proto: onnx.ModelProto, config: ModelConfig, *, any_length: bool = False) -> None:
    """Sets `sequence_lens` of every fused LSTM/GRU node (see the module docstring); in place."""
    nodes, inits, lengths = _lengths_nodes(config, any_length)
    graph = proto.graph
    recurrent = [n for n in graph.node if n.op_type in RECURRENT_OPS]
    for node in recurrent:
        while len(node.input) < 5:
            node.input.append("")
        if node.input[4]:
            raise ExportError(f"ONNX node {node.name} already has sequence lengths ({node.input[4]})")
        node.input[4] = lengths[_stack_of(node, list(lengths))]
    graph.initializer.extend(inits)
    for i, node in enumerate(nodes):  # num_frames is a graph input: the new nodes go first (topological order)
        graph.node.insert(i, node)


def save_model(proto: onnx.ModelProto, path: str) -> str:
    """Writes atomically (a temporary name, then rename): a failed export leaves no half-written file. The file is
    checked (onnx.checker) before it takes its name; from the file, so no second copy of the weights is made."""

    def checked(tmp: str) -> None:
        try:
            onnx.checker.check_model(tmp)
        except onnx.checker.ValidationError as e:
            first = str(e).strip().splitlines()[0]
            raise ExportError(
                f"the converted ONNX graph is not valid ({first}): tf2onnx could not convert an operation of this "
                "model; see docs/ARCHITECTURE.md (export) for the operations each family must use"
            ) from None

    with atomic_write(path, "wb", before_rename=checked) as f:
        onnx.save(proto, f)
    return path
