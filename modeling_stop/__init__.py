"""STOP for Hugging Face transformers: configuration, model, processor and checkpoint conversion."""

from .configuration_stop import STOPConfig
from .modeling_stop import STOPModel, STOPOutput, STOPPreTrainedModel, contrastive_loss

__all__ = ["STOPConfig", "STOPModel", "STOPOutput", "STOPPreTrainedModel", "contrastive_loss"]
