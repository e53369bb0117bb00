"""The baselines of ``giga-ssl evaluate``, on the same slides, splits and table as the slide embeddings:
mean pooling of the tile features (under the same probe) and supervised MIL (:mod:`.mil`)."""

from __future__ import annotations

import dataclasses

from giga_ssl_hf.evaluation.mil_recipe import MILRecipe


def mean_pool_baseline(features: str, slide_ids=None) -> tuple:
    """The mean-pool baseline's ``(ids, L2-normalised mean tile features)``, shaped like slide embeddings; with
    ``slide_ids`` (the embeddings' slides) of those slides only, so that both are probed on the same slides."""
    import numpy as np

    from giga_ssl_hf.features.pooling import mean_pool_folder

    ids, means = mean_pool_folder(features)
    if slide_ids is not None:
        keep = np.isin(ids.astype(str), np.asarray(slide_ids).astype(str))
        ids, means = ids[keep], means[keep]
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    return ids, means / np.where(norms > 0, norms, 1.0)


def baseline_source(baseline: str, features: str, recipe: MILRecipe, slide_ids) -> tuple:
    """``(ids, vectors)`` of mean-pool, ``(ids, MIL model)`` of a MIL baseline, as the protocol takes them; of
    the embeddings' slides ``slide_ids`` only, so that all are evaluated on the same slides."""
    if baseline == "mean-pool":
        return mean_pool_baseline(features, slide_ids)
    from giga_ssl_hf.evaluation.mil import mil_baseline
    from giga_ssl_hf.runtime import resolve_device

    recipe = dataclasses.replace(recipe, device=resolve_device(recipe.device))
    return mil_baseline(baseline, features, recipe, slide_ids)


def check_baseline_slides(features: str, embedding_ids, labels: list[str]) -> None:
    """Before any work: every labelled slide that has an embedding must have tile features for the baseline,
    or the two would be probed on different slides (features of another cohort: on none)."""
    from giga_ssl_hf.contracts.extraction_folder import EXHAUSTIVE
    from giga_ssl_hf.contracts.tile_features import load_tile_dataset, resolve_tile_dataset_dir
    from giga_ssl_hf.evaluation.data import load_labels

    dataset = load_tile_dataset(resolve_tile_dataset_dir(features, EXHAUSTIVE))
    featured = {str(slide) for slide in dataset.data.column("slide_id").to_pylist()}
    embedded = {str(slide) for slide in embedding_ids}
    for table in labels:
        needed = embedded.intersection(load_labels(table).index.astype(str))
        missing = sorted(needed - featured)
        if missing:
            raise ValueError(
                f"--features {features} lacks {len(missing)} of the {len(needed)} slides of {table} that have an "
                f"embedding (e.g. {missing[0]!r}): give the tile features of the embedded slides for --baseline"
            )
