"""benchmarks/term_gradients.py: gradient norms of loss terms, hand-checked on a two-parameter model."""
from __future__ import annotations

import pytest
import torch

from conftest import load_benchmark

tg = load_benchmark("term_gradients")


def test_term_gradient_norms_hand_checked():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    unused = torch.nn.Parameter(torch.tensor([5.0]))  # reached by no term: zero gradient, no error
    x = torch.tensor([3.0, 4.0])
    loss_sup = (w * x).sum()  # gradient x = [3, 4]: norm 5
    loss_cps = 3 * w[0] ** 2  # gradient [6 w0, 0] = [6, 0]: norm 6
    terms = {"loss": loss_sup + 0.5 * loss_cps, "loss_sup": loss_sup, "loss_cps": loss_cps, "w_cps": 0.5,
             "detached": loss_cps.detach()}
    norms = tg.term_gradient_norms(terms, [w, unused], supervised="loss_sup")
    assert set(norms) == {"loss", "loss_sup", "loss_cps", tg.UNSUPERVISED, tg.COSINE}  # only terms with a graph
    assert norms["loss_sup"] == pytest.approx(5.0)
    assert norms["loss_cps"] == pytest.approx(6.0)
    assert norms["loss"] == pytest.approx((6.0 ** 2 + 4.0 ** 2) ** 0.5)  # [3 + 0.5 * 6, 4]
    assert norms[tg.UNSUPERVISED] == pytest.approx(3.0)  # 0.5 * [6, 0]
    assert norms[tg.COSINE] == pytest.approx(9.0 / (5.0 * 3.0))  # [3, 4] . [3, 0] / (5 * 3) = 0.6


def test_opposing_unsupervised_gradient_has_negative_cosine():
    w = torch.nn.Parameter(torch.tensor([1.0, 0.0]))
    loss_sup = 2 * w[0]  # gradient [2, 0]
    loss = loss_sup - w[0] + w[1]  # adds [-1, 1]: cosine with [2, 0] = -2 / (2 * sqrt(2))
    norms = tg.term_gradient_norms({"loss": loss, "loss_sup": loss_sup}, [w], "loss_sup")
    assert norms[tg.COSINE] == pytest.approx(-1 / 2 ** 0.5)


def test_supervised_weight_is_taken_out_of_the_unsupervised_part():
    """DMPF's loss is (1 - mu) L_sup + ...: without the weight, -mu grad(L_sup) would count as an
    unsupervised gradient opposing the labels."""
    w = torch.nn.Parameter(torch.tensor([1.0, 0.0]))
    loss_sup = 2 * w[0]  # gradient [2, 0]
    loss = 0.75 * loss_sup + w[1]  # unsupervised part: [0, 1], orthogonal to the labels
    norms = tg.term_gradient_norms({"loss": loss, "loss_sup": loss_sup}, [w], "loss_sup", supervised_weight=0.75)
    assert norms[tg.UNSUPERVISED] == pytest.approx(1.0) and norms[tg.COSINE] == pytest.approx(0.0)
    naive = tg.term_gradient_norms({"loss": loss, "loss_sup": loss_sup}, [w], "loss_sup")
    assert naive[tg.COSINE] < -0.4  # [-0.5, 1] against [2, 0]


def test_supervised_term_name():
    assert tg.supervised_term(["loss", "loss_cps", "loss_sup"]) == "loss_sup"
    assert tg.supervised_term(["loss", "loss_seg", "loss_simclr"]) == "loss_seg"
    assert tg.supervised_term(["loss", "loss_mix_in"]) is None


def test_report_rows():
    result = {"loss_sup": {"value": 1.0, "grad": 2.0}, "loss_cps": {"value": 0.5, "grad": 1.0},
              "w_cps": {"value": 0.1}, tg.COSINE: {"grad": -0.25}, "_supervised": {"name": "loss_sup"}}
    lines = tg.report(result, "T", "cmd")
    assert "| loss_cps | 0.5 | 1 | 0.5 |" in lines  # ratio to the supervised gradient 2
    assert "| w_cps | 0.1 |  |  |" in lines
    assert lines.index("| w_cps | 0.1 |  |  |") < lines.index(f"| {tg.COSINE} | -0.25 | | |")
