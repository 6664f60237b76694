"""Dual-network inference as one nnU-Net network: the mean of several networks' softmax.

DHC's and Double-Mix's reference code predict with the average of both students, and the seed
FLARE22 pipeline sums both CPS networks' outputs. nnU-Net's predictor builds the inference network
through the trainer class's ``build_network_architecture`` and loads ``network_weights`` into it;
:func:`ensemble_builder` makes that builder return a :class:`SoftmaxEnsemble`, so
``nnUNetv2_predict`` runs an ensemble trainer unchanged.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

Output = Union[Tensor, List[Tensor]]


def mean_softmax_logits(logits: Sequence[Tensor], weights: Optional[Sequence[float]] = None) -> Tensor:
    """``log(Σ_k w_k softmax(z_k))`` of K logit tensors ``(B, C, *spatial)`` → ``(B, C, *spatial)``, with
    ``w_k = 1/K`` by default; other non-negative weights are normalised to sum 1.

    These are logits whose softmax is the (weighted) mean of the members' softmax (what nnU-Net's
    predictor applies), and whose argmax is the argmax of the mean probability. Computed in float32
    with ``logsumexp`` of log-softmaxes, so no probability underflows to ``log 0``.
    """
    if not logits:
        raise ValueError("mean_softmax_logits needs at least one logit tensor")
    if weights is None:
        log_w = [-math.log(len(logits))] * len(logits)
    else:
        if len(weights) != len(logits) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"expected {len(logits)} non-negative weights with a positive sum, got {list(weights)}")
        log_w = [math.log(w / sum(weights)) if w > 0 else -math.inf for w in weights]
    stacked = torch.stack([torch.log_softmax(z.float(), 1) + lw for z, lw in zip(logits, log_w)])
    return torch.logsumexp(stacked, 0)


class SoftmaxEnsemble(nn.Module):
    """``K`` networks (``members.0``, ``members.1``, …) whose outputs are combined by
    :func:`mean_softmax_logits`; under deep supervision (list outputs) scale by scale.

    Meant for softmax (class) outputs; region (sigmoid) datasets are not supported. Switching deep
    supervision, train/eval and devices acts on every member.
    """

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if len(members) < 1:
            raise ValueError("an ensemble needs at least one member network")
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> Output:
        outputs = [m(x) for m in self.members]
        if isinstance(outputs[0], (list, tuple)):
            return [mean_softmax_logits(scale) for scale in zip(*outputs)]
        return mean_softmax_logits(outputs)


def ensemble_of(builders: Sequence[Callable[..., nn.Module]],
                member_builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """A ``build_network_architecture`` (nnU-Net's signature) that builds one network with each of
    ``builders`` and returns them as a :class:`SoftmaxEnsemble` (member ``i`` from ``builders[i]``).

    The returned function keeps ``member_builder`` as its ``member_builder`` attribute (what training
    builds ``self.network`` with; inference, i.e. nnU-Net's predictor, builds the ensemble) and
    ``num_members``.
    """
    if len(builders) < 1:
        raise ValueError(f"an ensemble needs at least one member network, got {len(builders)}")

    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        return SoftmaxEnsemble([build(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                      enable_deep_supervision) for build in builders])

    build_network_architecture.member_builder = member_builder
    build_network_architecture.num_members = len(builders)
    return build_network_architecture


def ensemble_builder(member_builder: Callable[..., nn.Module], num_members: int) -> Callable[..., nn.Module]:
    """:func:`ensemble_of` ``num_members`` networks of one architecture, each built by ``member_builder``."""
    member_builder = getattr(member_builder, "member_builder", member_builder)  # never nest ensembles
    if num_members < 1:
        raise ValueError(f"an ensemble needs at least one member network, got {num_members}")
    return ensemble_of([member_builder] * num_members, member_builder)
