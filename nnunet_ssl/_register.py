"""Make nnU-Net find this package's trainers without any user set-up.

nnU-Net (>= 2.8) looks for trainers it does not ship in the folders listed in the environment
variable ``nnUNet_extTrainer`` (``os.pathsep``-separated). The installed ``nnunet_ssl_register.pth``
calls :func:`register` when Python starts, which appends ``nnunet_ssl/trainers`` to that variable.
A value the user already set is kept and stays first. Set ``nnUNet_ssl_no_autoregister=1`` to
switch this off; ``nnunet-ssl env`` prints the export line for shells that need it explicitly.

This module must stay import-light: it runs in every Python process of the environment.
"""
import os

ENV_VAR = "nnUNet_extTrainer"
OPT_OUT = "nnUNet_ssl_no_autoregister"


def trainer_folder() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "trainers")


def extended_value(current: str | None, folder: str) -> str:
    """Return ``current`` with ``folder`` appended (once), keeping the user's entries first."""
    parts = [p for p in (current or "").split(os.pathsep) if p.strip()]
    norm = {os.path.normpath(p) for p in parts}
    if os.path.normpath(folder) not in norm:
        parts.append(folder)
    return os.pathsep.join(parts)


def register() -> None:
    try:
        if os.environ.get(OPT_OUT, "0").lower() in ("1", "true", "yes"):
            return
        os.environ[ENV_VAR] = extended_value(os.environ.get(ENV_VAR), trainer_folder())
    except Exception:  # never break interpreter start-up
        pass
