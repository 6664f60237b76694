"""Pseudo-label post-processing (filters applied to hard pseudo-labels)."""
from nnunet_ssl.pseudo.filters import largest_connected_component_per_class

__all__ = ["largest_connected_component_per_class"]
