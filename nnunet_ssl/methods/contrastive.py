"""The contrastive segmentation base shared by the DCL trainers (:mod:`nnunet_ssl.trainers.dcl`) and the
SimCLR trainer (:mod:`nnunet_ssl.trainers.simclr`): ``L_seg`` = nnU-Net's Dice + CE with its deep
supervision, projection heads on the encoder stages fed by forward hooks, heads as training-only extra
networks (so ``network_weights`` is a plain nnU-Net network)."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import nn

from nnunet_ssl.heads.projection import (ClassificationHead, EncoderTaps, MultiScaleProjectionHeads,
                                         encoder_conv_op, encoder_stage_channels)
from nnunet_ssl.trainers.semisupervised import nnUNetTrainerSemiSupervised

PROJECTION = "projection_heads"
CLASSIFIER = "classification_head"


class ContrastiveSegmentationTrainer(nnUNetTrainerSemiSupervised):
    """Shared part of the DCL and SimCLR trainers (not a trainer itself): ``L_seg`` = nnU-Net's Dice + CE
    with its deep supervision (nnU-Net's ``_build_loss``, not overridden), projection heads on the
    encoder stages fed by hooks, heads as training-only extra networks."""

    unused_hyperparameters = ("consistency_weight", "rampup_fraction", "ema_decay")

    contrastive_weight: float = 0.1
    """α: weight of the (multi-scale) contrastive term, summed over the scales."""
    temperature: float = 0.1
    """τ of the supervised contrastive loss."""
    multiscale: bool = True
    """Project every encoder stage (MSPH) if True, else only the deepest one."""
    proj_dim: int = 64
    """Dimension of the L2-normalised embeddings."""
    proj_hidden: int = 256
    """Hidden width of the projection MLPs."""

    requires_category_labels = False

    # ---- networks, heads, loss
    @property
    def extra_network_names(self) -> Tuple[str, ...]:
        return (PROJECTION,)

    def build_extra_network(self, name: str) -> nn.Module:
        channels = encoder_stage_channels(self.network)
        if name == PROJECTION:
            return MultiScaleProjectionHeads(channels if self.multiscale else channels[-1:],
                                             encoder_conv_op(self.network), self.proj_dim, self.proj_hidden)
        if name == CLASSIFIER:
            return ClassificationHead(channels[-1], self.label_manager.num_segmentation_heads - 1)
        return super().build_extra_network(name)

    def initialize(self):
        super().initialize()
        self.encoder_taps = EncoderTaps(self.network)  # before the first forward (torch.compile)

    def project(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Embeddings ``[(N, proj_dim)]`` of the encoder stage outputs (all, or the deepest)."""
        return self.extra_networks[PROJECTION](list(features) if self.multiscale else list(features[-1:]))
