"""Training sequences from a volume (nnU-Net's dataset interface) and the generator's smooth motion option."""
import numpy as np
import torch

from nnunet_ssl.data.synthetic import SyntheticSpec, make_case
from nnunet_ssl.propagation.sequences import SliceSequenceLoader


class _OneCase:
    """nnU-Net's dataset interface (identifiers, load_case) over one volume whose slice z holds the value z
    and the organ (label 2) in slices 3..6."""

    identifiers = ["c"]

    def __init__(self):
        z = np.arange(10, dtype=np.float32)[:, None, None]
        self.data = np.broadcast_to(z, (10, 8, 8))[None].copy()
        self.seg = np.zeros((1, 10, 8, 8), dtype=np.int16)
        self.seg[0, 3:7, 2:6, 2:6] = 2
        locations = np.argwhere(self.seg == 2)

        self.properties = {"class_locations": {1: np.zeros((0, 4), int), 2: locations}}

    def load_case(self, key):
        return self.data, self.seg, None, self.properties


def test_sequences_start_on_the_organ_and_run_through_consecutive_slices():
    np.random.seed(0)
    loader = SliceSequenceLoader(_OneCase(), batch_size=6, sequence_length=4, patch_size=(8, 8),
                                 final_patch_size=(8, 8), foreground_labels=[1, 2], transforms=None)
    batch = next(loader)
    assert batch["data"].shape == (6, 4, 1, 8, 8) and batch["target"].shape == (6, 4, 1, 8, 8)
    assert batch["organ"].tolist() == [2] * 6  # label 1 is absent from the case
    for sample, target in zip(batch["data"], batch["target"]):
        z = sample[:, 0].amax(dim=(1, 2))  # slice index, wherever the window lies (padding is 0)
        steps = (z[1:] - z[:-1]).tolist()
        assert steps in ([1.0] * 3, [-1.0] * 3)  # consecutive, one direction
        assert 3 <= z[0] <= 6 and target[0].sum() > 0  # frame 0 is annotated and holds the organ
        inside = ((z >= 3) & (z <= 6)).tolist()
        assert [bool(t.sum() > 0) for t in target] == inside  # the mask follows the organ's slices
        assert set(torch.unique(target).tolist()) <= {0.0, 1.0}


def test_motion_moves_every_structure_smoothly_and_zero_changes_nothing():
    spec = dict(shape=(20, 40, 40), noise=0.0)
    still = make_case(SyntheticSpec(**spec), np.random.default_rng(5))
    same = make_case(SyntheticSpec(**spec, motion=0.0), np.random.default_rng(5))
    assert np.array_equal(still[1], same[1])  # the option off: identical output (no extra random draws)
    _, label = make_case(SyntheticSpec(**spec, motion=1.0), np.random.default_rng(5))
    organ = label == 1
    slices = [z for z in range(20) if organ[z].sum() > 20]
    centres = np.array([np.argwhere(organ[z]).mean(0) for z in slices])
    shift = np.linalg.norm(centres[1:] - centres[:-1], axis=1)
    # the in-plane centre moves ~1 voxel per slice (0.6..1.4 allowing for the ellipse's discretisation)
    assert len(slices) >= 5 and 0.6 < np.median(shift) < 1.4
    still_organ = still[1] == 1
    still_centres = np.array([np.argwhere(still_organ[z]).mean(0) for z in range(20) if still_organ[z].sum() > 20])
    assert np.median(np.linalg.norm(still_centres[1:] - still_centres[:-1], axis=1)) < 0.3
