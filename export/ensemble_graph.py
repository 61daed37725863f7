"""An ensemble as ONE ONNX graph: each member converted on its own (export/onnx_export.py: its family's rules,
fused recurrent nodes with sequence lengths, fused attention), then joined.

The joined graph has the members' inputs: frames [batch, T, 1152] (T the longest member's) and num_frames [batch].
Member i sees the first T_i frames (a Slice) and min(num_frames, T_i); its names are prefixed "member_i/"
(onnx.compose.add_prefix). The outputs are those of distill/ensemble.py's Keras ensemble:
predictions = sum_i w_i p_i, and representation = one member's, or all of them concatenated, each scaled by
sqrt(r_i).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vidistill.export.errors import ExportError
from vidistill.export.onnx_export import FUSION_NOTE

INPUTS = ("frames", "num_frames")
OUTPUTS = ("predictions", "representation")


def _opsets(protos: list[onnx.ModelProto]) -> list[onnx.OperatorSetIdProto]:
    """The highest version of each domain any member imports."""
    versions: dict[str, int] = {}
    for proto in protos:
        for opset in proto.opset_import:
            versions[opset.domain] = max(versions.get(opset.domain, 0), opset.version)
    return [helper.make_opsetid(domain, version) for domain, version in sorted(versions.items())]


def join_members(
    members: list[onnx.ModelProto],
    frames: list[int],
    weights: list[float],
    representation: int | str,
    rep_weights: list[float],
) -> onnx.ModelProto:
    """One graph from member graphs (each with inputs frames [batch, frames[i], 1152], num_frames and outputs
    predictions, representation); `weights` / `rep_weights` normalized, as EnsembleConfig gives them."""
    if not len(members) == len(frames) == len(weights):
        raise ExportError(f"{len(members)} member graphs, {len(frames)} frame counts, {len(weights)} weights")
    total = max(frames)
    nodes, initializers, value_infos = [], [], []
    predictions, representations = [], []
    for i, (proto, length) in enumerate(zip(members, frames)):
        names = [i.name for i in proto.graph.input]
        if sorted(names) != sorted(INPUTS) or sorted(o.name for o in proto.graph.output) != sorted(OUTPUTS):
            raise ExportError(f"member {i}'s graph has inputs {names}: expected {list(INPUTS)} and {list(OUTPUTS)}")
        prefix = f"member_{i}/"
        member = onnx.compose.add_prefix(proto, prefix)
        if length < total:
            initializers += [
                numpy_helper.from_array(np.asarray([0], np.int64), f"{prefix}slice_start"),
                numpy_helper.from_array(np.asarray([length], np.int64), f"{prefix}slice_end"),
                numpy_helper.from_array(np.asarray([1], np.int64), f"{prefix}slice_axis"),
                numpy_helper.from_array(np.asarray(length, np.int32), f"{prefix}frames_max"),
            ]
            nodes += [
                helper.make_node(
                    "Slice",
                    ["frames", f"{prefix}slice_start", f"{prefix}slice_end", f"{prefix}slice_axis"],
                    [f"{prefix}frames"],
                ),
                helper.make_node("Min", ["num_frames", f"{prefix}frames_max"], [f"{prefix}num_frames"]),
            ]
        else:
            nodes += [helper.make_node("Identity", [name], [f"{prefix}{name}"]) for name in INPUTS]
        nodes += list(member.graph.node)
        initializers += list(member.graph.initializer)
        value_infos += list(member.graph.value_info)
        predictions.append(f"{prefix}predictions")
        representations.append(f"{prefix}representation")
    scaled = []
    for i, (name, weight) in enumerate(zip(predictions, weights)):
        initializers.append(numpy_helper.from_array(np.asarray(weight, np.float32), f"ensemble/weight_{i}"))
        nodes.append(helper.make_node("Mul", [name, f"ensemble/weight_{i}"], [f"ensemble/weighted_{i}"]))
        scaled.append(f"ensemble/weighted_{i}")
    nodes.append(helper.make_node("Sum", scaled, ["predictions"]))
    if representation == "all":
        parts = []
        for i, (name, weight) in enumerate(zip(representations, rep_weights)):
            initializers.append(
                numpy_helper.from_array(np.asarray(math.sqrt(weight), np.float32), f"ensemble/rep_scale_{i}")
            )
            nodes.append(helper.make_node("Mul", [name, f"ensemble/rep_scale_{i}"], [f"ensemble/rep_{i}"]))
            parts.append(f"ensemble/rep_{i}")
        nodes.append(helper.make_node("Concat", parts, ["representation"], axis=-1))
    else:
        nodes.append(helper.make_node("Identity", [representations[representation]], ["representation"]))
    first = members[0].graph
    classes = first.output[[o.name for o in first.output].index("predictions")].type.tensor_type.shape.dim[1]
    graph = helper.make_graph(
        nodes,
        "ensemble",
        inputs=[
            helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["batch", total, 1152]),
            helper.make_tensor_value_info("num_frames", TensorProto.INT32, ["batch"]),
        ],
        outputs=[
            helper.make_tensor_value_info("predictions", TensorProto.FLOAT, ["batch", classes.dim_value or None]),
            helper.make_tensor_value_info("representation", TensorProto.FLOAT, ["batch", None]),
        ],
        initializer=initializers,
        value_info=value_infos,
    )
    proto = helper.make_model(graph, opset_imports=_opsets(members), producer_name="vidistill")
    proto.ir_version = max(m.ir_version for m in members)
    notes = [
        f"member {i}: {prop.value}"
        for i, member in enumerate(members)
        for prop in member.metadata_props
        if prop.key == FUSION_NOTE
    ]
    if notes:
        helper.set_model_props(proto, {FUSION_NOTE: "; ".join(notes)})
    proto.doc_string = f"vidistill ensemble of {len(members)} networks, {total} input frames"
    return proto
