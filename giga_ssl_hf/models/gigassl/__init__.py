from .configuration_gigassl import GigaSSLConfig
from .modeling_gigassl import (
    GigaSSLContrastiveOutput,
    GigaSSLForContrastivePretraining,
    GigaSSLModel,
    GigaSSLModelOutput,
    GigaSSLPreTrainedModel,
    nt_xent_loss,
)

__all__ = [
    "GigaSSLConfig",
    "GigaSSLContrastiveOutput",
    "GigaSSLForContrastivePretraining",
    "GigaSSLModel",
    "GigaSSLModelOutput",
    "GigaSSLPreTrainedModel",
    "nt_xent_loss",
]
