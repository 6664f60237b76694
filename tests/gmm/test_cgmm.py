import io
import math
import threading

import pytest
import torch

from nnunet_ssl.gmm import (
    DEFAULT_VAR_FLOOR,
    EXCLUDED_LOG_POSTERIOR,
    ClassConditionalGMM,
    cgmm_predict,
    class_moments,
    labels_at,
    log_posterior,
    log_priors,
)


def _tiny():
    """features (1, F=2, 2, 3), labels (1, 2, 3); the last column is ignored (label 255)."""
    f = torch.tensor([[[[1.0, 3.0, 100.0], [5.0, 7.0, 100.0]],
                       [[2.0, 2.0, 100.0], [0.0, 4.0, 100.0]]]])
    y = torch.tensor([[[0, 0, 255], [1, 1, 255]]])
    return f, y


def test_moments_by_hand():
    f, y = _tiny()
    m = class_moments(f, y, num_classes=3, var_floor=1e-4, ignore_index=255)
    # class 0: ch0 {1, 3} -> mean 2, var 1; ch1 {2, 2} -> mean 2, var 0 -> floored to 1e-4 (sigma 0.01)
    # class 1: ch0 {5, 7} -> mean 6, var 1; ch1 {0, 4} -> mean 2, var 4 (sigma 2)
    # class 2: absent -> placeholders mean 0, sigma sqrt(1e-4); the 255 voxels are not counted
    torch.testing.assert_close(m.counts, torch.tensor([2.0, 2.0, 0.0]))
    torch.testing.assert_close(m.mu, torch.tensor([[2.0, 2.0], [6.0, 2.0], [0.0, 0.0]]))
    torch.testing.assert_close(m.sigma, torch.tensor([[1.0, 0.01], [1.0, 2.0], [0.01, 0.01]]))
    torch.testing.assert_close(log_priors(m.counts), torch.tensor([math.log(0.5), math.log(0.5), -math.inf]))


def test_moments_are_differentiable_and_ignore_unlabeled_voxels():
    f, y = _tiny()
    f.requires_grad_(True)
    class_moments(f, y, 3, ignore_index=255).mu.sum().backward()
    # d(sum of class means)/df = 1/n_k on the class's voxels (n_k = 2), 0 on ignored voxels
    expected = torch.tensor([[[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]]] * 2)[None]
    torch.testing.assert_close(f.grad, expected)


def test_labels_with_channel_and_higher_resolution_are_resized_by_nearest():
    f, y = _tiny()
    y_hi = y.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)[:, None].float()  # (1, 1, 4, 6)
    lab, valid = labels_at(y_hi, (2, 3), 3, ignore_index=255)
    torch.testing.assert_close(lab, torch.where(y == 255, 0, y))
    torch.testing.assert_close(valid, y != 255)
    torch.testing.assert_close(class_moments(f, y_hi, 3, ignore_index=255).mu, class_moments(f, y, 3, ignore_index=255).mu)


def test_posterior_by_hand_one_feature():
    # F = 1, mu = (0, 2), sigma = (1, 1); x = 0 -> log-likelihood ratio 0 - (-2) = 2
    # equal priors: P(0|0) = 1 / (1 + e^-2) = 0.8807971; x = 1 lies midway -> P(0|1) = prior(0)
    f = torch.tensor([0.0, 1.0]).view(1, 1, 2)
    mu, sigma = torch.tensor([[0.0], [2.0]]), torch.ones(2, 1)
    p = log_posterior(f, mu, sigma, torch.log(torch.tensor([0.5, 0.5]))).exp()
    torch.testing.assert_close(p[0, 0], torch.tensor([0.8807971, 0.5]))
    p = log_posterior(f, mu, sigma, torch.log(torch.tensor([0.25, 0.75]))).exp()
    # x = 1: 0.25 / (0.25 + 0.75); x = 0: 0.25 / (0.25 + 0.75 e^-2) = 0.7112346
    torch.testing.assert_close(p[0, 0], torch.tensor([0.7112346, 0.25]))


def test_posterior_averages_the_log_likelihood_over_channels():
    # F = 32 identical channels, mu = (0, 1), sigma = 0.5, equal priors, voxel at x = 0:
    # per channel log N(0|0, .5) - log N(0|1, .5) = 1 / (2 * 0.25) = 2 nats. The channel mean keeps
    # the gap at 2 (P(0|x) = 1 / (1 + e^-2) = 0.8807971, the F = 1 value); a sum over channels
    # would make it 64 nats, P(0|x) = 1 - 1.6e-28 (one-hot).
    nf = 32
    f = torch.zeros(1, nf, 1, 1)
    mu, sigma = torch.stack([torch.zeros(nf), torch.ones(nf)]), torch.full((2, nf), 0.5)
    lp = log_posterior(f, mu, sigma, torch.log(torch.tensor([0.5, 0.5])))
    torch.testing.assert_close(lp[0, 0, 0, 0] - lp[0, 1, 0, 0], torch.tensor(2.0))
    torch.testing.assert_close(lp.exp()[0, :, 0, 0], torch.tensor([0.8807971, 0.1192029]))


def test_realistic_features_give_a_calibrated_posterior_not_a_one_hot_one():
    # F = 32 channels, class 0 at 0 and class 1 at 1 in every channel, no spread within a class
    # (constant background, a dead channel): sigma^2 = 0 -> DEFAULT_VAR_FLOOR = 0.05 for both
    # classes (the log sigma terms cancel). At a class-0 voxel, channel mean of the per-channel
    # gaps (1 - 0)^2 / (2 * 0.05) = 10 nats -> P(0|x) = 1 / (1 + e^-10) = 0.9999546.
    # (Summed over channels with the old floor 1e-4 it was 32 / 2e-4 = 160,000 nats.)
    nf = 32
    y = torch.tensor([[[0, 0, 1, 1]]])  # (1, 1, 4)
    f = y[:, None].float().expand(1, nf, 1, 4).contiguous()
    m = class_moments(f, y, 2)
    torch.testing.assert_close(m.sigma, torch.full((2, nf), math.sqrt(DEFAULT_VAR_FLOOR)))
    lp = log_posterior(f, m.mu, m.sigma, log_priors(m.counts))
    top2 = lp.topk(2, dim=1).values
    gap = top2[:, 0] - top2[:, 1]
    torch.testing.assert_close(gap, torch.full((1, 1, 4), 10.0))
    assert gap.max() < 20  # bounded: a calibrated mixture, not a one-hot one
    torch.testing.assert_close(lp.exp()[0, 0, 0], torch.tensor([0.9999546, 0.9999546, 0.0000454, 0.0000454]),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("spatial", [(3, 4), (2, 3, 2)])
def test_posterior_matches_direct_density_computation(spatial):
    g = torch.Generator().manual_seed(0)
    k, nf = 3, 4
    f = torch.randn((2, nf) + spatial, generator=g)
    mu = torch.randn(k, nf, generator=g)
    sigma = 0.5 + torch.rand(k, nf, generator=g)
    prior = torch.tensor([0.2, 0.3, 0.5])
    # direct: p(k) * (prod_f N(x_f | mu_kf, sigma_kf))^(1/F) (geometric mean over channels),
    # normalised over k, in float64
    x = f.double().movedim(1, -1).unsqueeze(-2)  # (B, *s, 1, F)
    dens = torch.exp(-0.5 * ((x - mu.double()) / sigma.double()) ** 2) / (sigma.double() * math.sqrt(2 * math.pi))
    joint = prior.double() * dens.prod(-1) ** (1.0 / nf)  # (B, *s, K)
    direct = (joint / joint.sum(-1, keepdim=True)).movedim(-1, 1)
    got = log_posterior(f, mu, sigma, prior.log()).exp()
    torch.testing.assert_close(got.double(), direct, atol=1e-5, rtol=1e-4)
    assert torch.equal(cgmm_predict(got.log()), direct.argmax(1))


def test_excluded_class_gets_finite_constant_and_no_probability():
    f = torch.randn(1, 2, 3, 3)
    mu, sigma = torch.zeros(3, 2), torch.ones(3, 2)
    mu[2] = float("nan")  # a placeholder of an excluded class is never read
    lp = log_posterior(f, mu, sigma, torch.tensor([math.log(0.5), math.log(0.5), -math.inf]))
    assert torch.isfinite(lp).all()
    assert (lp[:, 2] == EXCLUDED_LOG_POSTERIOR).all()
    torch.testing.assert_close(lp.exp().sum(1), torch.ones(1, 3, 3))
    with pytest.raises(ValueError, match="no class statistics"):
        log_posterior(f, mu, sigma, torch.full((3,), -math.inf))


def test_large_float16_features_do_not_overflow_even_under_autocast():
    # class 0 around +1e4, class 1 around -1e4: densities exp(-(2e4)^2 / 2) underflow in any float,
    # squares 1e8 overflow float16 (max 65504); log space in float32 handles both
    g = torch.Generator().manual_seed(1)
    y = (torch.rand(2, 6, 6, generator=g) > 0.5).long()
    f = torch.where(y[:, None] == 0, 1.0e4, -1.0e4) + torch.randn(2, 3, 6, 6, generator=g)
    f = f.half()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m = class_moments(f, y, 2)
        lp = log_posterior(f, m.mu, m.sigma, log_priors(m.counts))
    assert lp.dtype == torch.float32 and torch.isfinite(lp).all()
    assert torch.equal(cgmm_predict(lp), y)
    torch.testing.assert_close(lp.exp().sum(1), torch.ones(2, 6, 6))
    torch.testing.assert_close(m.mu[:, 0], torch.tensor([1.0e4, -1.0e4]), atol=2.0, rtol=0)


def test_constant_features_hit_the_variance_floor():
    f = torch.full((1, 2, 2, 2), 3.0)
    y = torch.tensor([[[0, 0], [1, 1]]])
    m = class_moments(f, y, 2, var_floor=0.04)
    torch.testing.assert_close(m.sigma, torch.full((2, 2), 0.2))
    lp = log_posterior(f, m.mu, m.sigma, log_priors(m.counts))
    # both classes identical -> posterior = prior = 1/2 everywhere
    torch.testing.assert_close(lp.exp(), torch.full((1, 2, 2, 2), 0.5))
    with pytest.raises(ValueError, match="var_floor"):
        class_moments(f, y, 2, var_floor=0.0)


def test_stateful_gmm_absent_and_unseen_classes():
    gmm = ClassConditionalGMM(num_classes=4, ignore_index=255)
    f1, y1 = _tiny()  # classes 0 and 1 (2 voxels each)
    with pytest.raises(ValueError, match="no estimate yet"):
        gmm.log_posterior(f1)
    gmm.update(f1, y1)
    # second batch has class 0 only (mean 10); class 1 keeps its estimate from batch 1
    gmm.update(torch.full((1, 2, 1, 2), 10.0), torch.zeros(1, 1, 2, dtype=torch.long))
    torch.testing.assert_close(gmm.mu[:2], torch.tensor([[10.0, 10.0], [6.0, 2.0]]))
    torch.testing.assert_close(gmm.sigma[1], torch.tensor([1.0, 2.0]))
    # priors: class 0 -> 1.0 (batch 2), class 1 keeps 0.5 -> renormalised 2/3, 1/3; 2, 3 unseen
    torch.testing.assert_close(gmm.log_prior(), torch.tensor([math.log(2 / 3), math.log(1 / 3), -math.inf, -math.inf]))
    lp = gmm.log_posterior(f1)
    assert torch.isfinite(lp).all() and (lp[:, 2:] == EXCLUDED_LOG_POSTERIOR).all()
    assert set(gmm.predict(f1).unique().tolist()) <= {0, 1}


def test_momentum_blends_mean_variance_and_prior():
    gmm = ClassConditionalGMM(num_classes=2, momentum=0.5, ignore_index=255)
    y = torch.tensor([[[0, 0, 1]]])
    # batch 1: class 0 features {1, 3} (mean 2, var 1), class 1 {0}; batch 2: class 0 {1, 7} (mean 4, var 9)
    gmm.update(torch.tensor([[[[1.0, 3.0, 0.0]]]]), y)
    gmm.update(torch.tensor([[[[1.0, 7.0, 0.0]]]]), torch.tensor([[[0, 0, 255]]]))
    torch.testing.assert_close(gmm.mu[0], torch.tensor([3.0]))  # 0.5 * 2 + 0.5 * 4
    torch.testing.assert_close(gmm.var[0], torch.tensor([5.0]))  # 0.5 * 1 + 0.5 * 9
    # prior of class 0: 0.5 * 2/3 + 0.5 * 1 = 5/6; class 1 absent in batch 2 keeps 1/3 -> 5/7, 2/7
    torch.testing.assert_close(gmm.log_prior().exp(), torch.tensor([5 / 7, 2 / 7]))
    with pytest.raises(ValueError, match="momentum"):
        ClassConditionalGMM(2, momentum=1.0)


def test_state_dict_round_trip_is_exact():
    gmm = ClassConditionalGMM(num_classes=3, momentum=0.9, var_floor=1e-3, ignore_index=255)
    f, y = _tiny()
    gmm.update(f, y)
    gmm.update(f * 2, y)
    buf = io.BytesIO()
    torch.save(gmm.state_dict(), buf)
    buf.seek(0)
    other = ClassConditionalGMM(num_classes=3)  # settings come from the state
    other.load_state_dict(torch.load(buf))
    for key, value in gmm.state_dict().items():
        assert torch.equal(value, other.state_dict()[key]) if torch.is_tensor(value) else value == other.state_dict()[key]
    assert torch.equal(gmm.log_posterior(f), other.log_posterior(f))
    with pytest.raises(ValueError, match="classes"):
        ClassConditionalGMM(num_classes=4).load_state_dict(gmm.state_dict())


def test_input_errors_name_expected_shapes():
    f, y = _tiny()
    with pytest.raises(ValueError, match="label map"):
        class_moments(f, torch.zeros(1, 2, 2, 3), 3)  # two channels: not a label map
    with pytest.raises(ValueError, match="batch size"):
        class_moments(f, torch.zeros(2, 2, 3), 3)
    with pytest.raises(ValueError, match="outside the 3 classes"):
        class_moments(f, y, 3)  # 255 without ignore_index
    with pytest.raises(ValueError, match="mu and sigma"):
        log_posterior(f, torch.zeros(3, 5), torch.ones(3, 5), torch.zeros(3))


class _ThreadWorld:
    """Two ranks as two threads: ``all_reduce_sum`` sums the tensors both ranks pass, in call order
    (a stand-in for gloo that needs no process spawn)."""

    def __init__(self, world: int):
        self.barrier = threading.Barrier(world)
        self.slots = [None] * world
        self.local = threading.local()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        self.slots[self.local.rank] = t.detach().clone()
        self.barrier.wait()
        total = sum(self.slots)
        self.barrier.wait()  # everyone has read before the next call overwrites the slots
        return total


def _two_rank_batches():
    g = torch.Generator().manual_seed(3)
    f = torch.randn(2, 2, 4, 4, generator=g) * 3 + 5
    y = torch.randint(0, 3, (2, 4, 4), generator=g)
    y[1, 0, 0] = 2  # rank 1 has class 2 ...
    y[0] = torch.where(y[0] == 2, 0, y[0])  # ... rank 0 has none
    return f, y


def test_ddp_statistics_equal_single_process_statistics_of_the_union(monkeypatch):
    import nnunet_ssl.gmm.cgmm as cgmm

    world = _ThreadWorld(2)
    monkeypatch.setattr(cgmm, "all_reduce_sum", world.all_reduce_sum)
    f, y = _two_rank_batches()
    results = {}

    def rank_main(rank):
        world.local.rank = rank
        f_local = f[rank : rank + 1].clone().requires_grad_(True)
        m = class_moments(f_local, y[rank : rank + 1], 3)
        (m.mu.sum() + m.sigma.sum()).backward()
        results[rank] = (m.mu.detach(), m.sigma.detach(), m.counts, f_local.grad)

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    monkeypatch.undo()
    f_all = f.clone().requires_grad_(True)
    ref = class_moments(f_all, y, 3)
    (ref.mu.sum() + ref.sigma.sum()).backward()
    assert ref.counts[2] > 0 and sorted(results) == [0, 1]
    for rank in (0, 1):
        mu, sigma, counts, grad = results[rank]
        torch.testing.assert_close(mu, ref.mu.detach())
        torch.testing.assert_close(sigma, ref.sigma.detach())
        torch.testing.assert_close(counts, ref.counts)
        # each rank gets the gradient of its own voxels, as the single process does
        torch.testing.assert_close(grad, f_all.grad[rank : rank + 1])
