"""Count the operators that make the host wait for an accelerator.

On CUDA, an operator whose output shape or value the host must know before it can go on
(``.item()``, ``nonzero``, boolean-mask indexing, ``unique``, NMS, ...) blocks the Python
thread until every kernel queued before it has finished, so the GPU idles while Python
catches up. :class:`HostSyncCounter` counts such operators with a ``TorchDispatchMode``;
it works on the CPU too (the same operators run there), which is how the tests bound them.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["SYNC_OPS", "HostSyncCounter"]

# Operators whose result the host must read (aten names, with torchvision's NMS).
SYNC_OPS = frozenset({
    "aten::_local_scalar_dense",  # .item(), int(t), bool(t), float(t), .tolist()
    "aten::nonzero",  # also behind boolean-mask indexing and torch.where(cond)
    "aten::masked_select",
    "aten::_unique",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::repeat_interleave",  # with tensor repeats (the output size)
    "aten::bincount",  # its output size is the input's max
    "aten::histc",
    "aten::equal",
    "aten::is_nonzero",
    "torchvision::nms",  # keeps a data-dependent number of boxes
})


# Indexing operators that sync when an index is a boolean mask (its nonzero() is internal
# to the kernel on the CPU, so it is not dispatched on its own there).
_MASK_INDEXING = frozenset({"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"})


def _has_mask(indices) -> bool:
    return any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in (indices or ())
    )


class HostSyncCounter(TorchDispatchMode):
    """``with HostSyncCounter() as c: ...`` then ``c.total`` and ``c.counts`` (op name -> calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name in SYNC_OPS:
            self.counts[name] += 1
        elif name in _MASK_INDEXING and len(args) > 1 and _has_mask(args[1]):
            self.counts[f"{name} (boolean mask)"] += 1
        return func(*args, **(kwargs or {}))
