"""``progress_ssl.png``: the semi-supervised terms next to nnU-Net's ``progress.png``."""
from __future__ import annotations

import math
import os
from typing import Dict, List


def plot_ssl_progress(log: Dict[str, list], output_folder: str, filename: str = "progress_ssl.png") -> str:
    """One panel per ``ssl/<term>`` series of nnU-Net's logger; per-class lists get one line per class."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = sorted(k for k in log if k.startswith("ssl/"))
    if not keys:
        return ""
    cols = 2
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(12, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.ravel(), keys):
        series: List = log[key]
        x = np.arange(len(series))
        width = max((len(v) for v in series if isinstance(v, (list, tuple))), default=0)
        if width:
            arr = np.full((len(series), width), np.nan)
            for i, v in enumerate(series):
                if isinstance(v, (list, tuple)):
                    arr[i, :len(v)] = v
            for c in range(width):
                ax.plot(x, arr[:, c], label=f"class {c}")
            ax.legend(fontsize=7, ncol=min(width, 4))
        else:
            ax.plot(x, np.asarray(series, dtype=float))
        ax.set_title(key[4:], fontsize=10)
        ax.set_xlabel("epoch")
    for ax in axes.ravel()[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    path = os.path.join(output_folder, filename)
    fig.savefig(path + ".tmp.png", dpi=80)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)
    return path
