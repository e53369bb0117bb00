import sys

from .configuration_gigassl import GigaSSLConfig
from .modeling_gigassl import (
    GigaSSLContrastiveOutput,
    GigaSSLForContrastivePretraining,
    GigaSSLModel,
    GigaSSLModelOutput,
    GigaSSLPreTrainedModel,
    nt_xent_loss,
)

# Not part of the model code shipped to the Hub: makes save_pretrained copy the model code (auto_map) so that
# a saved folder loads with trust_remote_code=True where this package is not installed. This is what
# ``register_for_auto_class`` sets; calling it would import transformers' auto classes, whose import is what
# registers these classes with them (giga_ssl_hf/__init__.py).
GigaSSLConfig._auto_class = "AutoConfig"
GigaSSLModel._auto_class = "AutoModel"


def register_with_imported_auto_classes() -> None:
    """Register with ``AutoConfig`` / ``AutoModel`` where transformers has imported them (no import here).

    Called when this package finishes importing and by ``giga_ssl_hf``'s hook on the auto modules' import.
    """
    configuration_auto = sys.modules.get("transformers.models.auto.configuration_auto")
    if configuration_auto is not None and hasattr(configuration_auto, "AutoConfig"):
        configuration_auto.AutoConfig.register(GigaSSLConfig.model_type, GigaSSLConfig, exist_ok=True)
    modeling_auto = sys.modules.get("transformers.models.auto.modeling_auto")
    if modeling_auto is not None and hasattr(modeling_auto, "AutoModel"):
        modeling_auto.AutoModel.register(GigaSSLConfig, GigaSSLModel, exist_ok=True)


register_with_imported_auto_classes()

__all__ = [
    "GigaSSLConfig",
    "GigaSSLContrastiveOutput",
    "GigaSSLForContrastivePretraining",
    "GigaSSLModel",
    "GigaSSLModelOutput",
    "GigaSSLPreTrainedModel",
    "nt_xent_loss",
]
