"""Whether an extraction may use an output folder with its settings: the settings that determine the features
are recorded once per folder (``OUT/extract_config.json``), and every run, and every process of a run, must
use them, or discard the folder's slides with ``--overwrite``, or (with a live run using them) go elsewhere."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from giga_ssl_hf.contracts.extraction_folder import CONFIG_FILENAME
from giga_ssl_hf.features.extraction_settings import ExtractionConfig

if TYPE_CHECKING:
    from giga_ssl_hf.features.sharding import SlideLocks
    from giga_ssl_hf.features.store import PartStore

logger = logging.getLogger(__name__)


def changed_settings(out_dir: Path, config: ExtractionConfig) -> str:
    """The settings of ``config`` that differ from those recorded in ``out_dir`` ('' when none or no record)."""
    path = out_dir / CONFIG_FILENAME
    if not path.exists():
        return ""
    # A setting added since the folder was made compares as its default (None): not a change.
    existing = json.loads(path.read_text())
    wanted = dataclasses.asdict(config)
    changed = sorted(k for k in set(existing) | set(wanted) if existing.get(k) != wanted.get(k))
    return ", ".join(f"{k}: {existing.get(k)!r} there, {wanted.get(k)!r} now" for k in changed)


def settings_change(out_dir: Path, config: ExtractionConfig, store: PartStore, overwrite: bool) -> bool:
    """Whether ``out_dir``'s committed slides must be discarded because the settings changed.

    Raises when they differ from the settings of finished slides and ``overwrite`` is not set. A folder where
    no slide finished (a first run that failed early) takes the new settings.
    """
    changed = changed_settings(out_dir, config)
    if not changed:
        return False
    finished = [r for r in store.records() if r["status"] in ("ok", "empty")]
    if finished and not overwrite:
        raise ValueError(
            f"{out_dir} holds {len(finished)} slide(s) extracted with other settings ({changed}); "
            "use another --out, or --overwrite to discard them"
        )
    if finished:
        logger.warning("settings changed (%s): discarding every committed slide of %s", changed, out_dir)
    return True


def settings_key(config: ExtractionConfig) -> str:
    """A short fingerprint of ``config``, carried by a live run's lock (a short lock needs no data block, so that
    a full disk cannot stop a run before its first slide)."""
    return hashlib.sha256(json.dumps(dataclasses.asdict(config), sort_keys=True).encode()).hexdigest()[:16]


def claim_settings(
    out_dir: Path, config: ExtractionConfig, store: PartStore, overwrite: bool, locks: SlideLocks
) -> bool:
    """:func:`settings_change`, and a refusal of settings other than a live run's; then hold this process's run
    lock, which carries the settings' fingerprint, so that the runs started later compare with them. Called
    under the setup lock and before the encoder is built, so that a refused run fails fast and light."""
    key = settings_key(config)
    for owner in locks.other_live_runs():
        if owner.get("settings") != key:
            detail = changed_settings(out_dir, config)  # the live run may not have recorded them yet
            raise ValueError(
                f"{out_dir} is being extracted by another run (pid {owner.get('pid')} on {owner.get('host')}) "
                f"with other settings{f' ({detail})' if detail else ''}; use another --out, or wait for that "
                "run to end"
            )
    discard = settings_change(out_dir, config, store, overwrite)
    locks.hold_run(key)
    return discard
