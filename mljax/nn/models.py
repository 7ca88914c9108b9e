"""Network builders and the seed reports' models, as layer tuples for `LayerStack`.

Every model is a tuple of the frozen layer specs of :mod:`mljax.nn.layers`; the flax module is
``LayerStack(layers)`` (see :func:`build`). One tuple therefore serves ``jax.grad`` of the flax
model, the manual rules of :mod:`mljax.nn.backprop` and ``jax.vmap`` over seeds.

Builders:

* :func:`mlp`: ``[Flatten] → (Dense → [BN] → act → [BN] → [Dropout]) × L → Dense → [out act]``,
  sizes, activation, per-layer dropout rates and batch norm, biases on or off.
* :func:`cnn`: a stack of :class:`ConvBlock` (``Conv → [BN] → act → [BN] → [pool] → [Dropout]``)
  then ``Flatten`` and an :func:`mlp` head.

Parameter counts (:func:`count_params`) are read off ``jax.eval_shape`` of ``LayerStack.init``,
so nothing is allocated. A Dense layer has ``d·f + f`` parameters, a Conv layer
``kh·kw·c·f + f``; a BatchNorm layer has ``2f`` trainable (γ, β) and ``2f`` non-trainable
(running mean and variance, flax's ``batch_stats``), which is how Keras counts them too.

Seed models (each constructor cites its report; the layer choices the reports leave open are
stated in the docstrings):

====================  ========================================================  ============
constructor           report                                                    input
====================  ========================================================  ============
sigmoid_net           seed 002 Q2: 1-3-1 sigmoid net, no biases (δ table, E2)   [n, 1]
two_layer_net         seed 001: affine-ReLU-affine (softmax in the loss, E3)    [n, ...]
mnist_linear/…        seed 004 models (a)–(d) (E4)                              [n, 28, 28, 1]
fashion_mlp/…cnn      seed 003 §2.1/§2.2 Keras models (E6)                      [n, 28, 28, 1]
tfd_nn / tfd_cnn      seed 000 §3.4 NN (16, 8) and CNN (5×5×8, 5×5×16) (E8)     [n, 48, 48, 1]
====================  ========================================================  ============
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mljax.nn.layers import (
    ACTIVATIONS,
    Activation,
    AvgPool,
    BatchNorm,
    Conv,
    Dense,
    Dropout,
    Flatten,
    Layer,
    LayerStack,
    MaxPool,
    layer_name,
    layer_shapes,
    validate_layers,
)
from mljax.validation import check_positive_int, check_scalar

__all__ = [
    "MNIST_SHAPE",
    "NORM_POSITIONS",
    "POOL_KINDS",
    "TFD_SHAPE",
    "ConvBlock",
    "ParamCount",
    "SeedModel",
    "build",
    "cnn",
    "count_params",
    "fashion_cnn",
    "fashion_cnn_v2",
    "fashion_mlp",
    "format_param_table",
    "mlp",
    "mnist_cnn",
    "mnist_linear",
    "mnist_mlp1",
    "mnist_mlp2",
    "param_rows",
    "param_table",
    "print_param_table",
    "seed_models",
    "sigmoid_net",
    "sigmoid_net_params",
    "tfd_cnn",
    "tfd_nn",
    "two_layer_net",
    "variable_shapes",
]

NORM_POSITIONS = ("before", "after")
POOL_KINDS = ("max", "avg")


# ----------------------------------------------------------------------------- validation


def _per_layer(value: Any, n: int, name: str, kinds: tuple[type, ...]) -> tuple:
    """Broadcast a scalar option to ``n`` layers, or check a sequence has length ``n``."""
    if isinstance(value, kinds) or value is None:
        return (value,) * n
    try:
        values = tuple(value)
    except TypeError:
        raise ValueError(
            f"{name} must be a scalar or a sequence of one per hidden layer, got {value!r}"
        ) from None
    if len(values) != n:
        raise ValueError(f"{name} must have one entry per hidden layer ({n}), got {len(values)}")
    return values


def _activation(name: Any, arg: str) -> str:
    if name not in ACTIVATIONS:
        raise ValueError(f"{arg} must be one of {ACTIVATIONS}, got {name!r}")
    return name


def _norm_position(value: Any) -> str:
    if value not in NORM_POSITIONS:
        raise ValueError(f"norm_position must be one of {NORM_POSITIONS}, got {value!r}")
    return value


def _dropout_rate(rate: Any, name: str) -> float:
    if rate is None:
        return 0.0
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise ValueError(f"{name} must be a float in [0, 1), got {rate!r}")
    return float(check_scalar(rate, name, minimum=0.0, maximum=1.0, strict_maximum=True))


# ----------------------------------------------------------------------------- builders


def _hidden_block(
    core: Layer, activation: str, batch_norm: bool, norm_position: str, dropout: float
) -> list[Layer]:
    """``core → [BN] → act → [BN] → [Dropout]`` with BN on the requested side."""
    out: list[Layer] = [core]
    if batch_norm and norm_position == "before":
        out.append(BatchNorm())
    out.append(Activation(activation))
    if batch_norm and norm_position == "after":
        out.append(BatchNorm())
    if dropout > 0:
        out.append(Dropout(dropout))
    return out


def mlp(
    hidden: Sequence[int],
    outputs: int,
    *,
    activation: str = "relu",
    dropout: float | Sequence[float] = 0.0,
    batch_norm: bool | Sequence[bool] = False,
    norm_position: str = "before",
    use_bias: bool = True,
    output_activation: str | None = None,
    flatten: bool = False,
    kernel_init: Callable | None = None,
) -> tuple[Layer, ...]:
    """A multilayer perceptron as a layer tuple.

    Each hidden layer i is ``Dense(hidden[i]) → [BatchNorm] → activation → [BatchNorm] →
    [Dropout(dropout[i])]`` (batch norm on the side ``norm_position`` says), then
    ``Dense(outputs)`` and, if given, ``output_activation``. Without an output activation the
    network returns logits (the softmax lives in the loss).

    Args:
        hidden: hidden widths, e.g. ``(256, 256)``; may be empty (a linear model).
        outputs: output width (number of classes, or 1).
        activation: hidden nonlinearity, one of ``relu, sigmoid, tanh, identity``.
        dropout: one rate in [0, 1) for every hidden layer, or one per hidden layer
            (0 = no Dropout layer).
        batch_norm: whether hidden layers get a BatchNorm, for all or per hidden layer.
        norm_position: ``"before"`` (Dense → BN → act, Ioffe & Szegedy) or ``"after"``
            (Dense → act → BN, as Keras' ``Dense(activation=...)`` then ``BatchNormalization``).
        use_bias: whether every Dense layer has a bias.
        output_activation: optional activation after the last Dense layer.
        flatten: start with ``Flatten()`` so that image batches ``[n, h, w, c]`` are accepted.
        kernel_init: optional flax initializer for every Dense kernel.

    Returns:
        The layer tuple (input ``[n, d]``, or ``[n, ...]`` with ``flatten``; output
        ``[n, outputs]``).

    Raises:
        ValueError: for a non-positive width, an unknown activation or position, a dropout
            rate outside [0, 1), or per-layer options of the wrong length.
    """
    try:
        hidden = tuple(hidden)
    except TypeError:
        raise ValueError(f"hidden must be a sequence of positive ints, got {hidden!r}") from None
    widths = [check_positive_int(h, f"hidden[{i}]") for i, h in enumerate(hidden)]
    outputs = check_positive_int(outputs, "outputs")
    activation = _activation(activation, "activation")
    if output_activation is not None:
        output_activation = _activation(output_activation, "output_activation")
    norm_position = _norm_position(norm_position)
    rates = [
        _dropout_rate(r, f"dropout[{i}]")
        for i, r in enumerate(_per_layer(dropout, len(widths), "dropout", (int, float)))
    ]
    norms = _per_layer(batch_norm, len(widths), "batch_norm", (bool,))
    layers: list[Layer] = [Flatten()] if flatten else []
    for width, rate, norm in zip(widths, rates, norms, strict=True):
        dense = Dense(width, use_bias=use_bias, kernel_init=kernel_init)
        layers += _hidden_block(dense, activation, bool(norm), norm_position, rate)
    layers.append(Dense(outputs, use_bias=use_bias, kernel_init=kernel_init))
    if output_activation is not None:
        layers.append(Activation(output_activation))
    return tuple(layers)


@dataclasses.dataclass(frozen=True)
class ConvBlock:
    """One convolutional stage: ``Conv → [BN] → act → [BN] → [pool] → [Dropout]``.

    Attributes:
        features: output channels.
        kernel_size: convolution window (int or pair).
        strides: convolution strides (int or pair).
        padding: ``"SAME"`` or ``"VALID"`` for the convolution.
        pool: pooling window (int or pair), or None for no pooling.
        pool_strides: pooling strides (default: the window, non-overlapping).
        pool_padding: ``"VALID"`` (drop incomplete windows, Keras' default) or ``"SAME"``.
        pool_kind: ``"max"`` or ``"avg"``.
        batch_norm: whether to add a BatchNorm (position from :func:`cnn`).
        dropout: dropout rate after the block (0 = none).
    """

    features: int
    kernel_size: int | tuple[int, int] = 3
    strides: int | tuple[int, int] = 1
    padding: str = "SAME"
    pool: int | tuple[int, int] | None = None
    pool_strides: int | tuple[int, int] | None = None
    pool_padding: str = "VALID"
    pool_kind: str = "max"
    batch_norm: bool = False
    dropout: float = 0.0

    def __post_init__(self):
        check_positive_int(self.features, "ConvBlock.features")
        if self.pool_kind not in POOL_KINDS:
            raise ValueError(
                f"ConvBlock.pool_kind must be one of {POOL_KINDS}, got {self.pool_kind!r}"
            )
        _dropout_rate(self.dropout, "ConvBlock.dropout")

    def layers(self, activation: str, norm_position: str, kernel_init=None) -> list[Layer]:
        conv = Conv(
            self.features,
            kernel_size=self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            kernel_init=kernel_init,
        )
        out = _hidden_block(conv, activation, self.batch_norm, norm_position, 0.0)
        if self.pool is not None:
            pool_cls = MaxPool if self.pool_kind == "max" else AvgPool
            out.append(pool_cls(self.pool, self.pool_strides, self.pool_padding))
        if self.dropout > 0:
            out.append(Dropout(float(self.dropout)))
        return out


def cnn(
    blocks: Sequence[ConvBlock],
    hidden: Sequence[int],
    outputs: int,
    *,
    activation: str = "relu",
    dropout: float | Sequence[float] = 0.0,
    batch_norm: bool | Sequence[bool] = False,
    norm_position: str = "before",
    output_activation: str | None = None,
    kernel_init: Callable | None = None,
) -> tuple[Layer, ...]:
    """A convolutional network from a layer spec: conv blocks, ``Flatten``, an MLP head.

    Args:
        blocks: the convolutional stages, in order (see :class:`ConvBlock`).
        hidden: widths of the dense head's hidden layers (may be empty).
        outputs: number of outputs (classes).
        activation: nonlinearity of every conv block and hidden dense layer.
        dropout: dropout rate(s) of the head's hidden layers (as in :func:`mlp`).
        batch_norm: batch norm of the head's hidden layers (as in :func:`mlp`).
        norm_position: ``"before"`` or ``"after"`` the activation, for blocks and head.
        output_activation: optional activation after the last Dense layer.
        kernel_init: optional flax initializer for every kernel.

    Returns:
        The layer tuple (input ``[n, h, w, c]``, output ``[n, outputs]``).
    """
    blocks = tuple(blocks)
    if not blocks or not all(isinstance(b, ConvBlock) for b in blocks):
        raise ValueError(f"blocks must be a non-empty sequence of ConvBlock, got {blocks!r}")
    activation = _activation(activation, "activation")
    norm_position = _norm_position(norm_position)
    layers: list[Layer] = []
    for block in blocks:
        layers += block.layers(activation, norm_position, kernel_init)
    head = mlp(
        hidden,
        outputs,
        activation=activation,
        dropout=dropout,
        batch_norm=batch_norm,
        norm_position=norm_position,
        output_activation=output_activation,
        flatten=True,
        kernel_init=kernel_init,
    )
    return (*layers, *head)


def build(layers: Sequence[Layer], *, param_dtype: Any = jnp.float32) -> LayerStack:
    """The flax module of a layer tuple (``LayerStack``)."""
    return LayerStack(layers=validate_layers(layers), param_dtype=param_dtype)


# ----------------------------------------------------------------------------- parameter counts


class ParamCount(NamedTuple):
    """Parameter counts of a network.

    Attributes:
        trainable: entries of the ``params`` collection (kernels, biases, BN γ and β).
        non_trainable: entries of other collections (BN running mean and variance).
        total: their sum (what Keras calls "Total params").
    """

    trainable: int
    non_trainable: int
    total: int


def variable_shapes(
    layers: Sequence[Layer], input_shape: Sequence[int], *, param_dtype: Any = jnp.float32
) -> dict:
    """Shapes of every variable of ``LayerStack(layers)`` for an input ``[n, ...]``.

    Runs ``init`` under ``jax.eval_shape``: nothing is computed or allocated.

    Raises:
        ValueError: if a layer cannot take the shape it receives.
    """
    layers = validate_layers(layers)
    layer_shapes(layers, input_shape)  # clear ValueError before tracing
    model = build(layers, param_dtype=param_dtype)
    x = jax.ShapeDtypeStruct(tuple(input_shape), param_dtype)
    return jax.eval_shape(model.init, jax.random.key(0), x)


def count_params(layers: Sequence[Layer], input_shape: Sequence[int]) -> ParamCount:
    """Counts the parameters of ``LayerStack(layers)`` for inputs of shape ``input_shape``.

    Args:
        layers: the layer tuple.
        input_shape: input shape including a batch axis, e.g. ``(1, 48, 48, 1)``; the batch
            size does not change the count.

    Returns:
        :class:`ParamCount`.
    """
    shapes = variable_shapes(layers, input_shape)
    sizes = {
        coll: sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))
        for coll, tree in shapes.items()
    }
    trainable = int(sizes.get("params", 0))
    other = int(sum(v for k, v in sizes.items() if k != "params"))
    return ParamCount(trainable, other, trainable + other)


def param_rows(layers: Sequence[Layer], input_shape: Sequence[int]) -> list[tuple[str, str, int]]:
    """Per-layer rows ``(name, description, count)``, counting both collections."""
    shapes = variable_shapes(layers, input_shape)
    rows = []
    for i, layer in enumerate(validate_layers(layers)):
        name = layer_name(i)
        count = sum(
            math.prod(leaf.shape)
            for tree in shapes.values()
            for leaf in jax.tree.leaves(tree.get(name, {}))
        )
        rows.append((name, repr(layer), int(count)))
    return rows


# ----------------------------------------------------------------------------- seed 002


def sigmoid_net(hidden: int = 3, *, kernel_init: Callable | None = None) -> tuple[Layer, ...]:
    """Seed 002, Question 2: the 1-``hidden``-1 sigmoid network without biases.

    ``z_h = σ(x · w(5→h))`` for the hidden neurons (2, 3, 4 in the report), ``z1 = σ(Σ_h z_h
    w(h→1))``; the input neuron 5 is the identity (``z5 = a5 = x``). Layer 0 is the
    input→hidden Dense (kernel ``[1, hidden]``), layer 2 the hidden→output Dense (``[hidden,
    1]``). The report's Question 2.4 trains the 1-3-1 net from weights ``~ U(0, 1)``: pass
    ``kernel_init=jax.nn.initializers.uniform(1.0)``.

    Args:
        hidden: number of hidden sigmoid neurons (3 in the report).
        kernel_init: optional flax initializer of both kernels.
    """
    return mlp(
        (hidden,),
        1,
        activation="sigmoid",
        output_activation="sigmoid",
        use_bias=False,
        kernel_init=kernel_init,
    )


def sigmoid_net_params(weights: Mapping[str, float], *, dtype: Any = jnp.float32) -> dict:
    """Seed 002 Question 2.3's weights as the ``params`` tree of :func:`sigmoid_net`.

    Args:
        weights: ``{"w52", "w53", "w54", "w21", "w31", "w41"}`` (``w<from><to>``), e.g. the
            report's table ``mljax.data.toy.SIGMOID_NET_WEIGHTS``: w(5→2) = -3, w(5→3) = 2,
            w(5→4) = -10, w(2→1) = 3, w(3→1) = -4, w(4→1) = -1.
        dtype: parameter dtype.

    Returns:
        ``{"layer_0": {"kernel": [1, 3]}, "layer_2": {"kernel": [3, 1]}}``, hidden neurons in
        the order 2, 3, 4.
    """
    need = ("w52", "w53", "w54", "w21", "w31", "w41")
    missing = [k for k in need if k not in weights]
    if missing:
        raise ValueError(f"weights lacks {missing}; expected keys {need}")
    w_in = jnp.asarray([[weights["w52"], weights["w53"], weights["w54"]]], dtype)
    w_out = jnp.asarray([[weights["w21"]], [weights["w31"]], [weights["w41"]]], dtype)
    return {"layer_0": {"kernel": w_in}, "layer_2": {"kernel": w_out}}


# ----------------------------------------------------------------------------- seed 001


def two_layer_net(
    hidden: int = 100, num_classes: int = 10, *, kernel_init: Callable | None = None
) -> tuple[Layer, ...]:
    """Seed 001 (CIFAR-10 two-layer net): ``affine → ReLU → affine``; softmax in the loss.

    The report's loss is mean softmax cross-entropy + λ(‖W1‖² + ‖W2‖²) (``reg``, no ½:
    see :mod:`mljax.nn.losses`). Its toy check uses
    4 inputs, 10 hidden units and 3 classes; its best CIFAR-10 model 100 hidden units. Starts
    with ``Flatten`` so that ``[n, 32, 32, 3]`` images and ``[n, d]`` features both work.
    Parameters: layer_1 (W1 ``[d, hidden]``, b1), layer_3 (W2 ``[hidden, classes]``, b2).
    """
    return mlp((hidden,), num_classes, flatten=True, kernel_init=kernel_init)


# ----------------------------------------------------------------------------- seed 004


def mnist_linear(num_classes: int = 10) -> tuple[Layer, ...]:
    """Seed 004 model (a): one linear layer followed by a softmax (in the loss)."""
    return mlp((), num_classes, flatten=True)


def mnist_mlp1(num_classes: int = 10, hidden: int = 128) -> tuple[Layer, ...]:
    """Seed 004 model (b): one hidden layer of 128 ReLU units, then softmax."""
    return mlp((hidden,), num_classes, flatten=True)


def mnist_mlp2(num_classes: int = 10, hidden: int = 256) -> tuple[Layer, ...]:
    """Seed 004 model (c): two hidden layers of 256 ReLU units each, then softmax."""
    return mlp((hidden, hidden), num_classes, flatten=True)


def mnist_cnn(num_classes: int = 10, filters: int = 16, hidden: int = 256) -> tuple[Layer, ...]:
    """Seed 004 model (d), "3 layer convolutional model, followed by a softmax".

    Our reading (SPEC E4): conv 3×3×16 (SAME, as the report's Part 2 derivation pads so that
    the output keeps the input size) → ReLU → max-pool 2×2 → conv 3×3×16 → ReLU → max-pool
    2×2 → dense 256 ReLU → dense 10. On 28×28×1 inputs: 206,010 parameters.
    """
    blocks = (ConvBlock(filters, 3, pool=2), ConvBlock(filters, 3, pool=2))
    return cnn(blocks, (hidden,), num_classes)


# ----------------------------------------------------------------------------- seed 003

FASHION_MLP_DROPOUT = 0.2
FASHION_CNN_DROPOUT = 0.25


def fashion_mlp(num_classes: int = 10, dropout: float = FASHION_MLP_DROPOUT) -> tuple[Layer, ...]:
    """Seed 003 §2.1 (Figure 5): the Keras Fashion-MNIST MLP (87.4 % validation accuracy).

    ``Dense 256 → Dropout → Dense 128 → Dropout → Dense 50 → BatchNorm → Dense 50 → Dense 25 →
    Dropout → Dense 10 → softmax``, ReLU on every hidden Dense. Keras' ``Dense(activation=
    "relu")`` applies the ReLU before the BatchNorm that follows it, so the norm sits after
    the activation. The report does not print the dropout rates; ``dropout`` (default 0.2)
    sets all three. On 28×28 inputs: 244,591 parameters, 244,491 trainable (the report's
    Figure 5 counts).
    """
    return mlp(
        (256, 128, 50, 50, 25),
        num_classes,
        dropout=(dropout, dropout, 0.0, 0.0, dropout),
        batch_norm=(False, False, True, False, False),
        norm_position="after",
        flatten=True,
    )


def fashion_cnn(num_classes: int = 10, dropout: float = FASHION_CNN_DROPOUT) -> tuple[Layer, ...]:
    """Seed 003 §2.2 (Figure 8): the Keras Fashion-MNIST CNN (93.6 % validation accuracy).

    ``conv 3×3×200 → conv 3×3×100 → max-pool 2 → Dropout → conv 3×3×50 → max-pool 2 →
    conv 3×3×50 → max-pool 2 → Flatten (3·3·50 = 450) → Dense 256 → BatchNorm → ReLU →
    Dense 50 → Dropout → Dense 25 → Dropout → Dense 10 → Dropout → Dense 10 → softmax``,
    ReLU after every conv and hidden Dense, SAME convolutions (the printed shapes keep 28, 14
    and 7), VALID pooling (7 → 3). The report's separate Activation layers put the norm
    before the ReLU. Dropout rates are not printed; ``dropout`` (default 0.25) sets all four.
    380,675 parameters, 380,163 trainable (Figure 8).
    """
    blocks = (
        ConvBlock(200),
        ConvBlock(100, pool=2, dropout=dropout),
        ConvBlock(50, pool=2),
        ConvBlock(50, pool=2),
    )
    return cnn(
        blocks,
        (256, 50, 25, 10),
        num_classes,
        dropout=(0.0, dropout, dropout, dropout),
        batch_norm=(True, False, False, False),
        norm_position="before",
    )


def fashion_cnn_v2(
    num_classes: int = 10, dropout: float = FASHION_CNN_DROPOUT
) -> tuple[Layer, ...]:
    """Seed 003 §2.2 (Figure 11): the retrained CNN ("less dropout, lr decay", ≈95 % val).

    Pairs of conv 3×3 (SAME then VALID: 28 → 26, 13 → 11, 5 → 3) with 32/64, 128/128 and
    256/256 filters, each conv followed by ReLU and BatchNorm (Keras ``Conv2D(activation=
    "relu")`` then ``BatchNormalization``), max-pool 2 after each pair, dropout after the
    first two pools, then Flatten (256) → Dense 1024 → Dropout → Dense 512 → Dense 10.
    1,922,058 parameters, 1,920,330 trainable (Figure 11).
    """
    blocks = (
        ConvBlock(32, batch_norm=True),
        ConvBlock(64, padding="VALID", batch_norm=True, pool=2, dropout=dropout),
        ConvBlock(128, batch_norm=True),
        ConvBlock(128, padding="VALID", batch_norm=True, pool=2, dropout=dropout),
        ConvBlock(256, batch_norm=True),
        ConvBlock(256, padding="VALID", batch_norm=True, pool=2),
    )
    return cnn(blocks, (1024, 512), num_classes, dropout=(dropout, 0.0), norm_position="after")


# ----------------------------------------------------------------------------- seed 000


def tfd_nn(num_classes: int = 7, hidden: Sequence[int] = (16, 8)) -> tuple[Layer, ...]:
    """Seed 000 §3.4 (CSC2515 A2 Q3): the fully connected net with hidden layers (16, 8).

    ``Flatten → Dense 16 → ReLU → Dense 8 → ReLU → Dense classes``. For the report's Toronto
    Face Dataset (48×48×1 inputs, 7 expressions): 2304·16 + 16 + 16·8 + 8 + 8·7 + 7 = 37,079
    parameters, the report's count.
    """
    return mlp(tuple(hidden), num_classes, flatten=True)


TFD_CNN_POOLS = (3, 2)


def tfd_cnn(
    num_classes: int = 7,
    filters: tuple[int, int] = (8, 16),
    *,
    kernel_size: int = 5,
    pools: tuple[int, int] = TFD_CNN_POOLS,
) -> tuple[Layer, ...]:
    """Seed 000 §3.4 (CSC2515 A2 Q3): the CNN with 5×5×8 and 5×5×16 filters.

    ``conv 5×5×8 (SAME) → ReLU → max-pool 3×3/3 → conv 5×5×16 (SAME) → ReLU → max-pool 2×2/2
    → Flatten → Dense classes``. The report counts the last layer as ``16 × 64 × 7 + 7``: the
    feature map before it is 8×8×16. With SAME convolutions (the assignment's ``Conv2D`` pads
    by (k - 1) / 2) a 48×48 input reaches 8×8 only through non-overlapping pools of 3 then 2
    (48 / 3 = 16, 16 / 2 = 8; 2 then 3 gives the same count); VALID convolutions cannot
    (48 → 44 → … never 8 with integer pools). This reproduces 208 + 3,216 + 7,175 = 10,599
    parameters. On 28×28 inputs the same pools give 9×9 then 4×4 (VALID pooling drops the
    incomplete windows). Max-pool and ReLU commute (both monotone), so the assignment's
    conv → pool → ReLU order is the same function.

    Args:
        num_classes: output classes (7 for TFD).
        filters: filters of the two conv layers.
        kernel_size: conv window (5).
        pools: the two non-overlapping max-pool windows.
    """
    f1, f2 = filters
    p1, p2 = pools
    blocks = (ConvBlock(f1, kernel_size, pool=p1), ConvBlock(f2, kernel_size, pool=p2))
    return cnn(blocks, (), num_classes)


# ----------------------------------------------------------------------------- registry


class SeedModel(NamedTuple):
    """A seed report's model with the input it was reported for.

    Attributes:
        name: short name (``"seed004_d"``).
        report: where the model comes from.
        layers: the layer tuple.
        input_shape: the report's input, one example with a batch axis (``(1, 48, 48, 1)``).
        reported_params: the report's parameter count (total, as printed), or None.
        reported_trainable: the report's trainable count where it prints one, else None.
    """

    name: str
    report: str
    layers: tuple[Layer, ...]
    input_shape: tuple[int, ...]
    reported_params: int | None = None
    reported_trainable: int | None = None


MNIST_SHAPE = (1, 28, 28, 1)
TFD_SHAPE = (1, 48, 48, 1)


def seed_models() -> tuple[SeedModel, ...]:
    """Every seed model in its report's setting (input size and number of classes)."""
    return (
        SeedModel(
            "seed002_sigmoid", "seed 002 Q2: 1-3-1 sigmoid net, no biases", sigmoid_net(), (1, 1)
        ),
        SeedModel(
            "seed001_twolayer_toy",
            "seed 001: two-layer net, toy check (4-10-3)",
            two_layer_net(10, 3),
            (1, 4),
        ),
        SeedModel(
            "seed001_twolayer",
            "seed 001: two-layer net, CIFAR-10, hidden 100",
            two_layer_net(100, 10),
            (1, 32, 32, 3),
        ),
        SeedModel("seed004_a", "seed 004 (a): linear + softmax", mnist_linear(), MNIST_SHAPE),
        SeedModel("seed004_b", "seed 004 (b): 1 hidden 128 ReLU", mnist_mlp1(), MNIST_SHAPE),
        SeedModel("seed004_c", "seed 004 (c): 2 hidden 256 ReLU", mnist_mlp2(), MNIST_SHAPE),
        SeedModel(
            "seed004_d",
            "seed 004 (d): conv3x3x16-pool-conv3x3x16-pool-dense256",
            mnist_cnn(),
            MNIST_SHAPE,
        ),
        SeedModel(
            "seed003_mlp",
            "seed 003 §2.1 Fig. 5: Fashion-MNIST MLP",
            fashion_mlp(),
            MNIST_SHAPE,
            244_591,
            244_491,
        ),
        SeedModel(
            "seed003_cnn",
            "seed 003 §2.2 Fig. 8: Fashion-MNIST CNN",
            fashion_cnn(),
            MNIST_SHAPE,
            380_675,
            380_163,
        ),
        SeedModel(
            "seed003_cnn_v2",
            "seed 003 §2.2 Fig. 11: Fashion-MNIST CNN v2",
            fashion_cnn_v2(),
            MNIST_SHAPE,
            1_922_058,
            1_920_330,
        ),
        SeedModel(
            "seed000_nn",
            "seed 000 §3.4: NN (16, 8), TFD 48x48, 7 classes",
            tfd_nn(),
            TFD_SHAPE,
            37_079,
        ),
        SeedModel(
            "seed000_cnn",
            "seed 000 §3.4: CNN 5x5x8, 5x5x16, TFD 48x48, 7 classes",
            tfd_cnn(),
            TFD_SHAPE,
            10_599,
        ),
        SeedModel(
            "seed000_nn_fashion",
            "seed 000 NN (16, 8) on Fashion-MNIST, 10 classes",
            tfd_nn(10),
            MNIST_SHAPE,
        ),
        SeedModel(
            "seed000_cnn_fashion",
            "seed 000 CNN on Fashion-MNIST, 10 classes",
            tfd_cnn(10),
            MNIST_SHAPE,
        ),
    )


def param_table(models: Sequence[SeedModel] | None = None) -> list[dict[str, Any]]:
    """One row per model: name, input, our trainable / non-trainable / total, the report's."""
    rows = []
    for m in seed_models() if models is None else models:
        c = count_params(m.layers, m.input_shape)
        rows.append(
            {
                "model": m.name,
                "report": m.report,
                "input": "×".join(str(s) for s in m.input_shape[1:]),
                "trainable": c.trainable,
                "non_trainable": c.non_trainable,
                "total": c.total,
                "reported": m.reported_params,
                "reported_trainable": m.reported_trainable,
            }
        )
    return rows


def format_param_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of :func:`param_table` rows."""

    def num(v):
        return "—" if v is None else f"{v:,}"

    lines = [
        "| model | input | trainable | non-trainable | total | report (total / trainable) |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        reported = num(r["reported"])
        if r.get("reported_trainable") is not None:
            reported += f" / {num(r['reported_trainable'])}"
        lines.append(
            f"| {r['model']} | {r['input']} | {num(r['trainable'])} | {num(r['non_trainable'])}"
            f" | {num(r['total'])} | {reported} |"
        )
    return "\n".join(lines)


def print_param_table(models: Sequence[SeedModel] | None = None) -> list[dict[str, Any]]:
    """Prints the parameter-count table of the seed models and returns its rows."""
    rows = param_table(models)
    print(format_param_table(rows))
    return rows
