"""Training checkpoints carry the config that wrote them: a run resumes only from its own.

:func:`read_checkpoint` refuses, in one line naming the file, a checkpoint that cannot be read, one that is not
a training checkpoint, and one written by another config (each changed field with both values), except in the
fields the caller lets change: population-based training continues a checkpoint at other polynomials
(:data:`APPROXIMATION_FIELDS`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that this training cannot resume from: unreadable, another model's, or written by
    another config."""


# Where a training run reads and runs, not what it computes: a checkpoint resumes under other values of these.
_PLACE_FIELDS = ("data_dir", "device")

# The polynomials a run trains with: a run may continue another's weights, optimizer and schedule at other ones.
APPROXIMATION_FIELDS = ("alpha", "layer_alphas")


def read_checkpoint(path: Path, device: torch.device, config: dict[str, Any],
                    may_change: tuple[str, ...] = ()) -> dict[str, Any]:
    """A training checkpoint's state, after checking that ``config`` (as a dict) is the one that wrote it, but for
    the fields in ``may_change``."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a corrupt or refused file
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: "
                              f"{(str(exc).strip().splitlines() or [''])[0]})") from None
    if not isinstance(state, dict) or not {"epoch", "model", "optimizer"} <= set(state):
        raise CheckpointError(f"checkpoint {path} is not a training checkpoint (pann train --checkpoint)")
    recorded = state.get("config")
    if recorded is None:
        logger.warning("checkpoint %s records no config (written by an older version): not compared", path)
        return state
    changed = [f"{k}: {recorded.get(k)!r} in the checkpoint, {config.get(k)!r} now"
               for k in sorted(set(recorded) | set(config)) if k not in _PLACE_FIELDS + may_change
               and _comparable(recorded.get(k)) != _comparable(config.get(k))]
    if changed:
        raise CheckpointError(f"checkpoint {path} was written by another training config ({'; '.join(changed)}); "
                              "resume with the config that wrote it, or start a new checkpoint")
    return state


def _comparable(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value
