"""``nnunet-ssl env``: show how nnU-Net finds this package's trainers, print the export line."""
from __future__ import annotations

import os


def add_arguments(parser) -> None:
    parser.add_argument("--export", action="store_true",
                        help="print only the shell line 'export nnUNet_extTrainer=...' (for eval in a shell)")


def run(args) -> int:
    from nnunet_ssl._register import ENV_VAR, extended_value, trainer_folder

    value = extended_value(os.environ.get(ENV_VAR), trainer_folder())
    if args.export:
        print(f"export {ENV_VAR}={value}")
        return 0
    current = os.environ.get(ENV_VAR, "")
    registered = trainer_folder() in current.split(os.pathsep)
    print(f"nnunet_ssl trainers: {trainer_folder()}")
    print(f"{ENV_VAR} in this process: {current or '<unset>'}")
    print("status: registered automatically (nnunet_ssl_register.pth)" if registered else
          "status: not registered; run: eval \"$(nnunet-ssl env --export)\"")
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        print(f"{var}: {os.environ.get(var, '<unset>')}")
    return 0
