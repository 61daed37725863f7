"""Fused transformer nodes for ONNX Runtime: each attention block, LayerNorm and GELU of a transformer network
becomes one node.

tf2onnx writes a Keras transformer as dozens of small nodes per layer: attention as reshapes, transposes, two
batched MatMuls, a scale, the mask bias and a softmax; LayerNormalization as a batch-norm-like chain (moments
through GlobalAveragePool, Sqrt, Reciprocal); GELU as Mul / Erf / Add / Mul. ONNX Runtime's transformer optimizer
(`onnxruntime.transformers.optimizer`, model types "bert" / "bert_tf") matches the graphs PyTorch and TF1 BERT
exports produce and fuses none of this one (checked: 0 fusions of every kind). This pass knows the graph it is
given, since teachers/transformer.py wrote it, and replaces:

- every attention block (`.../self_attention/`, `.../cross_attention/`: from its Q, K, V projections to the
  reshape of the heads' outputs) by ONNX Runtime's `com.microsoft.MultiHeadAttention` with `key_padding_mask` =
  each video's number of real keys (counted from the block's mask bias: keys whose bias is 0). Its masked keys
  get -10000 added to their scores (`mask_filter_value`'s default), the same as the Keras layer's MASKED;
- every LayerNormalization (`.../moments/mean` to `.../batchnorm/add_1`) by ONNX's `LayerNormalization`
  (opset 17), the same epsilon, gamma and beta;
- every exact GELU, 0.5 x (1 + erf(x / sqrt 2)), by `com.microsoft.Gelu`.

What does not match exactly is left as it was and counted (`FusionReport`), never guessed at. ONNX Runtime then
fuses further by itself when it loads the file (the residual Add into SkipLayerNormalization, for one).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

MS_DOMAIN = "com.microsoft"
# the contrib ops this pass writes; each output has its first input's type (ONNX's shape inference knows neither)
FUSED_CONTRIB_OPS = {"MultiHeadAttention", "Gelu"}
ATTENTION_SCOPES = ("/self_attention", "/cross_attention")


@dataclass
class FusionReport:
    """How many of each kind of block were found and fused."""

    attention: tuple[int, int] = (0, 0)  # (fused, found)
    layer_norm: tuple[int, int] = (0, 0)
    gelu: tuple[int, int] = (0, 0)

    def note(self) -> str:
        parts = [
            f"{name} {fused}/{found}"
            for name, (fused, found) in (
                ("MultiHeadAttention", self.attention),
                ("LayerNormalization", self.layer_norm),
                ("Gelu", self.gelu),
            )
        ]
        return "fused transformer nodes: " + ", ".join(parts)


class _Graph:
    """Lookups over a GraphProto: nodes by name and by output, consumers, constant values."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.by_name = {n.name: n for n in graph.node}
        self.producer = {out: n for n in graph.node for out in n.output}
        self.consumers: dict[str, list] = defaultdict(list)
        for n in graph.node:
            for name in n.input:
                self.consumers[name].append(n)
        self.initializers = {i.name: i for i in graph.initializer}

    def node(self, name: str, op_type: str):
        """The node called `name` if it is an `op_type`, else None."""
        node = self.by_name.get(name)
        return node if node is not None and node.op_type == op_type else None

    def constant(self, name: str) -> np.ndarray | None:
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def is_constant(self, name: str, value: float, tolerance: float = 1e-6) -> bool:
        array = self.constant(name)
        return array is not None and array.size == 1 and abs(float(array.reshape(-1)[0]) - value) <= tolerance


def _split_input(g: _Graph, name: str, perm: list[int]) -> tuple[str, str] | None:
    """(the tensor that a Reshape to [B, T, A, d] and a Transpose by `perm` turned into `name`, that Reshape's
    target shape). The tensor is [B, T, A * d], or [B * T, A * d] where tf2onnx merged the projection's own reshape
    back to 3-D into this one (a projection without a bias add between them: an untrained one, whose zero bias
    grappler folded away)."""
    transpose = g.producer.get(name)
    if transpose is None or transpose.op_type != "Transpose":
        return None
    if [list(a.ints) for a in transpose.attribute if a.name == "perm"] != [perm]:
        return None
    reshape = g.producer.get(transpose.input[0])
    return (reshape.input[0], reshape.input[1]) if reshape is not None and reshape.op_type == "Reshape" else None


def _constant(name: str, value: np.ndarray, added: list) -> str:
    """A Constant node of `value` named `name` (appended to `added`); returns its output's name."""
    added.append(helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(value)))
    return name


def _three_d(split: tuple[str, str], width: int, added: list) -> str:
    """The split input as [B, T, A * d] (what MultiHeadAttention takes) whatever its rank: reshaped to the first two
    entries of the heads' target shape, then A * d (a no-op on a tensor that is 3-D already)."""
    tensor, shape = split
    name = f"{tensor}/three_d"
    starts, ends, width_shape = (
        _constant(f"{name}/starts", np.array([0], np.int64), added),
        _constant(f"{name}/ends", np.array([2], np.int64), added),
        _constant(f"{name}/width", np.array([width], np.int64), added),
    )
    added += [
        helper.make_node("Slice", [shape, starts, ends], [f"{name}/rows"], name=f"{name}/rows"),
        helper.make_node("Concat", [f"{name}/rows", width_shape], [f"{name}/shape"], name=f"{name}/shape", axis=0),
        helper.make_node("Reshape", [tensor, f"{name}/shape"], [name], name=name),
    ]
    return name


def _attention(g: _Graph, scope: str, heads: int, head_size: int, lengths: dict[str, str], added: list) -> bool:
    """Replaces the attention block under `scope` (see the module docstring); False where it does not match."""
    scores = g.node(f"{scope}/MatMul", "MatMul")  # Q K^T
    softmax = g.node(f"{scope}/Softmax", "Softmax")
    merged = g.node(f"{scope}/Reshape_3", "Reshape")  # [B, T, A * d]: the heads' outputs merged
    if None in (scores, softmax, merged):
        return False
    heads_out = g.producer.get(merged.input[0])  # Transpose([B, A, T, d] weights x V) -> [B, T, A, d]
    product = g.producer.get(heads_out.input[0]) if heads_out is not None and heads_out.op_type == "Transpose" else None
    if product is None or product.op_type != "MatMul" or product.input[0] != softmax.output[0]:
        return False  # something else in between (a quantization node of a QAT network, say): left as it is
    q = _split_input(g, scores.input[0], [0, 2, 1, 3])
    k = _split_input(g, scores.input[1], [0, 2, 3, 1])  # K split and transposed for Q K^T in one
    v = _split_input(g, product.input[1], [0, 2, 1, 3])
    biased = g.producer.get(softmax.input[0])
    if None in (q, k, v) or biased is None or biased.op_type != "Add" or len(biased.input) != 2:
        return False

    def scaled_scores(name: str) -> bool:  # Q K^T times 1 / sqrt(d): the scale MultiHeadAttention applies
        node = g.producer.get(name)
        return (
            node is not None
            and node.op_type == "Mul"
            and scores.output[0] in node.input
            and any(g.is_constant(i, 1 / math.sqrt(head_size)) for i in node.input)
        )

    bias = [name for name in biased.input if not scaled_scores(name)]
    if len(bias) != 1:
        return False
    bias = bias[0]
    if bias not in lengths:  # keys whose bias is 0 are real: their count per video, [B] int32
        lengths[bias] = _key_lengths(bias, added)
    q, k, v = (_three_d(split, heads * head_size, added) for split in (q, k, v))
    added.append(
        helper.make_node(
            "MultiHeadAttention",
            [q, k, v, "", lengths[bias]],
            [merged.output[0]],
            name=f"{scope}/MultiHeadAttention",
            domain=MS_DOMAIN,
            num_heads=heads,
        )
    )
    g.graph.node.remove(merged)  # the rest of the unfused block is no longer used: pruned below
    return True


def _key_lengths(bias: str, added: list) -> str:
    """Nodes counting, per video, the keys of the bias [B, 1, 1, T] that are 0 (real); returns the [B] int32 name."""
    name = f"{bias}/key_lengths"
    zero, rows, axes = (
        _constant(f"{name}/zero", np.zeros((), np.float32), added),
        _constant(f"{name}/rows", np.array([0, -1], np.int64), added),
        _constant(f"{name}/axes", np.array([1], np.int64), added),
    )
    added += [
        helper.make_node("Equal", [bias, zero], [f"{name}/real"], name=f"{name}/real"),
        helper.make_node("Cast", [f"{name}/real"], [f"{name}/int"], name=f"{name}/int", to=onnx.TensorProto.INT32),
        helper.make_node("Reshape", [f"{name}/int", rows], [f"{name}/flat"], name=f"{name}/flat"),
        helper.make_node("ReduceSum", [f"{name}/flat", axes], [name], name=name, keepdims=0),
    ]
    return name


def _layer_norm(g: _Graph, scope: str, added: list) -> bool:
    mean = g.by_name.get(f"{scope}/moments/mean")
    last = g.node(f"{scope}/batchnorm/add_1", "Add")
    epsilon_add = g.node(f"{scope}/batchnorm/add", "Add")
    scale = g.node(f"{scope}/batchnorm/mul", "Mul")
    shift = g.node(f"{scope}/batchnorm/sub", "Sub")
    if None in (mean, last, epsilon_add, scale, shift) or mean.op_type not in ("GlobalAveragePool", "ReduceMean"):
        return False
    gamma = [name for name in scale.input if name in g.initializers]
    beta = shift.input[0]
    epsilon = [value for value in map(g.constant, epsilon_add.input) if value is not None]
    if len(gamma) != 1 or beta not in g.initializers or len(epsilon) != 1 or epsilon[0].size != 1:
        return False
    added.append(
        helper.make_node(
            "LayerNormalization",
            [mean.input[0], gamma[0], beta],
            [last.output[0]],
            name=f"{scope}/LayerNormalization",
            axis=-1,
            epsilon=float(epsilon[0].reshape(-1)[0]),
        )
    )
    g.graph.node.remove(last)
    return True


def _gelu(g: _Graph, erf, added: list) -> bool:
    """Mul(x, 1/sqrt 2) -> Erf -> Add(1) -> Mul(Mul(x, 0.5), .)."""
    scaled = g.producer.get(erf.input[0])
    if scaled is None or scaled.op_type != "Mul":
        return False
    x = [name for name in scaled.input if not g.is_constant(name, 1 / math.sqrt(2))]
    after = g.consumers.get(erf.output[0], [])
    if len(x) != 1 or len(after) != 1 or after[0].op_type != "Add":
        return False
    plus_one = after[0]
    if not any(g.is_constant(name, 1.0) for name in plus_one.input):
        return False
    final = g.consumers.get(plus_one.output[0], [])
    if len(final) != 1 or final[0].op_type != "Mul":
        return False
    half = [g.producer.get(name) for name in final[0].input if name != plus_one.output[0]]
    if len(half) != 1 or half[0] is None or half[0].op_type != "Mul":
        return False
    if x[0] not in half[0].input or not any(g.is_constant(name, 0.5) for name in half[0].input):
        return False
    added.append(helper.make_node("Gelu", [x[0]], [final[0].output[0]], name=f"{erf.name}/Gelu", domain=MS_DOMAIN))
    g.graph.node.remove(final[0])
    return True


def fuse_transformer(model: onnx.ModelProto, heads: int, head_size: int) -> FusionReport:
    """Fuses `model` (a converted transformer network of `heads` x `head_size` attention) in place; see the module
    docstring."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    graph = model.graph
    g = _Graph(graph)
    added: list = []
    lengths: dict[str, str] = {}
    attention_scopes = sorted({n.name.rsplit("/", 1)[0] for n in graph.node if n.op_type == "Softmax"})
    attention_scopes = [s for s in attention_scopes if s.endswith(ATTENTION_SCOPES)]
    attention = sum(_attention(g, scope, heads, head_size, lengths, added) for scope in attention_scopes)
    norm_scopes = sorted({n.name[: -len("/moments/mean")] for n in graph.node if n.name.endswith("/moments/mean")})
    norms = sum(_layer_norm(g, scope, added) for scope in norm_scopes)
    erfs = [n for n in graph.node if n.op_type == "Erf"]
    gelus = sum(_gelu(g, erf, added) for erf in erfs)
    graph.node.extend(added)
    tidy = OnnxModel(model)  # ONNX Runtime's graph tools: what no output needs goes, then graph order
    tidy.prune_graph(allow_remove_graph_inputs=False)
    tidy.update_graph()  # the initializers no node reads any more
    tidy.topological_sort()
    if attention or gelus:
        if not any(o.domain == MS_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return FusionReport((attention, len(attention_scopes)), (norms, len(norm_scopes)), (gelus, len(erfs)))
