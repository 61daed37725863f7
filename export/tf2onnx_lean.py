"""tf2onnx's conversion of a tf.function with its peak memory a few times the weights (about 3.5x; it was 54x).

tf2onnx.convert.from_function held many whole copies of the weights at once. Measured stage by stage on the
paper-size H-LSTM (143 M parameters, 573 MB):
- freezing (`convert_variables_to_constants_v2`) builds a ConcreteFunction from the frozen GraphDef, serializes it
  again (`as_graph_def`) and imports it into a third graph: about 10x the weights;
- grappler (constant folding, function inlining) serializes the whole GraphDef with its weights into a MetaGraph,
  parses it in C++ and keeps several copies while optimizing: about 20x;
- its graph optimizers left one more copy of the weights per pass (see `lean_optimizers`).

Here, instead:
1. `frozen_graph_def`: TensorFlow's own freezing, stopped before it builds a function (one GraphDef);
2. `strip_weights`: every large weight becomes a Placeholder of the same name, shape and dtype, its bytes kept
   aside; weights that grappler's constant folding reads (a GRU's bias is unstacked, a batch-norm's variance has
   epsilon added) stay constants, so the folded graph is the one tf2onnx's rewriters expect;
3. grappler runs on the small graph;
4. `restore_weights`: the placeholders become constants again, with empty values, and tf2onnx reads their bytes
   from the side table (`weights_beside_graph`), so TensorFlow never holds them and tf2onnx holds them once.
The ONNX graph is the same node for node (tests/test_tf2onnx_lean.py: `test_lean_conversion_matches_tf2onnx`).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os

import onnx
import tensorflow as tf
from tensorflow.core.framework import graph_pb2, tensor_shape_pb2

from vidistill.export.protos import copy_fields

# A weight of at least this many bytes is kept out of TensorFlow's graphs during conversion. Smaller constants
# (shapes, biases, normalization vectors) stay: they are a negligible share of the bytes.
STRIP_BYTES = 64 * 1024
# grappler leaves fake quantization of constants unfolded (tf2onnx turns it into QuantizeLinear/DequantizeLinear)
NOT_FOLDED = frozenset(
    {"Placeholder", "FakeQuantWithMinMaxVars", "FakeQuantWithMinMaxVarsPerChannel"}
    | {f"QuantizeAndDequantizeV{v}" for v in (2, 3, 4)}
)


def _fresh_node_proto(node: onnx.NodeProto) -> onnx.NodeProto:
    """A new NodeProto with every field of `node` except its attributes (set again right after)."""
    fresh = onnx.NodeProto()
    copy_fields(node, fresh, skip="attribute")
    return fresh


@contextlib.contextmanager
def lean_optimizers():
    """tf2onnx 1.17's graph optimizers without the copies of the weights they leave behind.

    - after each of its 12 graph optimizers, in every one of (at least) two rounds, `Node.update_proto` clears the
      node's attributes and writes them again; each Const node's attribute holds its weight tensor, and with
      protobuf's upb backend a cleared field's memory stays in the message's arena until the message itself is
      freed, so every pass left one more copy of all the weights (+112 MB per optimizer on a 112 MB model). Here
      each node that has attributes gets a new NodeProto before they are written, so the old one and its arena go.
    - with errors caught (its default), `optimize_graph` deep-copies the whole graph, weights included, before
      each optimizer; TF2ONNX_CATCH_ERRORS=FALSE turns that off (a failing optimizer then raises instead of being
      skipped silently).
    """
    from tf2onnx import constants
    from tf2onnx.graph import Node

    original = Node.update_proto

    def update_proto(self, external_tensor_storage=None):
        if len(self._op.attribute):
            self._op = _fresh_node_proto(self._op)
        return original(self, external_tensor_storage)

    previous = os.environ.get(constants.ENV_TF2ONNX_CATCH_ERRORS)
    os.environ[constants.ENV_TF2ONNX_CATCH_ERRORS] = "FALSE"
    Node.update_proto = update_proto
    try:
        yield
    finally:
        Node.update_proto = original
        if previous is None:
            os.environ.pop(constants.ENV_TF2ONNX_CATCH_ERRORS, None)
        else:
            os.environ[constants.ENV_TF2ONNX_CATCH_ERRORS] = previous


def frozen_graph_def(concrete) -> graph_pb2.GraphDef:
    """The concrete function with its variables as constants: one GraphDef, no function built from it."""
    from tf2onnx import tf_loader

    graph_def = tf_loader.convert_variables_to_constants_large_model(concrete)
    for node in graph_def.node:  # stale where freezing removed outputs (a While's resources); shapes are re-inferred
        if "_output_shapes" in node.attr:
            del node.attr["_output_shapes"]
    return tf_loader.fix_freezing_errors_part2(graph_def)


def _source(ref: str) -> str:
    return ref.lstrip("^").split(":")[0]


def weights_folded_by_grappler(graph_def: graph_pb2.GraphDef) -> set[str]:
    """Const nodes that grappler's constant folding reads: those feeding, through Identity nodes, an op whose data
    inputs are all constant (fake quantization apart: grappler does not fold it, see `NOT_FOLDED`)."""
    nodes = {n.name: n for n in graph_def.node}
    constant: dict[str, bool] = {}

    def is_constant(name: str) -> bool:
        if name not in constant:
            constant[name] = False  # a cycle (none in a frozen graph) counts as not constant
            node = nodes.get(name)
            data = [_source(i) for i in node.input if not i.startswith("^")] if node is not None else []
            constant[name] = node is not None and (
                node.op == "Const" or (node.op not in NOT_FOLDED and bool(data) and all(map(is_constant, data)))
            )
        return constant[name]

    consumers: dict[str, list] = {}
    for node in graph_def.node:
        for ref in node.input:
            if not ref.startswith("^"):
                consumers.setdefault(_source(ref), []).append(node)

    def folded(name: str) -> bool:
        return any(folded(c.name) if c.op == "Identity" else is_constant(c.name) for c in consumers.get(name, []))

    return {n.name for n in graph_def.node if n.op == "Const" and folded(n.name)}


def strip_weights(
    graph_def: graph_pb2.GraphDef, *, min_bytes: int = STRIP_BYTES, keep_folded: bool = True
) -> tuple[graph_pb2.GraphDef, dict[str, bytes]]:
    """(a new GraphDef with each weight of at least `min_bytes` as a Placeholder, {node name: the weight's bytes});
    `keep_folded`: weights that grappler's constant folding reads stay constants."""
    keep = weights_folded_by_grappler(graph_def) if keep_folded else set()
    small = graph_pb2.GraphDef()
    small.versions.CopyFrom(graph_def.versions)
    small.library.CopyFrom(graph_def.library)
    weights = {}
    for node in graph_def.node:
        tensor = node.attr["value"].tensor if node.op == "Const" else None
        if tensor is None or len(tensor.tensor_content) < min_bytes or node.name in keep:
            small.node.add().CopyFrom(node)
            continue
        weights[node.name] = tensor.tensor_content
        placeholder = small.node.add()
        placeholder.name, placeholder.op, placeholder.device = node.name, "Placeholder", node.device
        placeholder.attr["dtype"].type = node.attr["dtype"].type
        placeholder.attr["shape"].shape.CopyFrom(tensor.tensor_shape)
    return small, weights


def restore_weights(graph_def: graph_pb2.GraphDef, weights: dict[str, bytes]) -> None:
    """The placeholders of `strip_weights` become Const nodes with empty values (in place); tf2onnx reads their
    bytes from `weights`."""
    for node in graph_def.node:
        if node.op != "Placeholder" or node.name not in weights:
            continue
        dtype = node.attr["dtype"].type
        shape = tensor_shape_pb2.TensorShapeProto()
        shape.CopyFrom(node.attr["shape"].shape)
        for key in [k for k in node.attr if k != "_output_shapes"]:
            del node.attr[key]
        node.op = "Const"
        node.attr["dtype"].type = dtype
        node.attr["value"].tensor.dtype = dtype
        node.attr["value"].tensor.tensor_shape.CopyFrom(shape)


class _GraphWithoutWeights:
    """A TF graph whose `get_operations` leaves out the weights' Const nodes (everything else is the graph's)."""

    def __init__(self, graph: tf.Graph, weights):
        self._graph, self._weights = graph, weights

    def get_operations(self):
        return [op for op in self._graph.get_operations() if op.name not in self._weights]

    def __getattr__(self, name):
        return getattr(self._graph, name)


@contextlib.contextmanager
def weights_beside_graph(main_graph: tf.Graph, weights: dict[str, bytes]):
    """tf2onnx 1.17 reading `main_graph`, whose weights (Const nodes with empty values, see `restore_weights`) have
    their bytes in `weights`, holding them once. Its own side table (`const_node_values`) held up to five copies
    of the largest weight at a time, measured on NetVLAD-WILLOW (one 1.2 GB matrix):
    - `resolve_functions` converts every node of the graph only to list the functions it calls: each weight,
      empty, became zeros of its full shape and then ONNX bytes; here it gets a tensor without values;
    - `compute_const_folding_using_tf` loads the value of every constant, weights included, to fold the ops
      whose inputs are all constant; grappler has already folded what reads a weight except fake quantization,
      which tf2onnx turns into QuantizeLinear/DequantizeLinear anyway, so the weights are left out of it;
    - `tflist_to_onnx` wrote each weight's bytes into a TensorFlow TensorProto, copied them into numpy and from
      numpy into the ONNX tensor; here the ONNX tensor takes the bytes, which leave the side table.
    The ONNX graph is the same node for node (tests/test_tf2onnx_lean.py)."""
    import tf2onnx
    from tf2onnx import tf_loader, tf_utils, tfonnx

    resolve, folding = tfonnx.resolve_functions, tfonnx.compute_const_folding_using_tf
    tensor = tf_utils.tf_to_onnx_tensor
    state = {"resolving": False, "main": False}

    def resolve_functions(tf_graph):
        state["resolving"] = True
        try:
            return resolve(tf_graph)
        finally:
            state["resolving"] = False

    def compute_const_folding_using_tf(g, const_node_values, graph_outputs):
        # tfonnx.graphs_from_tf reads each graph with this, then tflist_to_onnx; function bodies are FuncGraphs
        state["main"] = not tf_loader.is_function(g)
        return folding(_GraphWithoutWeights(g, weights) if state["main"] else g, const_node_values, graph_outputs)

    def tf_to_onnx_tensor(value, name=""):
        node = name.rsplit(":", 1)[0]
        if not (state["resolving"] or state["main"]) or node not in weights or value.tensor_content:
            return tensor(value, name)
        onnx_tensor = onnx.TensorProto(
            name=name, dims=[d.size for d in value.tensor_shape.dim], data_type=tf_utils.map_tf_dtype(value.dtype)
        )
        if not state["resolving"]:  # resolve_functions drops the nodes it converts
            onnx_tensor.raw_data = weights.pop(node)
        return onnx_tensor

    tfonnx.resolve_functions, tfonnx.compute_const_folding_using_tf = resolve_functions, compute_const_folding_using_tf
    tf_utils.tf_to_onnx_tensor = tf_to_onnx_tensor
    try:
        yield
    finally:
        tfonnx.resolve_functions, tfonnx.compute_const_folding_using_tf = resolve, folding
        tf_utils.tf_to_onnx_tensor = tensor
    unread = sorted(op.name for op in main_graph.get_operations() if op.name in weights)
    if unread:  # tf2onnx read the graph some other way: its weights would be zeros
        raise RuntimeError(f"tf2onnx {tf2onnx.__version__} did not read the weights of {unread[:3]}")


def function_to_onnx(function, input_signature, *, opset: int) -> onnx.ModelProto:
    """What tf2onnx.convert.from_function returns (the ONNX model, weights inside), at a fraction of its memory."""
    from tf2onnx import optimizer, tf_loader
    from tf2onnx.convert import tensor_names_from_structed
    from tf2onnx.tfonnx import process_tf_graph

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    concrete = function.get_concrete_function(*input_signature)
    input_names = [t.name for t in concrete.inputs if t.dtype != tf.resource]
    output_names = [t.name for t in concrete.outputs if t.dtype != tf.resource]
    renames = tensor_names_from_structed(concrete, input_names, output_names)
    with tf.device("/cpu:0"), lean_optimizers():
        graph_def, weights = strip_weights(frozen_graph_def(concrete))
        with tf.Graph().as_default() as graph, tf_loader.tf_session(graph=graph) as session:
            tf.import_graph_def(graph_def, name="")
            feeds = tf_loader.inputs_without_resource(session, input_names)
            graph_def = tf_loader.tf_optimize(feeds, output_names, graph_def)
        restore_weights(graph_def, weights)
        with tf.Graph().as_default() as graph, weights_beside_graph(graph, weights):
            tf.import_graph_def(graph_def, name="")
            del graph_def
            onnx_graph = process_tf_graph(
                graph,
                continue_on_error=True,
                opset=opset,
                input_names=input_names,
                output_names=output_names,
                tensors_to_rename=renames,
            )
        del weights, graph
        gc.collect()  # TensorFlow's graphs and tf2onnx's reading of them are cycles holding copies of the weights
        onnx_graph = optimizer.optimize_graph(onnx_graph, catch_errors=False)
        gc.collect()  # the optimizers' replaced nodes
        model = onnx_graph.make_model(f"converted from {concrete.name}")
    del onnx_graph
    gc.collect()  # tf2onnx's graph (a copy of the weights in its nodes) is a cycle: freed now, not at some later point
    return model
