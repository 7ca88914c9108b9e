"""Layer vocabulary shared by the flax model (`LayerStack`) and the manual backprop engine.

A network is a tuple of frozen layer specs applied in order to an input with a leading batch
axis ([n, d] for dense stacks, [n, h, w, c] NHWC for convolutional ones):

    Dense(f):            y = x W + b,                  W [d, f], b [f] (acts on the last axis)
    Conv(f, k, s, pad):  y = x ⋆ W + b,                W [kh, kw, c, f] (HWIO), cross-correlation
    MaxPool(k, s, pad):  y[i, j] = max over the window at (i·s, j·s) (padding counts as -inf)
    AvgPool(k, s, pad):  y[i, j] = (1 / (kh·kw)) Σ window (padding counts as 0, and is counted)
    Flatten():           [n, ...] -> [n, prod(...)] (row-major, as jnp.reshape)
    Activation(name):    relu, sigmoid, tanh or identity, elementwise
    Dropout(rate):       train: y = x · keep / (1 - rate), keep ~ Bernoulli(1 - rate); eval: y = x
    BatchNorm(m, eps):   train: y = γ (x - μ_B) / sqrt(σ²_B + eps) + β over all axes but the last;
                         running stats updated as r ← m·r + (1 - m)·batch stat; eval uses r.

Padding follows `lax`: "VALID" keeps only full windows, out = ceil((n - k + 1) / s);
"SAME" gives out = ceil(n / s) and pads (total // 2) before, the rest after.

One rule per layer type: :data:`RULES` maps each spec class to its :class:`LayerRule`, the
single record of the layer's parameter shapes, its flax forward (inside `LayerStack`), its
manual forward and its manual backward (in the spirit of optax's
``GradientTransformation(init, update)``). `LayerStack` and the engine in
:mod:`mljax.nn.backprop` look a layer up once with :func:`rule_of` and never dispatch on
its type themselves. The array formulas live in :mod:`mljax.nn.kernels`.

`LayerStack(layers)` is the flax.linen module. Each parametrised layer i (Dense, Conv,
BatchNorm) is the submodule named ``layer_{i}`` with i the index in the tuple, so
``variables["params"][f"layer_{i}"]`` holds ``kernel``/``bias`` (Dense, Conv) or
``scale``/``bias`` (BatchNorm) and ``variables["batch_stats"][f"layer_{i}"]`` holds
``mean``/``var``. Its Conv and MaxPool differentiate through the custom VJPs
:func:`mljax.nn.kernels.conv` and :func:`mljax.nn.kernels.max_pool` (no forward mode: use
``kernels.conv_lax`` / ``kernels.max_pool_lax`` with ``jax.jvp``).

Dropout masks: `dropout_masks(key, layers, input_shape)` is the one pure function that draws
them, as a tuple aligned with ``layers`` (boolean keep-mask of the layer's input shape for each
Dropout with rate > 0, None elsewhere). `LayerStack` takes ``masks=`` explicitly; in train mode
without explicit masks it calls `dropout_masks` with ``self.make_rng("dropout")``. To get the
same masks in `jax.grad` of the flax model and in the manual engine, draw them once and pass the
same tuple to both.

Traced dropout rate: ``dropout_masks``, ``LayerStack`` and the manual engine take an optional
``dropout_rate`` (a scalar, possibly traced). When given, every Dropout layer uses it instead of
its spec's static rate, so a sweep can vmap over dropout rates; rate 0 keeps every unit
(keep ~ Bernoulli(1)) and divides by 1, i.e. no dropout.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mljax.nn import kernels
from mljax.nn.kernels import ACTIVATIONS
from mljax.validation import check_positive_int, check_scalar

__all__ = [
    "ACTIVATIONS",
    "LAYER_TYPES",
    "PADDINGS",
    "RULES",
    "Activation",
    "AvgPool",
    "BatchNorm",
    "Conv",
    "Dense",
    "Dropout",
    "Flatten",
    "Layer",
    "LayerRule",
    "LayerStack",
    "MaxPool",
    "Step",
    "check_masks",
    "dropout_masks",
    "is_active_dropout",
    "layer_name",
    "layer_shapes",
    "param_shapes",
    "rule_of",
    "validate_layers",
]

PADDINGS = ("SAME", "VALID")


def _pair(value, name: str) -> tuple[int, int]:
    """Validate a 2-tuple of positive ints (an int is broadcast to both axes)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        pair = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if len(pair) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair
    ):
        raise ValueError(f"{name} must be a pair of positive ints, got {value!r}")
    return pair  # type: ignore[return-value]


def _padding(value) -> str:
    if not isinstance(value, str) or value.upper() not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {value!r}")
    return value.upper()


def _out_len(n: int, k: int, s: int, padding: str) -> int:
    if padding == "SAME":
        return -(-n // s)
    return -(-(n - k + 1) // s) if n >= k else 0


def _check_rank(shape, rank: int, kind: str) -> None:
    if len(shape) != rank:
        raise ValueError(f"{kind} needs a rank-{rank} input (NHWC), got shape {tuple(shape)}")


@dataclasses.dataclass(frozen=True)
class Dense:
    """Fully connected layer on the last axis: y = x W + b.

    Attributes:
        features: Output width f (W is [d, f]).
        use_bias: Whether to add b [f].
        kernel_init: Optional flax initializer for W (default: flax's lecun_normal).
    """

    features: int
    use_bias: bool = True
    kernel_init: Callable | None = None

    def __post_init__(self):
        check_positive_int(self.features, "Dense.features")

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (*shape[:-1], self.features)


@dataclasses.dataclass(frozen=True)
class Conv:
    """2-D convolution (cross-correlation) on NHWC inputs with an HWIO kernel, as flax.

    Attributes:
        features: Output channels f (W is [kh, kw, c, f]).
        kernel_size: (kh, kw).
        strides: (sh, sw).
        padding: "SAME" or "VALID" (lax semantics).
        use_bias: Whether to add b [f].
        kernel_init: Optional flax initializer for W (default: flax's lecun_normal).
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    padding: str = "SAME"
    use_bias: bool = True
    kernel_init: Callable | None = None

    def __post_init__(self):
        check_positive_int(self.features, "Conv.features")
        object.__setattr__(self, "kernel_size", _pair(self.kernel_size, "Conv.kernel_size"))
        object.__setattr__(self, "strides", _pair(self.strides, "Conv.strides"))
        object.__setattr__(self, "padding", _padding(self.padding))

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        _check_rank(shape, 4, "Conv")
        n, h, w, _ = shape
        (kh, kw), (sh, sw) = self.kernel_size, self.strides
        return (
            n,
            _out_len(h, kh, sh, self.padding),
            _out_len(w, kw, sw, self.padding),
            self.features,
        )


@dataclasses.dataclass(frozen=True)
class _Pool:
    window: tuple[int, int] = (2, 2)
    strides: tuple[int, int] | None = None
    padding: str = "VALID"

    def __post_init__(self):
        kind = type(self).__name__
        object.__setattr__(self, "window", _pair(self.window, f"{kind}.window"))
        strides = self.window if self.strides is None else self.strides
        object.__setattr__(self, "strides", _pair(strides, f"{kind}.strides"))
        object.__setattr__(self, "padding", _padding(self.padding))

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        _check_rank(shape, 4, type(self).__name__)
        n, h, w, c = shape
        (kh, kw), (sh, sw) = self.window, self.strides
        return (n, _out_len(h, kh, sh, self.padding), _out_len(w, kw, sw, self.padding), c)


@dataclasses.dataclass(frozen=True)
class MaxPool(_Pool):
    """Max pooling over (h, w) windows of an NHWC input; strides default to the window."""


@dataclasses.dataclass(frozen=True)
class AvgPool(_Pool):
    """Average pooling over (h, w) windows; SAME padding counts padded zeros (flax default)."""


@dataclasses.dataclass(frozen=True)
class Flatten:
    """Reshape [n, ...] to [n, prod(...)] in row-major order."""

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (shape[0], math.prod(shape[1:]))


@dataclasses.dataclass(frozen=True)
class Activation:
    """Elementwise nonlinearity; name in ("relu", "sigmoid", "tanh", "identity")."""

    name: str

    def __post_init__(self):
        if self.name not in ACTIVATIONS:
            raise ValueError(f"Activation.name must be one of {ACTIVATIONS}, got {self.name!r}")

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)


@dataclasses.dataclass(frozen=True)
class Dropout:
    """Inverted dropout: in training y = x · keep / (1 - rate), identity in evaluation."""

    rate: float

    def __post_init__(self):
        if isinstance(self.rate, bool) or not isinstance(self.rate, int | float):
            raise ValueError(f"Dropout.rate must be a float in [0, 1), got {self.rate!r}")
        check_scalar(self.rate, "Dropout.rate", minimum=0.0, maximum=1.0, strict_maximum=True)

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)


@dataclasses.dataclass(frozen=True)
class BatchNorm:
    """Batch normalisation over all axes but the last (features), with scale γ and bias β.

    Attributes:
        momentum: Running-average factor m in r ← m·r + (1 - m)·batch statistic, in [0, 1).
        epsilon: Added to the variance, > 0.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5

    def __post_init__(self):
        check_scalar(
            self.momentum, "BatchNorm.momentum", minimum=0.0, maximum=1.0, strict_maximum=True
        )
        check_scalar(self.epsilon, "BatchNorm.epsilon", minimum=0.0, strict_minimum=True)

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)


Layer = Dense | Conv | MaxPool | AvgPool | Flatten | Activation | Dropout | BatchNorm


# ----------------------------------------------------------------------------- rules


class Step(NamedTuple):
    """What one layer's forward / backward needs besides its spec, parameters and input.

    Attributes:
        train: Training mode (dropout active, BatchNorm on batch statistics).
        mask: This layer's dropout keep-mask (see :func:`dropout_masks`), else None.
        dropout_rate: Optional (traced) rate replacing a Dropout's static rate.
        stats: This layer's BatchNorm running ``{"mean", "var"}``, else None.
    """

    train: bool = False
    mask: Any = None
    dropout_rate: Any = None
    stats: Any = None


class LayerRule(NamedTuple):
    """Everything one layer type does, in one record (looked up by :func:`rule_of`).

    Attributes:
        params: ``(layer, in_shape) -> {leaf: shape}``, the trainable parameters ({} if none).
        module: ``(layer, x, step, name, param_dtype) -> y``, the forward inside
            ``LayerStack.__call__`` (declares flax parameters under ``name``).
        forward: ``(layer, params, x, step) -> (y, cache, new_stats)``, the manual engine's
            forward from a parameter dict (None for parameter-free layers); ``cache`` is what
            ``backward`` needs besides the input and output, ``new_stats`` the updated
            BatchNorm statistics (else ``step.stats``).
        backward: ``(layer, params, x, y, cache, g, step, need_dx) -> (grads, dx)``, the
            manual rule: parameter gradients as a dict like ``params`` ({} if none) and
            dLoss/dx (may be None when ``need_dx`` is False).
    """

    params: Callable
    module: Callable
    forward: Callable
    backward: Callable


def _no_params(layer, in_shape) -> dict:
    return {}


def _parameter_free_module(layer, x, step, name, param_dtype):
    return rule_of(layer).forward(layer, None, x, step)[0]


def _stateless(fn):
    """A parameter-free forward ``(layer, x, step) -> y`` as a rule's ``forward``."""

    def forward(layer, params, x, step):
        return fn(layer, x, step), None, step.stats

    return forward


def _kernel_and_bias(layer, kernel_shape: tuple) -> dict:
    shapes = {"kernel": kernel_shape}
    if layer.use_bias:
        shapes["bias"] = (layer.features,)
    return shapes


def _with_bias(grads: dict, layer, db) -> dict:
    return {**grads, "bias": db} if layer.use_bias else grads


# Dense -----------------------------------------------------------------------


def _dense_module(layer, x, step, name, param_dtype):
    kwargs = {} if layer.kernel_init is None else {"kernel_init": layer.kernel_init}
    return nn.Dense(
        layer.features, use_bias=layer.use_bias, param_dtype=param_dtype, name=name, **kwargs
    )(x)


def _dense_backward(layer, params, x, y, cache, g, step, need_dx):
    dw, db, dx = kernels.dense_backward(x, params["kernel"], g, need_dx)
    return _with_bias({"kernel": dw}, layer, db), dx


_DENSE = LayerRule(
    params=lambda layer, s: _kernel_and_bias(layer, (s[-1], layer.features)),
    module=_dense_module,
    forward=lambda layer, p, x, step: (
        kernels.dense(x, p["kernel"], p.get("bias")),
        None,
        step.stats,
    ),
    backward=_dense_backward,
)


# Conv ------------------------------------------------------------------------


class _ConvModule(nn.Module):
    """flax module for :class:`Conv` using :func:`mljax.nn.kernels.conv`.

    ``kernel`` [kh, kw, c, f] (lecun_normal by default) and ``bias`` [f] (zeros): the same
    names, shapes and initial values as ``nn.Conv``, so trees and seeds carry over.
    """

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int]
    padding: str
    use_bias: bool
    param_dtype: Any
    kernel_init: Callable | None

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        init = self.kernel_init or nn.initializers.lecun_normal()
        kernel = self.param("kernel", init, (kh, kw, x.shape[-1], self.features), self.param_dtype)
        dtype = jnp.result_type(x.dtype, kernel.dtype)
        y = kernels.conv(x.astype(dtype), kernel.astype(dtype), tuple(self.strides), self.padding)
        if self.use_bias:
            bias = self.param(
                "bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype
            )
            y = y + bias.astype(dtype)
        return y


def _conv_module(layer, x, step, name, param_dtype):
    _check_rank(x.shape, 4, "Conv")
    return _ConvModule(
        layer.features,
        kernel_size=layer.kernel_size,
        strides=layer.strides,
        padding=layer.padding,
        use_bias=layer.use_bias,
        param_dtype=param_dtype,
        kernel_init=layer.kernel_init,
        name=name,
    )(x)


def _conv_forward(layer, params, x, step):
    y = kernels.conv(x, params["kernel"], tuple(layer.strides), layer.padding)
    bias = params.get("bias")
    return (y if bias is None else y + bias), None, step.stats


def _conv_backward(layer, params, x, y, cache, g, step, need_dx):
    geometry = (layer.strides, layer.padding)
    dw = kernels.conv_kernel_grad(x, g, layer.kernel_size, *geometry)
    grads = _with_bias({"kernel": dw}, layer, jnp.sum(g, axis=(0, 1, 2)))
    dx = kernels.conv_input_grad(g, params["kernel"], *geometry, x.shape[1:3]) if need_dx else None
    return grads, dx


_CONV = LayerRule(
    params=lambda layer, s: _kernel_and_bias(layer, (*layer.kernel_size, s[-1], layer.features)),
    module=_conv_module,
    forward=_conv_forward,
    backward=_conv_backward,
)


# Pooling, flatten, activation, dropout ---------------------------------------


def _pool(fn, kind):
    def forward(layer, x, step):
        _check_rank(x.shape, 4, kind)
        return fn(x, layer.window, layer.strides, layer.padding)

    return forward


_MAX_POOL = LayerRule(
    params=_no_params,
    module=_parameter_free_module,
    forward=_stateless(_pool(kernels.max_pool, "MaxPool")),
    backward=lambda layer, p, x, y, cache, g, step, need_dx: (
        {},
        kernels.max_pool_backward(x, g, layer.window, layer.strides, layer.padding),
    ),
)

_AVG_POOL = LayerRule(
    params=_no_params,
    module=_parameter_free_module,
    forward=_stateless(_pool(kernels.avg_pool, "AvgPool")),
    backward=lambda layer, p, x, y, cache, g, step, need_dx: (
        {},
        kernels.avg_pool_backward(g, layer.window, layer.strides, layer.padding, x.shape),
    ),
)

_FLATTEN = LayerRule(
    params=_no_params,
    module=_parameter_free_module,
    forward=_stateless(lambda layer, x, step: x.reshape(x.shape[0], -1)),
    backward=lambda layer, p, x, y, cache, g, step, need_dx: ({}, g.reshape(x.shape)),
)

_ACTIVATION = LayerRule(
    params=_no_params,
    module=_parameter_free_module,
    forward=_stateless(lambda layer, x, step: kernels.activation(layer.name)(x)),
    backward=lambda layer, p, x, y, cache, g, step, need_dx: (
        {},
        kernels.activation_backward(layer.name, y, g),
    ),
)


def _dropout_rate_in_use(layer, step):
    """The rate this Dropout applies in this step, or None when it is the identity."""
    if not (step.train and is_active_dropout(layer, step.dropout_rate)):
        return None
    return layer.rate if step.dropout_rate is None else step.dropout_rate


def _dropout_forward(layer, x, step):
    rate = _dropout_rate_in_use(layer, step)
    return x if rate is None else kernels.dropout(x, step.mask, rate)


def _dropout_backward(layer, params, x, y, cache, g, step, need_dx):
    rate = _dropout_rate_in_use(layer, step)
    return {}, (g if rate is None else kernels.dropout_backward(g, step.mask, rate))


_DROPOUT = LayerRule(
    params=_no_params,
    module=_parameter_free_module,
    forward=_stateless(_dropout_forward),
    backward=_dropout_backward,
)


# BatchNorm -------------------------------------------------------------------


def _batch_norm_module(layer, x, step, name, param_dtype):
    return nn.BatchNorm(
        use_running_average=not step.train,
        momentum=layer.momentum,
        epsilon=layer.epsilon,
        use_fast_variance=False,
        param_dtype=param_dtype,
        name=name,
    )(x)


def _batch_norm_forward(layer, params, x, step):
    return kernels.batch_norm(
        x,
        params["scale"],
        params["bias"],
        momentum=layer.momentum,
        epsilon=layer.epsilon,
        train=step.train,
        stats=step.stats,
    )


def _batch_norm_backward(layer, params, x, y, cache, g, step, need_dx):
    dscale, dbias, dx = kernels.batch_norm_backward(g, params["scale"], cache, train=step.train)
    return {"scale": dscale, "bias": dbias}, dx


_BATCH_NORM = LayerRule(
    params=lambda layer, s: {"scale": (s[-1],), "bias": (s[-1],)},
    module=_batch_norm_module,
    forward=_batch_norm_forward,
    backward=_batch_norm_backward,
)


RULES: dict[type, LayerRule] = {
    Dense: _DENSE,
    Conv: _CONV,
    MaxPool: _MAX_POOL,
    AvgPool: _AVG_POOL,
    Flatten: _FLATTEN,
    Activation: _ACTIVATION,
    Dropout: _DROPOUT,
    BatchNorm: _BATCH_NORM,
}
"""The one table from layer spec class to its :class:`LayerRule`."""

LAYER_TYPES = tuple(RULES)


def rule_of(layer: Layer) -> LayerRule:
    """The :class:`LayerRule` of a layer spec (raises ValueError for anything else)."""
    try:
        return RULES[type(layer)]
    except (KeyError, TypeError):
        names = ", ".join(t.__name__ for t in RULES)
        raise ValueError(f"a layer must be one of {names}; got {layer!r}") from None


# ----------------------------------------------------------------------------- stacks


def validate_layers(layers: Sequence[Any]) -> tuple[Layer, ...]:
    """Return ``layers`` as a tuple, raising ValueError if an entry is not a layer spec."""
    if type(layers) in RULES:
        raise ValueError("layers must be a sequence of layer specs, got a single layer")
    try:
        layers = tuple(layers)
    except TypeError:
        raise ValueError(f"layers must be a sequence of layer specs, got {layers!r}") from None
    for i, layer in enumerate(layers):
        if type(layer) not in RULES:
            names = ", ".join(t.__name__ for t in RULES)
            raise ValueError(f"layers[{i}] must be one of {names}; got {layer!r}")
    return layers


def layer_name(i: int) -> str:
    """Submodule name of parametrised layer ``i`` in the parameter tree."""
    return f"layer_{i}"


def layer_shapes(layers: Sequence[Layer], input_shape: Sequence[int]) -> tuple[tuple, ...]:
    """Shapes flowing through the stack: ``shapes[i]`` is layer i's input, ``shapes[-1]`` the output.

    Raises:
        ValueError: If a layer cannot take the shape it receives.
    """
    layers = validate_layers(layers)
    shape = tuple(int(s) for s in input_shape)
    if len(shape) < 2:
        raise ValueError(f"input_shape must have a batch axis and features, got {shape}")
    shapes = [shape]
    for layer in layers:
        shape = layer.output_shape(shape)
        if any(s < 1 for s in shape):
            raise ValueError(f"{layer!r} turns input shape {shapes[-1]} into empty {shape}")
        shapes.append(shape)
    return tuple(shapes)


def param_shapes(layers: Sequence[Layer], input_shape: Sequence[int]) -> dict[str, dict]:
    """Trainable parameter shapes ``{"layer_i": {leaf: shape}}`` of the stack (the structure
    of ``variables["params"]``), for an input of ``input_shape``."""
    shapes = layer_shapes(layers, input_shape)
    out = {}
    for i, layer in enumerate(validate_layers(layers)):
        leaves = rule_of(layer).params(layer, shapes[i])
        if leaves:
            out[layer_name(i)] = leaves
    return out


def is_active_dropout(layer, rate=None) -> bool:
    """Whether ``layer`` drops units in training: a Dropout with a static rate > 0, or any
    Dropout when a (traced) ``rate`` overrides the static one."""
    return isinstance(layer, Dropout) and (rate is not None or layer.rate > 0)


def dropout_masks(
    key: jax.Array, layers: Sequence[Layer], input_shape: Sequence[int], rate=None
) -> tuple:
    """Draw the dropout keep-masks of one training forward pass.

    Args:
        key: PRNG key; layer i uses ``jax.random.fold_in(key, i)``.
        layers: The layer specs.
        input_shape: Shape of the network input, e.g. [n, d] or [n, h, w, c].
        rate: Optional scalar (may be traced) that replaces every Dropout's static rate.

    Returns:
        Tuple aligned with ``layers``: a bool array (True = keep) of layer i's input shape for
        each active Dropout (rate > 0, or any Dropout when ``rate`` is given), None elsewhere.
    """
    shapes = layer_shapes(layers, input_shape)
    masks = []
    for i, layer in enumerate(layers):
        if is_active_dropout(layer, rate):
            p_keep = 1.0 - (layer.rate if rate is None else rate)
            keep = jax.random.bernoulli(jax.random.fold_in(key, i), p_keep, shapes[i])
            masks.append(keep)
        else:
            masks.append(None)
    return tuple(masks)


def check_masks(masks, layers) -> None:
    """Raise ValueError unless ``masks`` has one entry per layer."""
    if len(masks) != len(layers):
        raise ValueError(f"masks must have one entry per layer ({len(layers)}), got {len(masks)}")


class LayerStack(nn.Module):
    """Apply a tuple of layer specs in order (see the module docstring).

    Attributes:
        layers: The layer specs.
        param_dtype: Parameter dtype at init (use jnp.float64 in float64 gradient checks).
    """

    layers: tuple[Layer, ...]
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool = False, masks: tuple | None = None, dropout_rate=None
    ):
        """Forward pass.

        Args:
            x: Input [n, ...] (NHWC before any Conv/pool layer).
            train: Training mode: dropout active, BatchNorm uses batch statistics and updates
                ``batch_stats`` (apply with ``mutable=["batch_stats"]``).
            masks: Optional dropout masks from `dropout_masks`; if None in train mode they are
                drawn from the ``"dropout"`` rng.
            dropout_rate: Optional scalar (may be traced) used by every Dropout layer instead
                of its static rate (see the module docstring).

        Returns:
            The network output (logits / pre-activation of the last layer if it is Dense/Conv).
        """
        layers = validate_layers(self.layers)
        if train and any(is_active_dropout(lay, dropout_rate) for lay in layers):
            if masks is None:
                masks = dropout_masks(self.make_rng("dropout"), layers, x.shape, dropout_rate)
            check_masks(masks, layers)
        for i, layer in enumerate(layers):
            step = Step(train, None if masks is None else masks[i], dropout_rate)
            x = rule_of(layer).module(layer, x, step, layer_name(i), self.param_dtype)
        return x
