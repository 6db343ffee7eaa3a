"""Count the host-device synchronisations of a piece of PyTorch code.

A sync is what ``torch.cuda.set_sync_debug_mode("warn")`` reports: the Python thread stops
until the device has run every kernel queued before, so the device idles while Python
catches up. In ATen that is ``c10::cuda::memcpy_and_sync``, a blocking copy between host
and device in either direction: behind ``.item()`` (``_local_scalar_dense``), ``.cpu()``,
``.to()`` without ``non_blocking=True`` and the operators that read a count back to size
their output (``nonzero``), and ``stream_synchronize``.

:class:`HostSyncCounter` counts, each call once under the name it is listed by:

* host reads of a device value: ``aten::_local_scalar_dense`` (``.item()``, ``bool(t)``,
  ``int(t)``, ``float(t)``), ``Tensor.tolist()``, ``Tensor.cpu()`` and other blocking copies
  to the host;
* blocking copies to the device: ``torch.tensor(data, device=...)``, ``.to(device)`` of
  host data (a ``non_blocking=True`` copy is not a sync);
* operators whose output shape depends on the data (``nonzero``, ``masked_select``,
  boolean-mask indexing, ``unique``, ``repeat_interleave`` without ``output_size``,
  ``bincount``) or whose kernel reads a device value back (``equal``, ``allclose``,
  torchvision's ``nms``).

Where tensors live. ``HostSyncCounter("cuda")`` goes by each tensor's device. On the CPU,
``HostSyncCounter()`` (the default, and how the tests count) lets the CPU stand in for the
device: every tensor counts as a device tensor except **host data**, the tensors made
inside the counter from Python or NumPy data or by a factory without a ``device``
argument (torch's default device is the CPU), until a ``.to()`` moves them. So on the CPU
a ``.tolist()`` of a computed tensor counts (on CUDA it copies to the host), a
``.tolist()`` of a host table does not, and ``.numpy()`` never does (a device tensor needs
a ``.cpu()`` first, which counts). Code that picks a kernel by device type takes its CPU
branch on the CPU: choose the CUDA kernels explicitly (``pooler="torchvision"``,
``nms="matrix"``) to count what CUDA would run. Limits of the CPU stand-in: a ``.to()`` of a
computed tensor counts as a no-op (its direction cannot be told), and tensors made before
the counter starts (e.g. targets given on the host) count as device tensors.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["SYNC_OPS", "HostSyncCounter"]

# Operators that read a device value on the host, or a count to size their output.
SYNC_OPS = frozenset({
    "aten::_local_scalar_dense",  # .item(), int(t), bool(t), float(t)
    "aten::nonzero",  # also behind torch.where(cond) and argwhere
    "aten::masked_select",
    "aten::_unique",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::unique_dim_consecutive",
    "aten::bincount",  # its output size is the input's max
    "aten::equal",
    "aten::allclose",
    "aten::mode",
    "torchvision::nms",  # copies its suppression mask to the host
})

# Indexing operators that sync when an index is a boolean mask (its nonzero() runs inside the
# kernel, not dispatched on its own).
_INDEX = frozenset({"aten::index"})
_INDEX_PUT = frozenset({"aten::index_put", "aten::index_put_", "aten::_index_put_impl_"})

# Functions that make a tensor from Python or NumPy data (a blocking copy when given a device).
_FROM_DATA = {torch.tensor, torch.as_tensor, torch.asarray}
# Moves between host and device (on the CPU stand-in they dispatch no operator).
_MOVES = {torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.to}
# Factories that make host data when called without a device.
_FACTORIES = {torch.from_numpy, torch.zeros, torch.ones, torch.empty, torch.full, torch.arange,
              torch.linspace, torch.eye, torch.rand, torch.randn, torch.randint, torch.randperm}


def _is_mask(index) -> bool:
    return isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)


def _leaves(x) -> list:
    """The items of nested lists and tuples (operator arguments and results)."""
    if isinstance(x, list | tuple):
        return [leaf for item in x for leaf in _leaves(item)]
    return [x]


def _bound(func, args, kwargs) -> dict:
    """An operator's arguments by schema name, defaults filled in."""
    out = {}
    for k, a in enumerate(func._schema.arguments):
        if k < len(args):
            out[a.name] = args[k]
        elif a.name in kwargs:
            out[a.name] = kwargs[a.name]
        elif a.has_default_value():
            out[a.name] = a.default_value
    return out


class HostSyncCounter:
    """``with HostSyncCounter() as c: ...`` then ``c.total`` and ``c.counts`` (name -> calls).

    Args:
        device: the device the code runs on; ``"cpu"`` lets the CPU stand in for one (see
            the module docstring).
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.counts: Counter[str] = Counter()
        self._host = WeakIdKeyDictionary()  # host data made inside the counter (CPU stand-in)
        self._quiet = 0  # > 0 while a call already counted at the Python level runs
        self._modes: tuple = ()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def stand_in(self) -> bool:
        """Whether the CPU stands in for the device."""
        return self.device.type == "cpu"

    def on_device(self, t: torch.Tensor) -> bool:
        """Whether ``t`` lives on the device (on the stand-in: is not host data)."""
        if self.stand_in:
            return t not in self._host
        return t.device.type != "cpu"

    def is_device(self, device: torch.device | str | int) -> bool:
        """Whether a tensor placed on ``device`` lives on the device (on the stand-in: always)."""
        return self.stand_in or torch.device(device).type != "cpu"

    def __enter__(self) -> HostSyncCounter:
        self._modes = (_PythonLevel(self), _OperatorLevel(self))
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    def _mark(self, t, host: bool) -> None:
        if isinstance(t, torch.Tensor) and self.stand_in:
            if host:
                self._host[t] = True
            else:
                self._host.pop(t, None)

    def _run_quietly(self, func, args, kwargs):
        self._quiet += 1
        try:
            return func(*args, **kwargs)
        finally:
            self._quiet -= 1


class _PythonLevel(TorchFunctionMode):
    """Tensors made from Python data and moves between host and device, seen as Python calls:
    on the CPU ``tolist`` or ``.to()`` dispatch no operator at all."""

    def __init__(self, counter: HostSyncCounter) -> None:
        super().__init__()
        self.c = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FROM_DATA or func is torch.Tensor.new_tensor:
            return self._from_data(func, args, kwargs)
        if func in _MOVES:
            return self._move(func, args, kwargs)
        out = func(*args, **kwargs)
        if func in _FACTORIES:
            self.c._mark(out, host=kwargs.get("device") is None)
        return out

    def _from_data(self, func, args, kwargs):
        c, new_tensor = self.c, func is torch.Tensor.new_tensor
        data = args[1] if new_tensor else (args[0] if args else kwargs.get("data", kwargs.get("obj")))
        if isinstance(data, torch.Tensor):  # a copy of a tensor: its operators say if it moves
            return func(*args, **kwargs)
        device = kwargs.get("device")
        if new_tensor and device is None:
            to_device = c.on_device(args[0])
        else:
            to_device = device is not None and c.is_device(device)
        if to_device:
            name = "Tensor.new_tensor" if new_tensor else f"torch.{func.__name__}"
            c.counts[f"{name} (host to device)"] += 1
        out = c._run_quietly(func, args, kwargs)
        c._mark(out, host=not to_device)
        return out

    def _move(self, func, args, kwargs):
        c, t = self.c, args[0]
        if func is torch.Tensor.to:
            device, _, non_blocking, _ = torch._C._nn._parse_to(*args[1:], **kwargs)
            if device is None:  # a dtype or layout change
                return func(*args, **kwargs)
            to_device = c.is_device(device)
        else:  # tolist, cpu: to the host
            to_device, non_blocking = False, False
        crossing = c.on_device(t) != to_device
        if crossing and not non_blocking:
            c.counts[f"Tensor.{func.__name__} ({'host to device' if to_device else 'device to host'})"] += 1
        out = c._run_quietly(func, args, kwargs)
        if crossing and (to_device or out is not t):  # on the CPU, .cpu() returns the tensor itself
            c._mark(out, host=not to_device)
        return out


class _OperatorLevel(TorchDispatchMode):
    """ATen operators: host reads, data-dependent shapes, blocking copies across devices."""

    def __init__(self, counter: HostSyncCounter) -> None:
        super().__init__()
        self.c = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        c, kwargs = self.c, kwargs or {}
        out = func(*args, **kwargs)
        name = func._schema.name
        if c._quiet:
            return out
        if name in ("aten::lift_fresh", "aten::lift_fresh_copy"):  # a Python scalar or torch.tensor's data
            c._mark(out, host=True)
            return out
        tensors = [t for t in _leaves([args, list(kwargs.values())]) if isinstance(t, torch.Tensor)]
        if c.stand_in and tensors and not any(c.on_device(t) for t in tensors):
            for t in _leaves(out):  # an operator on host data only: its results stay on the host
                c._mark(t, host=True)
        if name in SYNC_OPS:
            if any(c.on_device(t) for t in tensors):
                c.counts[name] += 1
        elif name == "aten::repeat_interleave":
            a = _bound(func, args, kwargs)
            repeats = a.get("repeats")
            if isinstance(repeats, torch.Tensor) and c.on_device(repeats) and a.get("output_size") is None:
                c.counts[name] += 1
        elif name in _INDEX or name in _INDEX_PUT:
            self._indexing(name, _bound(func, args, kwargs))
        elif name in ("aten::copy_", "aten::_to_copy"):
            self._copy(name, _bound(func, args, kwargs))
        return out

    def _indexing(self, name: str, a: dict) -> None:
        indices = [i for i in a["indices"] if i is not None]
        if not any(_is_mask(i) for i in indices) or not self.c.on_device(a["self"]):
            return
        value = a.get("values")
        if (name in _INDEX_PUT and not a.get("accumulate") and len(indices) == 1
                and value.numel() == 1 and not self.c.on_device(value)):
            return  # a host scalar through one mask: index_put_ runs masked_fill_
        self.c.counts[f"{name} (boolean mask)"] += 1

    def _copy(self, name: str, a: dict) -> None:
        if a.get("non_blocking"):
            return
        if name == "aten::copy_":
            src_on, dst_on = self.c.on_device(a["src"]), self.c.on_device(a["self"])
        elif self.c.stand_in or a.get("device") is None:
            return  # the CPU stand-in counts .to() at the Python level
        else:
            src_on, dst_on = self.c.on_device(a["self"]), torch.device(a["device"]).type != "cpu"
        if src_on != dst_on:
            self.c.counts[f"{name} ({'device to host' if src_on else 'host to device'})"] += 1
