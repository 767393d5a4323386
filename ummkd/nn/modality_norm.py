"""Modality-specific normalization: one set of norm statistics and affine parameters per modality.

The UMMKD network shares every convolution kernel between CT and MR and keeps only the
normalization layers modality-specific. This module provides the pieces to do that with any
PyTorch/MONAI network whose ``forward`` takes just a tensor:

* :class:`ModalitySwitch` holds one sub-module per modality name and forwards through the branch
  of the *active* modality. The active modality is an attribute (default ``None``), set for a whole
  network at once with :func:`use_modality`; a forward without a valid active modality raises
  :class:`ValueError` instead of silently using a stale branch.
* :class:`ModalityNorm` is a :class:`ModalitySwitch` whose branches are norm layers. It is a plain
  container, deliberately *not* a ``torch.nn.modules.batchnorm._BatchNorm`` subclass, so that
  ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` (Lightning's ``sync_batchnorm=True``) converts
  each inner layer and keeps the per-modality structure and state-dict keys.
* :func:`convert_to_modality_norm` performs model surgery on an existing network and
  :func:`expand_state_dict_to_modalities` converts a single-modality checkpoint.
* Importing :mod:`ummkd.nn` registers ``"modality"`` in MONAI's ``Norm`` factory, so that
  ``UNet(..., norm=("modality", {"modalities": ["ct", "mr"], "norm": "batch"}))`` works.

State-dict keys of a modality-specific layer look like ``<layer>.branches.<modality>.weight``.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from monai.networks.layers.factories import Norm
from monai.networks.layers.utils import get_norm_layer
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

__all__ = [
    "ModalityNorm",
    "ModalitySwitch",
    "NormSpec",
    "check_modalities",
    "convert_to_modality_norm",
    "expand_state_dict_to_modalities",
    "make_norm",
    "modality_names",
    "modality_norm_layers",
    "norm_spec",
    "register_monai_norm",
    "set_modality",
    "use_modality",
]

NormSpec = str | tuple[str, dict[str, Any]]
"""A MONAI norm specification: a factory name or ``(name, kwargs)``."""

_CONVERTIBLE_NORMS = (_BatchNorm, _InstanceNorm, nn.GroupNorm)


def check_modalities(modalities: Sequence[str]) -> tuple[str, ...]:
    """Validates modality names.

    Args:
        modalities: the names.

    Returns:
        The names as a tuple.

    Raises:
        TypeError: if ``modalities`` is a single string.
        ValueError: if it is empty, has duplicates, or a name is empty or contains ``"."``.
    """
    if isinstance(modalities, str):
        raise TypeError(f"modalities must be a sequence of names, not the string {modalities!r}")
    names = tuple(modalities)
    if not names:
        raise ValueError("modalities must name at least one modality")
    for name in names:
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"invalid modality name {name!r}: use a non-empty string without '.'")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate modality names in {names}")
    return names


class ModalitySwitch(nn.Module):
    """Routes the forward pass to the sub-module of the active modality.

    The active modality is the attribute :attr:`modality` (``None`` until selected). Select it for
    every switch in a network with :func:`use_modality` (or :func:`set_modality`). The same
    mechanism drives :class:`ModalityNorm` and the modality-specific streams of the multi-stream
    baselines, so the training loop is identical for all network variants.

    Args:
        branches: mapping from modality name to the sub-module used for that modality. Names must
            be non-empty and must not contain ``"."``.

    Raises:
        ValueError: if ``branches`` is empty or a name is invalid.
    """

    def __init__(self, branches: Mapping[str, nn.Module]) -> None:
        super().__init__()
        check_modalities(list(branches))
        self.branches = nn.ModuleDict(dict(branches))
        self.modality: str | None = None
        self.layer_name: str | None = None

    @property
    def modalities(self) -> tuple[str, ...]:
        """Names of the modalities this switch holds, in construction order."""
        return tuple(self.branches.keys())

    def describe(self) -> str:
        """Human-readable identification used in error messages.

        Returns:
            The qualified name in the model where known (recorded by :func:`use_modality`,
            :func:`set_modality` and :func:`convert_to_modality_norm`), else the class name, plus
            the valid modalities.
        """
        where = type(self).__name__
        if self.layer_name:
            where += f" {self.layer_name!r}"
        return f"{where} (modalities: {', '.join(self.modalities)})"

    def active_branch(self) -> nn.Module:
        """Returns the sub-module of the active modality.

        Raises:
            ValueError: if no modality is active or the active one is not held by this switch.
        """
        modality = self.modality
        if modality is None:
            raise ValueError(
                f"{self.describe()}: no active modality. Wrap the forward pass in "
                f"`with use_modality(model, name):` with name one of {list(self.modalities)}."
            )
        if modality not in self.branches:
            raise ValueError(
                f"{self.describe()}: unknown modality {modality!r}; "
                f"valid modalities are {list(self.modalities)}."
            )
        return self.branches[modality]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Forwards through the branch of the active modality.

        Args:
            *args: positional inputs of the branch.
            **kwargs: keyword inputs of the branch.

        Returns:
            The branch's output.

        Raises:
            ValueError: if no valid modality is active.
        """
        return self.active_branch()(*args, **kwargs)

    def extra_repr(self) -> str:
        """Shows the active modality in ``repr``."""
        return f"active={self.modality!r}"


def norm_spec(
    kind: Literal["batch", "instance", "group"],
    num_features: int,
    eps: float = 1e-3,
    momentum: float = 0.1,
) -> tuple[str, dict[str, Any]]:
    """MONAI norm specification used by the paper's networks.

    Defaults follow the released TensorFlow code: ``eps=1e-3`` and BN momentum 0.1 (TF decay 0.9).
    Instance norm is affine (so that per-modality affine parameters exist) without running
    statistics; group norm uses ``gcd(8, num_features)`` groups.

    Args:
        kind: ``"batch"``, ``"instance"`` or ``"group"``.
        num_features: number of channels of the layer (used for the group count).
        eps: numerical-stability constant of the norm.
        momentum: running-statistics momentum (batch norm only).

    Returns:
        ``(name, kwargs)`` accepted by :func:`make_norm` and MONAI's ``get_norm_layer``.

    Raises:
        ValueError: for an unknown ``kind``.
    """
    if kind == "batch":
        return ("batch", {"eps": eps, "momentum": momentum})
    if kind == "instance":
        return ("instance", {"eps": eps, "affine": True})
    if kind == "group":
        return ("group", {"eps": eps, "num_groups": math.gcd(8, num_features)})
    raise ValueError(f"unknown norm kind {kind!r}; expected 'batch', 'instance' or 'group'")


class ModalityNorm(ModalitySwitch):
    """One independent normalization layer per modality (running statistics and affine params).

    Usable directly, from MONAI's ``Norm`` factory (name ``"modality"``) and via
    :meth:`from_norm` / :func:`convert_to_modality_norm`.

    Example:
        >>> layer = ModalityNorm(16, modalities=("ct", "mr"), norm="batch", spatial_dims=2)
        >>> with use_modality(layer, "ct"):
        ...     y = layer(torch.randn(4, 16, 8, 8))

    Args:
        num_features: number of channels ``C`` of the ``(B, C, *spatial)`` input.
        modalities: modality names, one norm layer each.
        norm: the wrapped norm: a MONAI norm name (``"batch"``, ``"instance"``, ``"group"``, ...),
            a ``(name, kwargs)`` spec, or an existing norm layer used as a template (deep-copied
            per modality).
        spatial_dims: number of spatial dimensions (1, 2 or 3) for dimension-aware norms.
        **norm_kwargs: extra constructor arguments of the wrapped norm (merged into a spec's
            kwargs; not allowed with a template layer), e.g. ``eps``, ``momentum``,
            ``num_groups``.

    Raises:
        ValueError: for invalid modality names, a nested ``"modality"`` norm, kwargs given with a
            template layer, or a template whose channel count differs from ``num_features``.
    """

    def __init__(
        self,
        num_features: int,
        modalities: Sequence[str] = ("ct", "mr"),
        norm: NormSpec | nn.Module = "batch",
        spatial_dims: int = 2,
        **norm_kwargs: Any,
    ) -> None:
        names = check_modalities(modalities)
        if isinstance(norm, nn.Module):
            if norm_kwargs:
                raise ValueError("norm_kwargs cannot be combined with a template norm layer")
            template_features = getattr(norm, "num_features", getattr(norm, "num_channels", None))
            if template_features is not None and template_features != num_features:
                raise ValueError(
                    f"template {type(norm).__name__} has {template_features} channels, "
                    f"expected num_features={num_features}"
                )
            branches = {name: copy.deepcopy(norm) for name in names}
        else:
            norm_name, norm_args = (norm, {}) if isinstance(norm, str) else norm
            if not isinstance(norm_name, str) or norm_name.upper() == "MODALITY":
                raise ValueError(f"ModalityNorm cannot wrap the norm {norm_name!r}")
            spec = (norm_name, {**dict(norm_args), **norm_kwargs})
            branches = {
                name: get_norm_layer(spec, spatial_dims=spatial_dims, channels=num_features)
                for name in names
            }
        super().__init__(branches)
        self.num_features = num_features

    @classmethod
    def from_norm(cls, layer: nn.Module, modalities: Sequence[str]) -> ModalityNorm:
        """Builds a modality norm whose branches are deep copies of an existing norm layer.

        Weights, running statistics, ``requires_grad`` flags and the train/eval mode are copied.

        Args:
            layer: a norm layer (e.g. ``BatchNorm2d``, ``InstanceNorm3d``, ``GroupNorm``).
            modalities: modality names.

        Returns:
            The new :class:`ModalityNorm`.

        Raises:
            ValueError: if the layer's channel count cannot be determined.
        """
        features = getattr(layer, "num_features", getattr(layer, "num_channels", None))
        if not isinstance(features, int):
            raise ValueError(f"cannot determine the channel count of {type(layer).__name__}")
        new = cls(features, modalities, norm=layer)
        new.train(layer.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalizes ``x`` with the active modality's layer.

        Args:
            x: input of shape ``(B, C, *spatial)``.

        Returns:
            The normalized tensor.

        Raises:
            ValueError: if no valid modality is active.
        """
        return self.active_branch()(x)

    def extra_repr(self) -> str:
        """Shows the channel count and the active modality in ``repr``."""
        return f"{self.num_features}, active={self.modality!r}"


def make_norm(
    num_features: int,
    spatial_dims: int,
    norm: NormSpec,
    modalities: Sequence[str] | None = None,
) -> nn.Module:
    """Builds a shared norm layer, or a :class:`ModalityNorm` when ``modalities`` is given.

    Args:
        num_features: number of channels.
        spatial_dims: number of spatial dimensions.
        norm: MONAI norm name or ``(name, kwargs)`` spec.
        modalities: modality names for modality-specific norms; ``None`` for one shared norm.

    Returns:
        The norm layer.
    """
    if modalities is None:
        return get_norm_layer(norm, spatial_dims=spatial_dims, channels=num_features)
    return ModalityNorm(num_features, modalities, norm=norm, spatial_dims=spatial_dims)


def _named_switches(module: nn.Module) -> Iterator[tuple[str, ModalitySwitch]]:
    for name, sub in module.named_modules():
        if isinstance(sub, ModalitySwitch):
            yield name, sub


def modality_norm_layers(module: nn.Module) -> dict[str, ModalityNorm]:
    """All :class:`ModalityNorm` layers inside ``module``.

    Args:
        module: any network (the module itself is included if it is a modality norm).

    Returns:
        Mapping from qualified name (``""`` for ``module`` itself) to layer, in module order.
    """
    return {name: sub for name, sub in _named_switches(module) if isinstance(sub, ModalityNorm)}


def modality_names(module: nn.Module) -> tuple[str, ...]:
    """Modalities held by the :class:`ModalitySwitch` layers inside ``module``.

    Args:
        module: any network.

    Returns:
        The union of the switches' modality names, in first-seen order; ``()`` for a network
        without modality-specific layers (shared-norm baseline).
    """
    seen: dict[str, None] = {}
    for _, switch in _named_switches(module):
        seen.update(dict.fromkeys(switch.modalities))
    return tuple(seen)


def set_modality(module: nn.Module, name: str | None) -> None:
    """Sets the active modality of every :class:`ModalitySwitch` inside ``module``.

    Prefer :func:`use_modality`, which restores the previous selection. Also records each
    switch's qualified name for error messages.

    Args:
        module: any network; a network without switches is left unchanged.
        name: modality to activate, or ``None`` to deselect.

    Raises:
        TypeError: if ``name`` is neither a string nor ``None``.
    """
    if name is not None and not isinstance(name, str):
        raise TypeError(f"modality must be a string or None, got {type(name).__name__}")
    for qualified_name, switch in _named_switches(module):
        switch.modality = name
        switch.layer_name = qualified_name or switch.layer_name


@contextmanager
def use_modality(module: nn.Module, name: str) -> Iterator[nn.Module]:
    """Context manager activating modality ``name`` in every :class:`ModalitySwitch` of ``module``.

    The previous selection of each switch is restored on exit, also when an exception is raised,
    so calls nest. For a network without modality-specific layers (the shared-norm "joint"
    baseline) this is a no-op. Validation is lazy: a switch that does not hold ``name`` raises
    :class:`ValueError` when it is forwarded.

    Example:
        >>> with use_modality(net, "ct"):
        ...     logits_ct = net(image_ct)

    Args:
        module: any network.
        name: modality to activate.

    Yields:
        ``module``.

    Raises:
        TypeError: if ``name`` is not a string.
    """
    if not isinstance(name, str):
        raise TypeError(f"modality must be a string, got {type(name).__name__}")
    previous = [(switch, switch.modality) for _, switch in _named_switches(module)]
    set_modality(module, name)
    try:
        yield module
    finally:
        for switch, modality in previous:
            switch.modality = modality


def convert_to_modality_norm(module: nn.Module, modalities: Sequence[str]) -> nn.Module:
    """Replaces every BatchNorm, InstanceNorm and GroupNorm in ``module`` by a ModalityNorm.

    Each modality's copy starts from the original layer's state (affine parameters, running
    statistics, ``requires_grad``, train/eval mode). A norm instance reachable under several names
    is replaced by one shared :class:`ModalityNorm`. Existing :class:`ModalitySwitch` layers are
    left untouched. ``module`` is modified in place.

    Args:
        module: any network, or a single norm layer.
        modalities: modality names.

    Returns:
        ``module`` itself, or the replacement if ``module`` is itself a norm layer.
    """
    names = check_modalities(modalities)
    if isinstance(module, _CONVERTIBLE_NORMS):
        return ModalityNorm.from_norm(module, names)
    replaced: dict[int, ModalityNorm] = {}
    visited: set[int] = set()

    def convert(parent: nn.Module, prefix: str) -> None:
        # ``_modules`` rather than ``named_children()``: the latter skips repeated instances.
        for child_name, child in list(parent._modules.items()):
            qualified = f"{prefix}{child_name}"
            if isinstance(child, _CONVERTIBLE_NORMS):
                if id(child) not in replaced:
                    replaced[id(child)] = ModalityNorm.from_norm(child, names)
                    replaced[id(child)].layer_name = qualified
                setattr(parent, child_name, replaced[id(child)])
            elif (
                child is not None
                and not isinstance(child, ModalitySwitch)
                and id(child) not in visited
            ):
                visited.add(id(child))
                convert(child, f"{qualified}.")

    convert(module, "")
    return module


def expand_state_dict_to_modalities(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """Converts a single-modality (shared-norm) state dict for a model with modality switches.

    Every entry of a :class:`ModalitySwitch` branch (``<switch>.branches.<modality>.<rest>``) is
    filled from the shared entry ``<switch>.<rest>``, i.e. each norm's tensors are duplicated into
    every modality branch (cloned, so ``load_state_dict(..., assign=True)`` does not tie them).
    Other entries are copied as they are. The result loads with ``strict=True``; any mismatch
    raises here instead of being hidden by ``strict=False``.

    Args:
        state_dict: state dict of the same architecture with shared norms, e.g. a checkpoint of
            the "joint" baseline or of a single-modality model.
        model: the model with modality-specific layers that will load the result.

    Returns:
        A state dict with exactly the keys of ``model.state_dict()``.

    Raises:
        KeyError: if entries needed by ``model`` are missing from ``state_dict``, or
            ``state_dict`` has entries that ``model`` does not use.
        ValueError: if a tensor's shape differs from the model's.
    """
    switch_names = {name for name, _ in _named_switches(model)}
    target = model.state_dict()
    expanded: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    for key, reference in target.items():
        parts = key.split(".")
        # Drop the "branches.<modality>" segments after the name of any switch ("" = model itself).
        dropped = {
            j
            for i in range(-1, len(parts) - 2)
            if ".".join(parts[: i + 1]) in switch_names and parts[i + 1] == "branches"
            for j in (i + 1, i + 2)
        }
        source_key = ".".join(part for j, part in enumerate(parts) if j not in dropped)
        if source_key not in state_dict:
            missing.append(source_key)
            continue
        value = state_dict[source_key]
        if value.shape != reference.shape:
            raise ValueError(
                f"shape mismatch for {key!r} (from {source_key!r}): "
                f"{tuple(value.shape)} vs model {tuple(reference.shape)}"
            )
        expanded[key] = value.detach().clone()
        used.add(source_key)
    unexpected = sorted(set(state_dict) - used)
    if missing or unexpected:
        raise KeyError(
            "state dict does not match the model: "
            f"missing {sorted(set(missing))[:10]}, unexpected {unexpected[:10]}"
            + (" (first 10 shown)" if max(len(set(missing)), len(unexpected)) > 10 else "")
        )
    return expanded


def _modality_norm_factory(dim: int) -> Callable[..., ModalityNorm]:
    """MONAI ``Norm`` factory entry: :class:`ModalityNorm` for ``dim`` spatial dimensions."""
    return functools.partial(ModalityNorm, spatial_dims=dim)


def register_monai_norm() -> None:
    """Registers ``"modality"`` in MONAI's ``Norm`` factory (idempotent).

    Called on import of :mod:`ummkd.nn`. MONAI's ``get_norm_layer`` fills ``num_features`` from the
    channel count and passes the spatial dimensions to the factory, so
    ``norm=("modality", {"modalities": ["ct", "mr"], "norm": "batch"})`` works in MONAI networks
    for 1D, 2D and 3D.
    """
    if "MODALITY" not in Norm.components:
        Norm.add_factory_callable("modality", _modality_norm_factory)
