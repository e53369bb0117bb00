"""giga-ssl-hf: Giga-SSL slide-level self-supervised learning for whole-slide images, on Hugging Face.

Importing the package registers :class:`GigaSSLConfig` / :class:`GigaSSLModel` with ``AutoConfig`` /
``AutoModel``, and marks them for ``register_for_auto_class`` so that a saved folder carries the model code
(``auto_map``) and loads with ``trust_remote_code=True`` where this package is not installed.

The import itself stays light (the command line starts in well under a second): the registration runs
as soon as transformers' auto classes are imported, before or after this package, and the public
classes load on first access.
"""

from __future__ import annotations

import importlib
import importlib.abc
import os
import sys

# Idle OpenMP threads spin-wait by default; on a machine with other work (data-loader workers, other jobs)
# they burn the cores the busy threads need, and each of a step's hundreds of parallel ops waits for a
# descheduled thread (SimCLR step at 5 tiles beside another job: 2.6x slower; benchmarks/bench_ssl_step.py
# --contended). Passive waiting must be chosen before torch loads libgomp, which reads it once; an
# OMP_WAIT_POLICY already in the environment wins (ACTIVE restores spinning).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

# Public name -> module that defines it, imported on first access.
_LAZY_ATTRIBUTES = {
    "GigaSSLConfig": ".models.gigassl",
    "GigaSSLContrastiveOutput": ".models.gigassl",
    "GigaSSLForContrastivePretraining": ".models.gigassl",
    "GigaSSLForSlideClassification": ".models.gigassl",
    "GigaSSLSlideClassifierOutput": ".models.gigassl",
    "GigaSSLModel": ".models.gigassl",
    "GigaSSLModelOutput": ".models.gigassl",
    "GigaSSLPreTrainedModel": ".models.gigassl",
    "load_embeddings": ".contracts.slide_embeddings",
}
_CONFIGURATION_AUTO = "transformers.models.auto.configuration_auto"
_MODELING_AUTO = "transformers.models.auto.modeling_auto"


def _register() -> None:
    package = sys.modules.get(f"{__name__}.models.gigassl")
    if package is not None and not hasattr(package, "register_with_imported_auto_classes"):
        return  # the model package is importing (it imported transformers): it registers when it is done
    importlib.import_module(".models.gigassl", __name__).register_with_imported_auto_classes()


class _RegisterOnTransformersAuto(importlib.abc.MetaPathFinder):
    """Registers the GigaSSL classes right after one of transformers' auto-class modules is executed.

    A post-import hook rather than an import of transformers here: transformers and torch take seconds to
    import, and a user reaches ``AutoConfig`` / ``AutoModel`` only through these two modules.
    """

    def find_spec(self, fullname, path, target=None):
        if fullname not in (_CONFIGURATION_AUTO, _MODELING_AUTO):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register()

        spec.loader.exec_module = exec_then_register
        return spec


if _CONFIGURATION_AUTO in sys.modules or _MODELING_AUTO in sys.modules:
    _register()
if not any(type(finder).__name__ == _RegisterOnTransformersAuto.__name__ for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterOnTransformersAuto())


def __getattr__(name: str):
    if name in _LAZY_ATTRIBUTES:
        return getattr(importlib.import_module(_LAZY_ATTRIBUTES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY_ATTRIBUTES)
