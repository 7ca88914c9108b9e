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

`LayerStack(layers)` is the flax.linen module. Each parametrised layer i (Dense, Conv,
BatchNorm) is the submodule named ``layer_{i}`` with i the index in the tuple, so
``variables["params"][f"layer_{i}"]`` holds ``kernel``/``bias`` (Dense, Conv) or
``scale``/``bias`` (BatchNorm) and ``variables["batch_stats"][f"layer_{i}"]`` holds
``mean``/``var``. The manual engine in `mljax.nn.backprop` walks the same tuple and tree.

Gradients: `LayerStack`'s Conv and MaxPool have a ``jax.custom_vjp`` (`conv`: forward and
kernel gradient as one im2col matmul for inputs with few channels, otherwise XLA's forward and
one matmul per window offset for the kernel gradient; input gradient by the transposed
convolution; `max_pool`: lax forward, gradient routed to each window's first maximum by slices
and selects), because XLA on CPU runs the generic forms (the kernel-gradient convolution and
select-and-scatter) several times slower. The values equal `jax.grad` of the plain forms
`conv_lax` / `max_pool_lax` (tested). A ``custom_vjp`` has no forward mode: ``jax.jvp`` /
``jax.jacfwd`` through a Conv or MaxPool layer raise; differentiate `conv_lax` /
`max_pool_lax` in forward mode instead.

Dropout masks: `dropout_masks(key, layers, input_shape)` is the one pure function that draws
them, as a tuple aligned with ``layers`` (boolean keep-mask of the layer's input shape for each
Dropout with rate > 0, None elsewhere). `LayerStack` takes ``masks=`` explicitly; in train mode
without explicit masks it calls `dropout_masks` with ``self.make_rng("dropout")``. To get the
same masks in `jax.grad` of the flax model and in the manual engine, draw them once and pass the
same tuple to both.

Traced dropout rate: ``dropout_masks``, ``apply_parameter_free``, ``LayerStack`` and the manual
engine take an optional ``dropout_rate`` (a scalar, possibly traced). When given, every Dropout
layer uses it instead of its spec's static rate, so a sweep can vmap over dropout rates; rate
0 keeps every unit (keep ~ Bernoulli(1)) and divides by 1, i.e. no dropout.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

ACTIVATIONS = ("relu", "sigmoid", "tanh", "identity")
PADDINGS = ("SAME", "VALID")


def _check_positive_int(value, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


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
        _check_positive_int(self.features, "Dense.features")

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
        _check_positive_int(self.features, "Conv.features")
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
        if not 0.0 <= float(self.rate) < 1.0:
            raise ValueError(f"Dropout.rate must be in [0, 1), got {self.rate!r}")

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
        if not 0.0 <= float(self.momentum) < 1.0:
            raise ValueError(f"BatchNorm.momentum must be in [0, 1), got {self.momentum!r}")
        if not float(self.epsilon) > 0.0:
            raise ValueError(f"BatchNorm.epsilon must be > 0, got {self.epsilon!r}")

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)


Layer = Dense | Conv | MaxPool | AvgPool | Flatten | Activation | Dropout | BatchNorm
LAYER_TYPES = (Dense, Conv, MaxPool, AvgPool, Flatten, Activation, Dropout, BatchNorm)
PARAM_LAYERS = (Dense, Conv, BatchNorm)


def _check_rank(shape, rank: int, kind: str) -> None:
    if len(shape) != rank:
        raise ValueError(f"{kind} needs a rank-{rank} input (NHWC), got shape {tuple(shape)}")


def validate_layers(layers: Sequence[Any]) -> tuple[Layer, ...]:
    """Return ``layers`` as a tuple, raising ValueError if an entry is not a layer spec."""
    if isinstance(layers, LAYER_TYPES):
        raise ValueError("layers must be a sequence of layer specs, got a single layer")
    try:
        layers = tuple(layers)
    except TypeError:
        raise ValueError(f"layers must be a sequence of layer specs, got {layers!r}") from None
    for i, layer in enumerate(layers):
        if not isinstance(layer, LAYER_TYPES):
            names = ", ".join(t.__name__ for t in LAYER_TYPES)
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


def is_active_dropout(layer, rate=None) -> bool:
    """Whether ``layer`` drops units in training: a Dropout with a static rate > 0, or any
    Dropout when a (traced) ``rate`` overrides the static one."""
    return isinstance(layer, Dropout) and (rate is not None or layer.rate > 0)


def apply_dropout(x: jax.Array, keep: jax.Array, rate: float) -> jax.Array:
    """Inverted dropout with a given keep-mask: x · keep / (1 - rate)."""
    # One scalar reciprocal, then a multiply: with a traced rate, x / (1 - rate) was rounded
    # differently vmapped and alone (XLA rewrote one of them), breaking sweep == single run.
    return jnp.where(keep, x * (1.0 / (1.0 - rate)), jnp.zeros((), x.dtype))


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    """The elementwise function for an activation name."""
    return {
        "relu": jax.nn.relu,
        "sigmoid": jax.nn.sigmoid,
        "tanh": jnp.tanh,
        "identity": lambda x: x,
    }[name]


def _pool_padding(layer: _Pool, shape) -> tuple:
    """lax.reduce_window padding (with zero padding on batch and channel axes)."""
    pads = lax.padtype_to_pads(shape[1:3], layer.window, layer.strides, layer.padding)
    return ((0, 0), *pads, (0, 0))


def max_pool_lax(x: jax.Array, layer: MaxPool) -> jax.Array:
    """Max pooling as one ``lax.reduce_window`` (differentiated by XLA's select-and-scatter).

    The plain formulation: the reference the custom-gradient :func:`max_pool` is tested against.
    """
    _check_rank(x.shape, 4, "MaxPool")
    return lax.reduce_window(
        x,
        -jnp.inf,
        lax.max,
        (1, *layer.window, 1),
        (1, *layer.strides, 1),
        _pool_padding(layer, x.shape),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool(x: jax.Array, layer: MaxPool) -> jax.Array:
    """Max pooling of an NHWC array (padded positions are -inf, never selected).

    Forward: ``lax.reduce_window``. Backward (a ``jax.custom_vjp``): the gradient is routed
    to each window's maximum by strided slices and selects (first maximum in row-major window
    order on ties, the same rule as XLA's select-and-scatter and as
    :func:`mljax.nn.backprop.max_pool_backward`, which computes it). XLA on CPU runs
    select-and-scatter several times slower than this slice/select form.

    ``jax.custom_vjp`` supports reverse mode (``grad``/``vjp``) and ``vmap`` only: forward
    mode (``jvp``, ``jacfwd``) through this function raises; use :func:`max_pool_lax` there.
    """
    return max_pool_lax(x, layer)


def _max_pool_fwd(x, layer):
    y = max_pool_lax(x, layer)
    return y, (x, y)


def _max_pool_bwd(layer, res, g):
    from mljax.nn.backprop import max_pool_backward  # backprop imports this module

    x, y = res
    return (max_pool_backward(x, y, g, layer),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


_CONV_DIMS = ("NHWC", "HWIO", "NHWC")


def conv_lax(x: jax.Array, kernel: jax.Array, strides, padding: str) -> jax.Array:
    """Cross-correlation ``x ⋆ W`` as one ``lax.conv_general_dilated`` (x NHWC, W HWIO).

    The plain formulation: the reference the custom-gradient :func:`conv` is tested against.
    """
    return lax.conv_general_dilated(
        x, kernel, tuple(strides), padding, dimension_numbers=_CONV_DIMS
    )


def window_slices(x: jax.Array, kernel_size, strides, padding: str, out_hw) -> list[jax.Array]:
    """The kh·kw strided slices of the zero-padded x [n, h, w, c], one per window offset
    (p, q) in row-major order, each [n, oh, ow, c]: ``y = Σ_pq slice_pq @ W[p, q]``."""
    (kh, kw), (sh, sw), (oh, ow) = kernel_size, strides, out_hw
    pads = lax.padtype_to_pads(x.shape[1:3], (kh, kw), (sh, sw), padding)
    xp = lax.pad(
        x, jnp.zeros((), x.dtype), ((0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0))
    )
    n, c = x.shape[0], x.shape[3]
    return [
        lax.slice(
            xp, (0, p, q, 0), (n, p + (oh - 1) * sh + 1, q + (ow - 1) * sw + 1, c), (1, sh, sw, 1)
        )
        for p in range(kh)
        for q in range(kw)
    ]


def im2col(x: jax.Array, kernel_size, strides, padding: str, out_hw) -> jax.Array:
    """Patches of x [n, h, w, c] for a kernel of ``kernel_size``: [n, oh, ow, kh·kw·c].

    The last axis is ordered (p, q, c) (row-major over the window, then channel), so that
    ``patches.reshape(-1, kh·kw·c) @ W.reshape(kh·kw·c, f)`` is the convolution. Built from
    the kh·kw :func:`window_slices` of the zero-padded input (no identity-kernel convolution).
    """
    return jnp.concatenate(window_slices(x, kernel_size, strides, padding, out_hw), axis=-1)


def conv_output_hw(in_hw, kernel_size, strides, padding: str) -> tuple[int, int]:
    """Spatial output size of a convolution (as ``lax.conv_general_dilated``)."""
    pads = lax.padtype_to_pads(in_hw, kernel_size, strides, padding)
    return tuple(
        (size + lo + hi - k) // st + 1
        for size, (lo, hi), k, st in zip(in_hw, pads, kernel_size, strides, strict=True)
    )


IM2COL_MAX_PATCH = 16
"""Largest patch width kh·kw·c for which :func:`conv` runs as one im2col matmul (forward and
kernel gradient)."""


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: str) -> jax.Array:
    """``x ⋆ W`` (as :func:`conv_lax`) in the formulations that XLA CPU runs fastest.

    With g = dL/dy [n, oh, ow, f] and the kh·kw :func:`window_slices` X_pq of x:

        narrow patches (kh·kw·c ≤ IM2COL_MAX_PATCH, e.g. a first layer on images):
            y  = im2col(x) W                one [n·oh·ow, kh·kw·c] × [kh·kw·c, f] matmul
            dW = im2col(x)ᵀ g               one matmul
        wider patches:
            y  = conv_lax(x, W)             XLA's own convolution
            dW[p, q] = X_pqᵀ g              kh·kw matmuls [c, n·oh·ow] × [n·oh·ow, f]
        dx = conv_lax's own input gradient (a transposed convolution of g with W)

    Measured here (batch 200, 3×3 SAME, jax 0.10.2 CPU, ms): forward of a 1-channel 28×28
    input to 16 filters 5.6 through XLA vs 1.9-2.6 by im2col (to 32 filters about even);
    kernel gradient of a 1-channel input to 32 filters 14.8 (XLA) vs 4.9 (im2col) vs 14.3
    (per-offset matmuls); with 16 channels to 16 filters at 14×14: 6.4 (XLA) vs 4.8 (im2col)
    vs 4.0 (per-offset); 32 channels to 64 filters at 14×14: 77 (XLA) vs 77 (im2col) vs 32
    (per-offset). XLA's own forward stayed fastest for the wider patches (1.9 and 19 ms vs
    6-7 and 45-57 by im2col).

    ``jax.custom_vjp`` supports reverse mode (``grad``/``vjp``) and ``vmap`` only: forward
    mode (``jvp``, ``jacfwd``) through this function raises; use :func:`conv_lax` there.
    """
    return _conv_forward(x, kernel, strides, padding)


def _conv_forward(x, kernel, strides, padding):
    kh, kw, c, f = kernel.shape
    if kh * kw * c > IM2COL_MAX_PATCH:
        return conv_lax(x, kernel, strides, padding)
    out_hw = conv_output_hw(x.shape[1:3], (kh, kw), tuple(strides), padding)
    patches = im2col(x, (kh, kw), strides, padding, out_hw)
    y = jnp.matmul(patches.reshape(-1, kh * kw * c), kernel.reshape(kh * kw * c, f))
    return y.reshape(x.shape[0], *out_hw, f)


def _conv_fwd(x, kernel, strides, padding):
    return _conv_forward(x, kernel, strides, padding), (x, kernel)


def conv_kernel_grad(x: jax.Array, g: jax.Array, kernel_size, strides, padding: str):
    """dW [kh, kw, c, f] of ``y = x ⋆ W`` for the output gradient g [n, oh, ow, f]:

        dW[p, q, c, f] = Σ_{n,i,j} x̃[n, s_h i + p, s_w j + q, c] · g[n, i, j, f]

    (x̃ = x zero-padded), i.e. ``X_pqᵀ g`` for each window offset's slice X_pq: one matmul per
    offset, or one im2col matmul when kh·kw·c ≤ IM2COL_MAX_PATCH (see :func:`conv`)."""
    kh, kw = kernel_size
    c, f = x.shape[-1], g.shape[-1]
    geometry = ((kh, kw), tuple(strides), padding, g.shape[1:3])
    gf = g.reshape(-1, f)
    if kh * kw * c <= IM2COL_MAX_PATCH:
        dk = jnp.matmul(im2col(x, *geometry).reshape(-1, kh * kw * c).T, gf)
    else:
        dk = jnp.stack([jnp.matmul(xs.reshape(-1, c).T, gf) for xs in window_slices(x, *geometry)])
    return dk.reshape(kh, kw, c, f)


def _conv_bwd(strides, padding, res, g):
    x, kernel = res
    _, vjp_x = jax.vjp(lambda a: conv_lax(a, kernel, strides, padding), x)
    (dx,) = vjp_x(g)  # dropped by dead-code elimination where x needs no gradient
    dk = conv_kernel_grad(x, g, kernel.shape[:2], strides, padding)
    return dx, dk.astype(kernel.dtype)


conv.defvjp(_conv_fwd, _conv_bwd)


class _ConvModule(nn.Module):
    """flax module for :class:`Conv` using :func:`conv`; parameters as ``flax.linen.Conv``.

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
        y = conv(x.astype(dtype), kernel.astype(dtype), tuple(self.strides), self.padding)
        if self.use_bias:
            bias = self.param(
                "bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype
            )
            y = y + bias.astype(dtype)
        return y


def avg_pool(x: jax.Array, layer: AvgPool) -> jax.Array:
    """Average pooling of an NHWC array: window sum / (kh·kw), padded zeros counted."""
    _check_rank(x.shape, 4, "AvgPool")
    total = lax.reduce_window(
        x,
        0.0,
        lax.add,
        (1, *layer.window, 1),
        (1, *layer.strides, 1),
        _pool_padding(layer, x.shape),
    )
    return total / math.prod(layer.window)


PARAMETER_FREE = (MaxPool, AvgPool, Flatten, Activation, Dropout)


def apply_parameter_free(layer, x: jax.Array, *, train: bool, mask, dropout_rate=None) -> jax.Array:
    """Forward of a layer without parameters; shared by ``LayerStack`` and the manual engine.

    Args:
        layer: a ``MaxPool``, ``AvgPool``, ``Flatten``, ``Activation`` or ``Dropout``.
        x: its input.
        train: dropout is applied only in training mode.
        mask: the dropout keep-mask for this layer (see :func:`dropout_masks`), else None.
        dropout_rate: optional (traced) rate replacing a Dropout's static rate.
    """
    if isinstance(layer, MaxPool):
        return max_pool(x, layer)
    if isinstance(layer, AvgPool):
        return avg_pool(x, layer)
    if isinstance(layer, Flatten):
        return x.reshape(x.shape[0], -1)
    if isinstance(layer, Activation):
        return activation_fn(layer.name)(x)
    if isinstance(layer, Dropout):
        if not (train and is_active_dropout(layer, dropout_rate)):
            return x
        return apply_dropout(x, mask, layer.rate if dropout_rate is None else dropout_rate)
    raise ValueError(
        f"{type(layer).__name__} has parameters; allowed here: "
        f"{', '.join(t.__name__ for t in PARAMETER_FREE)}"
    )


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
        has_dropout = any(is_active_dropout(lay, dropout_rate) for lay in layers)
        if train and has_dropout:
            if masks is None:
                masks = dropout_masks(self.make_rng("dropout"), layers, x.shape, dropout_rate)
            elif len(masks) != len(layers):
                raise ValueError(
                    f"masks must have one entry per layer ({len(layers)}), got {len(masks)}"
                )
        for i, layer in enumerate(layers):
            name = layer_name(i)
            if isinstance(layer, Dense):
                kwargs = {} if layer.kernel_init is None else {"kernel_init": layer.kernel_init}
                x = nn.Dense(
                    layer.features,
                    use_bias=layer.use_bias,
                    param_dtype=self.param_dtype,
                    name=name,
                    **kwargs,
                )(x)
            elif isinstance(layer, Conv):
                _check_rank(x.shape, 4, "Conv")
                x = _ConvModule(
                    layer.features,
                    kernel_size=layer.kernel_size,
                    strides=layer.strides,
                    padding=layer.padding,
                    use_bias=layer.use_bias,
                    param_dtype=self.param_dtype,
                    kernel_init=layer.kernel_init,
                    name=name,
                )(x)
            elif isinstance(layer, PARAMETER_FREE):
                x = apply_parameter_free(
                    layer,
                    x,
                    train=train,
                    mask=None if masks is None else masks[i],
                    dropout_rate=dropout_rate,
                )
            elif isinstance(layer, BatchNorm):
                x = nn.BatchNorm(
                    use_running_average=not train,
                    momentum=layer.momentum,
                    epsilon=layer.epsilon,
                    use_fast_variance=False,
                    param_dtype=self.param_dtype,
                    name=name,
                )(x)
        return x
