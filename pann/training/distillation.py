"""Knowledge distillation from the exact backbone into the network being fine-tuned for a PANN.

The teacher is the backbone with exact ReLUs (its logits); the student is the same network
trained against the polynomial's leakage. AutoFHE (Ao & Boddeti 2024) trains its polynomial
networks this way, with the loss of Hinton et al. (2015).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      temperature: float, weight: float) -> torch.Tensor:
    r"""Hinton's distillation loss, averaged over the batch.

    .. math::

        L = w\,T^2\,\mathrm{KL}\big(\mathrm{softmax}(t / T)\,\|\,\mathrm{softmax}(s / T)\big)
            + (1 - w)\,\mathrm{CE}(s, y)

    with ``s`` the student's and ``t`` the teacher's logits, ``T`` the ``temperature``, ``w`` the
    ``weight`` in ``[0, 1]`` and ``y`` the ``targets`` (class indices, or class probabilities as
    Mixup makes them). The ``T^2`` keeps the soft term's gradient on the scale of the hard one's.
    No gradient flows into the teacher's logits. ``weight=0`` is plain cross-entropy.
    """
    if not temperature > 0:
        raise ValueError(f"distillation temperature must be positive, got {temperature}")
    if not 0 <= weight <= 1:
        raise ValueError(f"distillation weight must lie in [0, 1], got {weight}")
    hard = F.cross_entropy(student_logits, targets)
    if weight == 0:
        return hard
    soft = F.kl_div(F.log_softmax(student_logits.float() / temperature, dim=1),
                    F.log_softmax(teacher_logits.detach().float() / temperature, dim=1),
                    reduction="batchmean", log_target=True)
    return weight * temperature**2 * soft + (1 - weight) * hard


class Teacher:
    """A frozen network in eval mode whose logits a training step asks for; counts the batches it answered."""

    def __init__(self, network: nn.Module):
        self.network = network.eval()
        for p in self.network.parameters():
            p.requires_grad_(False)
        self.batches = 0

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.batches += 1
        return self.network(x)
