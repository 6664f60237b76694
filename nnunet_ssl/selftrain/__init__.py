"""Challenge-style self-training rounds (``nnunet-ssl selftrain``): teachers, filtered pseudo-labels, students."""
