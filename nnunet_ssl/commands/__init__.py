"""Subcommands of the nnunet-ssl console command (see nnunet_ssl/cli.py)."""
