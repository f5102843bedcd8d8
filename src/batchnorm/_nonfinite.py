"""What a training step's update does with a batch whose moments are not finite.

One NaN or Inf in a training batch (or an infinite batch weight, or values whose squares
overflow) makes that batch's mean or variance non-finite, and TensorFlow's update then writes
it into the moving statistics for good: every later inference output is NaN. The policy
(``nonfinite=`` of the layer and the functional) decides instead:

- ``"skip"`` (the default): the update gives every statistic as it was (``local_step``
  included) and adds one to ``skipped_updates`` where the state has that counter;
- ``"propagate"``: TensorFlow's behaviour, the update as it comes;
- ``"raise"``: :class:`batchnorm.NonFiniteBatchError`, the statistics unchanged.

The output of that call is the batch's own (NaN where the batch normalises with NaN
moments): only the moving statistics are protected. Eager CPU calls read the one verdict on
the host, where that costs no synchronization, and skip the update's ops; elsewhere (other
devices, ``torch.compile``, ``torch.func``) a tensor-side select keeps the old values, so no
step waits for the device. ``"raise"`` must read the verdict on the host everywhere (a graph
break under ``torch.compile``). Under synchronization every process sees the same merged
moments, so all make the same decision.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from batchnorm._errors import NonFiniteBatchError, check
from batchnorm._types import Moments

__all__ = ["NONFINITE_POLICIES", "SKIPPED_UPDATES", "all_finite", "check_nonfinite", "guarded"]

NONFINITE_POLICIES = ("skip", "propagate", "raise")

# The state entry that counts skipped updates (a 0-d int64 tensor), where the state has one.
SKIPPED_UPDATES = "skipped_updates"


def check_nonfinite(policy: object) -> str:
    """``policy`` if it is one of :data:`NONFINITE_POLICIES`, else a BatchNormError.

    Example:
        >>> check_nonfinite("skip")
        'skip'
    """
    check(policy in NONFINITE_POLICIES, "nonfinite", policy, "'skip', 'propagate' or 'raise'")
    return policy  # type: ignore[return-value]


def all_finite(first: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
    """Whether every entry of the (equally shaped) tensors is finite, as a 0-d bool tensor.

    ``first + 0 * other`` is NaN wherever ``other`` is not finite and ``first`` elsewhere, and
    its largest magnitude is finite exactly when every entry is (the maximum propagates NaN):
    three small ops, where ``torch.isfinite`` and ``all`` take six per tensor on the CPU.

    Example:
        >>> bool(all_finite(torch.tensor([1.0, 3e38]))), bool(all_finite(torch.tensor([-1e39])))
        (True, False)
    """
    probe = first
    for other in others:
        probe = torch.add(probe, other, alpha=0)  # probe + 0 * other
    if probe.numel() == 0:  # (the maximum of nothing is undefined; nothing is non-finite)
        return torch.ones((), dtype=torch.bool, device=probe.device)
    return torch.linalg.vector_norm(probe, float("inf")) < float("inf")


def guarded(
    new: dict[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    batch: Moments,
    policy: str,
) -> dict[str, torch.Tensor]:
    """``new`` (the statistics after an update on ``batch``), as ``policy`` allows.

    Example:
        >>> state = {"moving_mean": torch.zeros(1), "skipped_updates": torch.tensor(0)}
        >>> nan = Moments(torch.tensor(2.0), torch.tensor([float("nan")]), torch.ones(1))
        >>> kept = guarded({"moving_mean": torch.tensor([float("nan")])}, state, nan, "skip")
        >>> kept["moving_mean"].tolist(), int(kept["skipped_updates"])
        ([0.0], 1)
    """
    if policy == "propagate":
        return new
    finite = all_finite(batch.mean, batch.var)
    if policy == "raise" or _readable_on_host(finite):
        if bool(finite):
            return new
        if policy == "raise":
            raise NonFiniteBatchError(
                "the training batch's moments are not finite (NaN or Inf in the batch, an "
                "infinite weight, or squares beyond the dtype's range); nonfinite='raise' "
                "refuses the update and the moving statistics are unchanged"
            )
        kept = {name: state[name] for name in new}  # the statistics as they were given
        counter = state.get(SKIPPED_UPDATES)
        if counter is not None:
            kept[SKIPPED_UPDATES] = counter + 1
        return kept
    kept = {name: torch.where(finite, value, state[name]) for name, value in new.items()}
    counter = state.get(SKIPPED_UPDATES)
    if counter is not None:
        kept[SKIPPED_UPDATES] = counter + finite.logical_not().to(counter.dtype)
    return kept


def _readable_on_host(verdict: torch.Tensor) -> bool:
    """Whether reading ``verdict`` costs no synchronization and breaks no trace."""
    return (
        verdict.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and not torch._C._are_functorch_transforms_active()
    )
