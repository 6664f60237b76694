"""Slice-to-volume mask propagation (the last stage of the FLARE22 challenge pipeline).

A 2D reference model segments a few informative slices; a space-time memory network (STCN-style)
carries their masks through the volume in both directions, one organ at a time.

- :mod:`~nnunet_ssl.propagation.memory`: memory read-out (affinity by negative squared Euclidean
  distance) and the memory bank of annotated and propagated slices;
- :mod:`~nnunet_ssl.propagation.network`: key/value encoders and mask decoder;
- :mod:`~nnunet_ssl.propagation.sequences`: training sequences of consecutive slices from nnU-Net's
  preprocessed volumes;
- :mod:`~nnunet_ssl.propagation.references`: uniform slice sampling and reference-slice choice;
- :mod:`~nnunet_ssl.propagation.propagate`: bidirectional propagation through a volume;
- :mod:`~nnunet_ssl.propagation.merge`: per-organ probabilities to one label map;
- :mod:`~nnunet_ssl.propagation.inference`: the two-stage prediction behind ``nnunet-ssl propagate``.
"""
