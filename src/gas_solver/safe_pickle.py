"""Reading network pickles without running anything from them.

Research checkpoints (EDM, R3GAN, StyleGAN-family code) are Python pickles of whole networks; a
plain ``pickle.load`` imports and runs whatever the file names. :class:`RestrictedUnpickler`
resolves only an allow-list: tensors are rebuilt from storages read by
``torch.load(weights_only=True)``, numpy scalars and plain containers pass, and every network
class a reader allows becomes a :class:`Captured` record (class name + ``__dict__``) whose class
never runs. Any other global (``os.system``, ``builtins.eval``, …) stops the load with a
:class:`~gas_solver.errors.ConfigError` naming it. The reader then rebuilds the network from this
package's own classes and loads :func:`captured_state_dict` into it.
"""

from __future__ import annotations

import _compat_pickle
import importlib
import io
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError, GasSolverError, MissingAssetError


# -- capture records --------------------------------------------------------------------------------
class Captured:
    """A pickled object kept as data: its class name and its state (``__dict__``). Nothing of its
    class runs; persistent EDM objects and torch containers both end up as one of these."""

    class_name: str = ""
    persistent: bool = False
    state: Any = MappingProxyType({})

    def __init__(self, class_name: str = "", state: Any = None, persistent: bool = False) -> None:
        self.class_name, self.persistent = class_name, persistent
        self.__setstate__(state)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        if state is not None and not isinstance(state, dict):
            raise ConfigError(f"{self.class_name}: expected a dict as state, got {type(state)}")
        self.state = dict(state or {})

    def __repr__(self) -> str:
        return f"Captured({self.class_name!r}, {len(self.state)} fields)"


def captured_class(qualname: str) -> type[Captured]:
    """A stand-in class for ``qualname``: unpickling an instance gives a :class:`Captured` record."""
    return type(qualname.rsplit(".", 1)[-1], (Captured,), {"class_name": qualname})


class _PlainDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access)."""

    def __setstate__(self, state: Any) -> None:
        if state:
            raise ConfigError("an EasyDict with instance attributes is not plain data")


# -- allowed globals --------------------------------------------------------------------------------
def capture_persistent(meta: Any) -> Captured:
    """Stand-in for ``torch_utils.persistence._reconstruct_persistent_obj``: keeps class name and
    state; ``meta["module_src"]`` is never executed, imported or stored."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise ConfigError("a persistent object without {'type': 'class', ...} metadata")
    name = meta.get("class_name")
    if not isinstance(name, str):
        raise ConfigError("a persistent object without a class_name")
    return Captured(name, meta.get("state"), persistent=True)


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """Stand-in for ``copyreg._reconstructor`` (how protocols 0 and 1 store objects), for captured
    classes (base ``object``) and EasyDicts (base ``dict``, the items as state) only."""
    if isinstance(cls, type) and issubclass(cls, Captured) and base is object:
        return cls.__new__(cls)
    if cls is _PlainDict and base is dict and isinstance(state, dict | None):
        return _PlainDict(state or {})
    raise ConfigError(f"refused copyreg._reconstructor({cls!r}, {base!r})")


def _latin1_bytes(text: Any, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``: how protocol-2 pickles store ``bytes``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ConfigError("refused _codecs.encode with anything but (str, 'latin1')")
    return text.encode("latin1")


def _load_storage(data: Any) -> Any:
    """Stand-in for ``torch.storage._load_from_bytes``: the storage bytes are a legacy
    ``torch.save`` stream, read with ``weights_only=True`` (torch's own restricted unpickler)."""
    if not isinstance(data, bytes | bytearray):
        raise ConfigError("a tensor storage that is not bytes")
    try:
        storage = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as err:
        raise ConfigError(f"a tensor storage is not a plain torch storage: {err}") from err
    if not isinstance(storage, torch.TypedStorage | torch.UntypedStorage):
        raise ConfigError(f"a tensor storage decoded to {type(storage).__name__}")
    return storage


def _ints(value: Any) -> bool:
    return isinstance(value, tuple | list) and all(isinstance(v, int) for v in value)


def _rebuild_tensor(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> Tensor:
    """Checked ``torch._utils._rebuild_tensor_v2``: a storage, integer geometry, no hooks."""
    if not isinstance(storage, torch.TypedStorage):
        raise ConfigError("a tensor whose storage is not a typed torch storage")
    if not (isinstance(offset, int) and _ints(size) and _ints(stride)):
        raise ConfigError("a tensor with non-integer offset, size or stride")
    if backward_hooks or (metadata is not None and not isinstance(metadata, dict)):
        raise ConfigError("a tensor with backward hooks or odd metadata")
    return torch._utils._rebuild_tensor_v2(
        storage, offset, tuple(size), tuple(stride), False, OrderedDict(), metadata
    )


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any, state: Any = None):
    """Checked ``torch._utils._rebuild_parameter[_with_state]``: the plain tensor is enough."""
    if not isinstance(data, Tensor) or backward_hooks:
        raise ConfigError("a parameter that is not a plain tensor")
    return data


def _numpy_global(name: str) -> Any:
    """``numpy._core.multiarray.<name>`` (numpy ≥ 2) or ``numpy.core.multiarray.<name>``."""
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ConfigError(f"numpy has no multiarray.{name}")


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise ConfigError("refused a numpy scalar that is not a plain number")
    return _numpy_global("scalar")(dtype, data)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): OrderedDict,
        ("builtins", "dict"): dict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): bytearray,
        ("builtins", "object"): object,
        ("copyreg", "_reconstructor"): _reconstructor,
        ("_codecs", "encode"): _latin1_bytes,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): _load_storage,
        ("torch", "device"): torch.device,
        ("dnnlib.util", "EasyDict"): _PlainDict,
        ("dnnlib", "EasyDict"): _PlainDict,
        ("numpy", "dtype"): np.dtype,
    }
    for name in dir(torch):
        if isinstance(getattr(torch, name, None), torch.dtype):
            allowed[("torch", name)] = getattr(torch, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "scalar")] = _numpy_scalar
    for container in ("ModuleDict", "ModuleList", "Sequential", "ParameterDict", "ParameterList"):
        qualname = f"torch.nn.modules.container.{container}"
        allowed[("torch.nn.modules.container", container)] = captured_class(qualname)
    allowed[("torch.nn.modules.module", "Module")] = captured_class(
        "torch.nn.modules.module.Module"
    )
    return allowed


PLAIN_GLOBALS: dict[tuple[str, str], Any] = _allowed_globals()
"""(module, name) → what the restricted unpickler gives for it: tensors, dtypes, plain containers
and torch container modules (as records). A reader adds the classes of its own networks."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`PLAIN_GLOBALS` and ``extra``; see the module
    docstring.

    Args:
        file: a binary file object.
        source: the file's name for error messages.
        extra: more allowed ``(module, name) → stand-in`` entries (a reader's network classes).
        kind: what the file should be, for error messages (e.g. ``"EDM network pickle"``).
    """

    def __init__(
        self,
        file: Any,
        source: str = "the pickle",
        extra: Mapping[tuple[str, str], Any] | None = None,
        kind: str = "network pickle",
    ) -> None:
        super().__init__(file)
        self.source, self.kind = source, kind
        self.allowed = {**PLAIN_GLOBALS, **(extra or {})}

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key not in self.allowed:  # names as Python 2 wrote them (protocols 0-2)
            key = _compat_pickle.NAME_MAPPING.get(key) or (
                _compat_pickle.IMPORT_MAPPING.get(module, module),
                name,
            )
        if key not in self.allowed:
            raise ConfigError(
                f"{self.source}: refused to load the global {module}.{name}: only the networks of "
                f"a {self.kind}, tensors and plain data are read from it, and no code is run"
            )
        return self.allowed[key]

    def persistent_load(self, pid: Any) -> Any:
        raise ConfigError(
            f"{self.source}: a persistent id ({pid!r:.40}) in a plain pickle; "
            f"torch.save archives are not a {self.kind}"
        )


def read_pickle(
    path: str | Path,
    *,
    extra: Mapping[tuple[str, str], Any] | None = None,
    kind: str = "network pickle",
    missing: str = "",
) -> Any:
    """The contents of a network pickle, its networks as :class:`Captured` records.

    Raises:
        MissingAssetError: no file at ``path`` (``missing`` says where to get one).
        ConfigError: a refused global, or a damaged or foreign file; one line, naming the path.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingAssetError(f"{path} not found: {missing}".rstrip(": "))
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f, str(path), extra, kind).load()
        except GasSolverError:
            raise
        except Exception as err:  # a damaged or foreign file: say so in one line
            raise ConfigError(
                f"{path}: not a readable {kind} ({type(err).__name__}: {err})"
            ) from err


def captured_state_dict(record: Captured, prefix: str = "") -> dict[str, Tensor]:
    """The state dict of a captured module tree: parameters, persistent buffers, then children,
    in ``nn.Module.state_dict`` order and naming."""
    state = record.state
    tensors: dict[str, Tensor] = {}
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(value, Tensor):
                raise ConfigError(f"{prefix}{name}: a {type(value).__name__}, not a tensor")
            tensors[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, Captured):
            raise ConfigError(f"{prefix}{name}: a {type(child).__name__}, not a module")
        tensors.update(captured_state_dict(child, f"{prefix}{name}."))
    return tensors
