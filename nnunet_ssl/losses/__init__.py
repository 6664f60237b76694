"""Losses: weighted Dice/CE, generalised Dice, focal, consistency, supervised-contrastive."""
from nnunet_ssl.losses.segmentation import GeneralisedDiceFocalLoss, focal_loss, generalised_dice_loss
from nnunet_ssl.losses.weighted import WeightedDiceCE, soft_dice_stats, weighted_cross_entropy, weighted_soft_dice

__all__ = ["GeneralisedDiceFocalLoss", "focal_loss", "generalised_dice_loss", "WeightedDiceCE", "soft_dice_stats",
           "weighted_cross_entropy", "weighted_soft_dice"]
