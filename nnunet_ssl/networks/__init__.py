"""Network modules built around nnU-Net's networks (ensembles for inference)."""
