"""Model versions, their artifacts (sha256-verified) and the flavors that load them."""

from stalwart.registry.registry import ModelSummary, ModelVersion, Registry
from stalwart.registry.signature import Signature, TensorSpec

__all__ = ["ModelSummary", "ModelVersion", "Registry", "Signature", "TensorSpec"]
