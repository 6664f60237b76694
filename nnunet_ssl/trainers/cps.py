"""Cross Pseudo Supervision (Chen et al., CVPR 2021) as an nnU-Net trainer."""
from __future__ import annotations

import torch

from nnunet_ssl.losses.consistency import cross_pseudo_supervision
from nnunet_ssl.trainers.semisupervised import nnUNetTrainerSemiSupervised, split_output
from nnunet_ssl.utils.modules import full_resolution


class nnUNetTrainerCPS(nnUNetTrainerSemiSupervised):
    """Two networks of one architecture, differently initialised, each supervising the other on
    unlabeled patches with hard pseudo-labels:
    ``L = L_sup(A) + L_sup(B) + w(t)·[CE(f_A(x_u), argmax f_B(x_u)) + CE(f_B(x_u), argmax f_A(x_u))]``.

    Inference network: A (``self.network``). A and B play symmetric roles, so either would do; A is
    the one nnU-Net itself built and validates, which keeps validation and export untouched.
    Heterogeneous CPS (two architectures) overrides :meth:`build_extra_network`.
    """

    consistency_weight: float = 0.1
    """w_max of the CPS term."""

    extra_network_names = ("network_b",)
    cost_model = {"forward": 4, "backward": 4}  # two networks on labeled+unlabeled

    def compute_losses(self, data, target, unlabeled):
        n = data.shape[0]
        x = torch.cat([data, unlabeled])
        out_a_l, out_a_u = split_output(self.network(x), n)
        out_b_l, out_b_u = split_output(self.extra_networks["network_b"](x), n)
        loss_sup = self.loss(out_a_l, target) + self.loss(out_b_l, target)
        loss_cps = cross_pseudo_supervision(full_resolution(out_a_u), full_resolution(out_b_u))
        w = self.rampup_weight()
        return {"loss": loss_sup + w * loss_cps, "loss_sup": loss_sup, "loss_cps": loss_cps, "w_cps": w}


class nnUNetTrainerCPS_Ensemble(nnUNetTrainerCPS):
    """CPS, trained identically, predicting with the mean of both networks' softmax (the seed FLARE22
    pipeline combines both CPS networks). Validation, ``checkpoint_best`` and ``nnUNetv2_predict``
    use the ensemble; its ``network_weights`` hold both networks (``members.0`` = A, ``members.1`` = B).
    Twice the inference cost of CPS."""

    inference_model = ("network", "network_b")
