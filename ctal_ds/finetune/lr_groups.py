"""Learning rates per part of the network: the head at the base lr, the backbone below it.

A pre-trained backbone fine-tuned at the learning rate its freshly initialised head
needs loses what pre-training put in it within the first updates; the usual remedies
(ULMFiT's discriminative rates, ELECTRA's and BEiT's layer-wise decay) give the backbone
a smaller rate than the head, and its lower layers a smaller one than its upper layers.
Two knobs do both here:

- ``backbone_scale``: the top Transformer layer of each stream (and the cross-attention
  inside it) trains at ``lr * backbone_scale``;
- ``layer_decay``: each layer below it at ``layer_decay`` times the one above, the
  embeddings (token, position, audio projection and their norms) one step below the
  first layer.

Everything outside ``ctal`` (fusion, pooling, classifier, a probe's layer weights) is
the head and trains at ``lr``. With both knobs at 1 every parameter is in one group, as
without this module. The groups carry an explicit ``lr``; DeepSpeed's schedulers scale
every group's own lr, so the ratios hold through warmup and cosine decay.
"""

from __future__ import annotations

from typing import Any

import torch

HEAD = "head"


def layer_of(name: str, num_layers: dict[str, int]) -> tuple[str, int] | None:
    """(stream, depth below the top layer) of a backbone parameter, None for the head.

    Depth 0 is the top layer of the stream, ``num_layers - 1`` its first layer and
    ``num_layers`` its embeddings.
    """
    parts = name.split(".")
    if parts[0] != "ctal":
        return None
    stream = parts[1]
    if stream not in num_layers:
        raise ValueError(f"parameter {name}: no layer count for the stream {stream!r}")
    layers = num_layers[stream]
    if len(parts) > 3 and parts[2] == "layers":
        return stream, layers - 1 - int(parts[3])
    return stream, layers


def scale_of(name: str, num_layers: dict[str, int], backbone_scale: float, layer_decay: float) -> float:
    where = layer_of(name, num_layers)
    if where is None:
        return 1.0
    return backbone_scale * layer_decay ** where[1]


def param_groups(
    model: torch.nn.Module, lr: float, backbone_scale: float = 1.0, layer_decay: float = 1.0
) -> list[torch.nn.Parameter] | list[dict[str, Any]]:
    """The trainable parameters of a ``CTALForSequenceTask``, grouped by learning rate.

    The head's group comes first, so the lr a trainer reads from group 0 is the base lr.
    """
    if backbone_scale <= 0 or layer_decay <= 0:
        raise ValueError(f"backbone_scale and layer_decay must be > 0, got {backbone_scale}, {layer_decay}")
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if backbone_scale == 1.0 and layer_decay == 1.0:
        return [p for _, p in trainable]
    config = model.config
    num_layers = {"text_encoder": config.num_text_layers, "audio_encoder": config.num_audio_layers}
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for name, param in trainable:
        groups.setdefault(scale_of(name, num_layers, backbone_scale, layer_decay), []).append(param)
    ordered = sorted(groups, key=lambda s: (s != 1.0, -s))
    return [{"params": groups[s], "lr": lr * s} for s in ordered]
