"""Named model configurations: the reference sizes of the literature and CPU-sized ones for experiments here."""

from __future__ import annotations

import os

from vidistill.teachers.config import (
    DBoFConfig,
    HeadConfig,
    HLSTMConfig,
    MixNeXtVLADConfig,
    ModelConfig,
    NetVLADConfig,
    NeXtVLADConfig,
    RNNConfig,
    TransformerConfig,
    load_config,
)
from vidistill.yt8m.errors import ConfigError

PRESETS: dict[str, ModelConfig] = {
    # reference sizes (models.md / paper.md): parameter counts asserted in tests
    "hlstm-paper": HLSTMConfig(num_classes=4716, frames=300, chunks=20, lower_cells=1024, upper_cells=1024),
    "netvlad-willow": NetVLADConfig(
        num_classes=3862,
        frames=300,
        pooling="netvlad",
        clusters=256,
        hidden=1024,
        context_gating=True,
        head=HeadConfig(kind="moe", mixtures=2, probability_gating=True),
    ),
    "nextvlad-paper": NeXtVLADConfig(
        num_classes=3862,
        frames=300,
        expansion=2,
        groups=8,
        clusters=128,
        hidden=2048,
        se_reduction=8,
        head=HeadConfig(kind="logistic"),
    ),
    # WILLOW's Gated NetFV 128: K = 128 rgb / 64 audio, its hidden FC as wide as Gated NetVLAD 256's (2 D K = D 2K)
    "netfv-willow": NetVLADConfig(
        num_classes=3862,
        frames=300,
        pooling="netfv",
        clusters=128,
        hidden=1024,
        context_gating=True,
        head=HeadConfig(kind="moe", mixtures=2, probability_gating=True),
    ),
    # WILLOW's gated DBoF at the sizes of its released run "gateddboflf-4096-1024" (4096 clusters, hidden 1024),
    # max pooling over all (masked) frames instead of 300 sampled ones, and netvlad-willow's gated MoE head
    "dbof-willow": DBoFConfig(
        num_classes=3862,
        frames=300,
        clusters=4096,
        hidden=1024,
        pooling="max",
        context_gating=True,
        head=HeadConfig(kind="moe", mixtures=2, probability_gating=True),
    ),
    # netvlad-willow with a non-local block over each stream's cluster residuals
    "netvlad-nonlocal": NetVLADConfig(
        num_classes=3862,
        frames=300,
        pooling="netvlad",
        clusters=256,
        hidden=1024,
        context_gating=True,
        non_local=True,
        head=HeadConfig(kind="moe", mixtures=2, probability_gating=True),
    ),
    # MixNeXtVLAD (on-the-fly distillation): 3 branches of nextvlad-paper and a gate, 266,914,281 parameters
    # (3 x 88,970,274 + the gate's 1152 x 3 + 3), about 8.77 GFLOPs per video
    "mixnextvlad-2018": MixNeXtVLADConfig(
        num_classes=3862,
        frames=300,
        branches=3,
        expansion=2,
        groups=8,
        clusters=128,
        hidden=2048,
        se_reduction=8,
        head=HeadConfig(kind="logistic"),
    ),
    # the 2019 segment challenge's BERT frame models: 2-3 layers, 8-12 heads; H = 12 x 64 as in BERT-base (the
    # seed's bert_config.json is not public); mean pooling ("BERTMean", its best single BERT)
    "transformer-2019": TransformerConfig(
        num_classes=3862, frames=300, layers=2, heads=12, head_size=64, pooling="mean", head=HeadConfig(mixtures=2)
    ),
    "lstm-starter": RNNConfig(num_classes=3862, frames=300, cell="lstm", cells=1024, layers=2),
    # CPU-sized: train in minutes on 2 cores on the synthetic data (100 classes by default)
    "hlstm-small": HLSTMConfig(
        num_classes=100, frames=300, chunks=20, lower_cells=128, upper_cells=128, lower_layers=1, upper_layers=1
    ),
    "netvlad-small": NetVLADConfig(
        num_classes=100, frames=300, clusters=16, hidden=256, head=HeadConfig(kind="moe", mixtures=2)
    ),
    "nextvlad-small": NeXtVLADConfig(
        num_classes=100,
        frames=300,
        expansion=1,
        groups=4,
        clusters=16,
        hidden=256,
        se_reduction=4,
        head=HeadConfig(kind="logistic"),
    ),
    # about netvlad-small's 4.7 M parameters: netfv's 2 D K at K = 8 is netvlad's D K at 16; DBoF's weights are its
    # per-frame projection and hidden FC; the non-local blocks' 2 D^2 (2.1 M) take the place of half the clusters
    "netfv-small": NetVLADConfig(
        num_classes=100, frames=300, pooling="netfv", clusters=8, hidden=256, head=HeadConfig(kind="moe", mixtures=2)
    ),
    "dbof-small": DBoFConfig(
        num_classes=100, frames=300, clusters=1024, hidden=1024, head=HeadConfig(kind="moe", mixtures=2)
    ),
    "netvlad-nonlocal-small": NetVLADConfig(
        num_classes=100, frames=300, clusters=8, hidden=256, non_local=True, head=HeadConfig(kind="moe", mixtures=2)
    ),
    "mixnextvlad-small": MixNeXtVLADConfig(  # 3 branches of nextvlad-small: 7,205,889 parameters
        num_classes=100,
        frames=300,
        branches=3,
        expansion=1,
        groups=4,
        clusters=16,
        hidden=256,
        se_reduction=4,
        head=HeadConfig(kind="logistic"),
    ),
    "transformer-small": TransformerConfig(
        num_classes=100, frames=300, layers=2, heads=4, head_size=16, pooling="mean", head=HeadConfig(mixtures=2)
    ),
    "lstm-small": RNNConfig(num_classes=100, frames=300, cell="lstm", cells=128, layers=1),
    "gru-small": RNNConfig(num_classes=100, frames=300, cell="gru", cells=128, layers=1),
}


def resolve(name_or_path: str) -> ModelConfig:
    """A preset name, or a YAML/JSON config file."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    if os.path.exists(name_or_path):
        return load_config(name_or_path)
    raise ConfigError(f"{name_or_path!r} is neither a preset ({', '.join(PRESETS)}) nor a config file")
