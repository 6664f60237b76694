import os

from nnunet_ssl.plotting import plot_ssl_progress


def test_plot_scalar_and_per_class_terms(tmp_path):
    log = {"train_losses": [1.0, 0.5, 0.4],
           "ssl/loss_cons": [0.1, float("nan"), 0.05],
           "ssl/w_A": [[0.0, 1.0, 2.0], [0.1, 1.1, 1.9], [0.2, 1.0, 1.8]]}
    path = plot_ssl_progress(log, str(tmp_path))
    assert os.path.isfile(path) and os.path.getsize(path) > 1000
    assert not [f for f in os.listdir(tmp_path) if "tmp" in f]
    assert plot_ssl_progress({"train_losses": [1.0]}, str(tmp_path / "none")) == ""
