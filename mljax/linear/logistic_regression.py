"""Multinomial (softmax) logistic regression with an L2 penalty, in scikit-learn's convention.

With weights ``W [K, d]``, intercepts ``b [K]`` (not penalised), sample weights ``s_i`` and
``p_i = softmax(W x_i + b)``, the fit minimises

    J(W, b) = ½‖W‖² + C · Σᵢ sᵢ · (−log p_{i, yᵢ}),

scikit-learn's ``LogisticRegression(C=C)`` objective, so a fit at the same ``C`` is the same
model. The solver is L-BFGS (``optax.lbfgs``, memory 10, zoom line search) in a
``lax.while_loop`` on scikit-learn's scaled objective ``J / (C · Σ sᵢ)`` (values of order
one, kind to float32); it stops, as scikit-learn's lbfgs does, when the largest gradient entry
of that scaled objective is at most ``tol`` or after ``max_iter`` iterations, and also when
an iteration no longer lowers the objective by more than a few float roundings (the line
search then has nothing left to find).

Everything that a study sweeps is a traced argument: ``C``, ``sample_weight`` (zero weights
drop rows, which is how :mod:`mljax.linear.model_selection` fits k folds on one shared ``x``)
and ``feature_mask`` (``[d]`` zeros drop features: they multiply ``W``, not ``x``, so vmapped
members share one copy of ``x``). Vmapping a fit over any of them with ``x`` unbatched turns
the members' ``x Wᵀ`` products into one matmul with the members' weights stacked
(``[n, d] × [d, members · K]``), one pass over ``x`` per evaluation.

Two classes are fitted in the same multinomial form (two weight rows); scikit-learn fits a
binary problem with one weight vector instead, which is the same model as ours at ``2 C``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

from mljax.validation import check_finite, check_int, check_scalar, is_concrete

__all__ = [
    "LogisticRegressionModel",
    "check_labels",
    "fit",
    "objective",
    "predict",
    "predict_proba",
    "score",
]


class LogisticRegressionModel(NamedTuple):
    """A fitted multinomial logistic regression.

    Attributes:
        coef: ``[K, d]`` weights (zero on masked features).
        intercept: ``[K]`` intercepts.
        objective: ``J(W, b)`` at the solution (scikit-learn's convention, module docstring).
        grad_max: the largest |gradient entry| of the scaled objective ``J / (C Σ sᵢ)``.
        n_iter: L-BFGS iterations run.
        converged: ``grad_max <= tol`` (False where ``max_iter`` or the float resolution
            stopped it first).
    """

    coef: jax.Array
    intercept: jax.Array
    objective: jax.Array
    grad_max: jax.Array
    n_iter: jax.Array
    converged: jax.Array


def check_labels(y: Any, n_classes: int | None, *, name: str = "y") -> int:
    """Checks integer labels in ``0..n_classes-1`` with at least two classes present.

    Returns:
        ``n_classes`` (``max(y) + 1`` when None; then ``y`` must be concrete).
    """
    if n_classes is not None:
        n_classes = check_int(n_classes, "n_classes", minimum=2)
    if not jnp.issubdtype(jnp.asarray(y).dtype if is_concrete(y) else y.dtype, jnp.integer):
        raise ValueError(f"{name} must hold integer class labels; got dtype {y.dtype}")
    if not is_concrete(y):
        if n_classes is None:
            raise ValueError(f"n_classes must be given when {name} is traced (inside jit/vmap)")
        return n_classes
    yn = np.asarray(y)
    if yn.ndim != 1:
        raise ValueError(f"{name} must be 1-D [n]; got shape {yn.shape}")
    hi = int(yn.max()) + 1 if n_classes is None else n_classes
    if yn.min() < 0 or yn.max() >= hi:
        raise ValueError(
            f"{name} must hold labels in 0..n_classes-1 = 0..{hi - 1}; got values in "
            f"[{int(yn.min())}, {int(yn.max())}]"
        )
    if np.unique(yn).size < 2:
        raise ValueError(f"{name} must contain at least two classes; got only {int(yn[0])}")
    return hi


def _logits(params, x, mask):
    w, b = params
    w = w if mask is None else w * mask[None, :]
    return jnp.matmul(x, w.T) + b[None, :]


def _scaled_objective(params, x, onehot, sw, c, mask):
    """``J / (C Σ s)``: weighted mean cross-entropy + ‖W‖² / (2 C Σ s)."""
    w, _ = params
    z = _logits(params, x, mask)
    ce = jax.nn.logsumexp(z, axis=1) - jnp.sum(onehot * z, axis=1)
    sw_sum = jnp.sum(sw)
    w_eff = w if mask is None else w * mask[None, :]
    return jnp.sum(sw * ce) / sw_sum + 0.5 * jnp.sum(w_eff**2) / (c * sw_sum)


def objective(model_or_params, x, y, *, C=1.0, sample_weight=None, n_classes=None):
    """``J(W, b) = ½‖W‖² + C Σᵢ sᵢ CEᵢ`` (scikit-learn's objective) at given parameters.

    Args:
        model_or_params: a :class:`LogisticRegressionModel` or ``(coef [K, d], intercept [K])``.
        x: ``[n, d]`` features; y: ``[n]`` labels; C: inverse penalty strength.
        sample_weight: ``[n]`` weights (default ones).
        n_classes: ``K`` (default ``coef.shape[0]``).
    """
    if isinstance(model_or_params, LogisticRegressionModel):
        params = (model_or_params.coef, model_or_params.intercept)
    else:
        params = tuple(jnp.asarray(p) for p in model_or_params)
    k = n_classes or params[0].shape[0]
    x = jnp.asarray(x, params[0].dtype)
    sw = jnp.ones(x.shape[0], x.dtype) if sample_weight is None else jnp.asarray(sample_weight)
    onehot = jax.nn.one_hot(y, k, dtype=x.dtype)
    return _scaled_objective(params, x, onehot, sw.astype(x.dtype), C, None) * C * jnp.sum(sw)


class _State(NamedTuple):
    params: Any
    opt_state: Any
    value: jax.Array
    prev_value: jax.Array
    grad_max: jax.Array
    n_iter: jax.Array


def _fit_impl(x, y, sw, c, mask, *, n_classes, max_iter, tol, memory_size):
    d = x.shape[1]
    dt = x.dtype
    onehot = jax.nn.one_hot(y, n_classes, dtype=dt)
    sw = sw.astype(dt)
    c = jnp.asarray(c, dt)

    def fun(params):
        return _scaled_objective(params, x, onehot, sw, c, mask)

    opt = optax.lbfgs(memory_size=memory_size)
    value_and_grad = optax.value_and_grad_from_state(fun)
    params0 = (jnp.zeros((n_classes, d), dt), jnp.zeros((n_classes,), dt))
    v0, g0 = jax.value_and_grad(fun)(params0)
    # Objective changes below this are float rounding: nothing left for the line search.
    ftol = 4 * jnp.finfo(dt).eps

    def gmax(g):
        return jnp.maximum(jnp.max(jnp.abs(g[0])), jnp.max(jnp.abs(g[1])))

    def cond(s: _State):
        stalled = (s.n_iter > 0) & (
            s.prev_value - s.value <= ftol * jnp.maximum(jnp.abs(s.value), 1.0)
        )
        return (s.n_iter < max_iter) & (s.grad_max > tol) & ~stalled

    def body(s: _State):
        value, grad = value_and_grad(s.params, state=s.opt_state)
        updates, opt_state = opt.update(
            grad, s.opt_state, s.params, value=value, grad=grad, value_fn=fun
        )
        params = optax.apply_updates(s.params, updates)
        new_value = otu.tree_get(opt_state, "value")
        new_grad = otu.tree_get(opt_state, "grad")
        return _State(params, opt_state, new_value, value, gmax(new_grad), s.n_iter + 1)

    s0 = _State(params0, opt.init(params0), v0, v0, gmax(g0), jnp.zeros((), jnp.int32))
    s = jax.lax.while_loop(cond, body, s0)
    w, b = s.params
    if mask is not None:
        w = w * mask[None, :]
    # Intercepts are defined up to a common shift; centre them like scikit-learn's solution.
    b = b - jnp.mean(b)
    return LogisticRegressionModel(
        w, b, s.value * c * jnp.sum(sw), s.grad_max, s.n_iter, s.grad_max <= tol
    )


_fit_jit = jax.jit(_fit_impl, static_argnames=("n_classes", "max_iter", "tol", "memory_size"))


def fit(
    x: jax.Array,
    y: jax.Array,
    *,
    C: float | jax.Array = 1.0,
    max_iter: int = 100,
    tol: float = 1e-4,
    sample_weight: jax.Array | None = None,
    feature_mask: jax.Array | None = None,
    n_classes: int | None = None,
    memory_size: int = 10,
) -> LogisticRegressionModel:
    """Fits multinomial logistic regression by L-BFGS (module docstring).

    Args:
        x: ``[n, d]`` features (float32 by default; float64 under ``jax.enable_x64``).
        y: ``[n]`` integer labels in ``0..n_classes-1``, at least two classes.
        C: inverse penalty strength, > 0 (traced: may be vmapped).
        max_iter: most L-BFGS iterations (scikit-learn's default: 100).
        tol: stop when max |∇(J / (C Σ s))| ≤ tol (scikit-learn's ``tol``).
        sample_weight: ``[n]`` weights ≥ 0 (zeros drop rows); default ones.
        feature_mask: ``[d]`` 0/1 mask; masked features get zero weight.
        n_classes: ``K``; default ``max(y) + 1`` (required when ``y`` is traced).
        memory_size: L-BFGS history length (scipy's default: 10).

    Returns:
        A :class:`LogisticRegressionModel`.

    Raises:
        ValueError (before tracing): ``x`` not 2-D or with NaN/inf; labels outside
        ``0..n_classes-1`` or a single class; ``C <= 0``; bad ``max_iter``, ``tol``,
        ``sample_weight``, ``feature_mask`` or ``memory_size``.
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        x = np.asarray(x)
    if len(x.shape) != 2:
        raise ValueError(f"x must be a 2-D array [n, d]; got shape {tuple(x.shape)}")
    n, d = x.shape
    check_finite(x, "x")
    x = jnp.asarray(x) if jnp.issubdtype(x.dtype, jnp.floating) else jnp.asarray(x, float)
    if not hasattr(y, "shape"):
        y = np.asarray(y)
    if tuple(y.shape) != (n,):
        raise ValueError(f"y must have shape (n,) = ({n},); got {tuple(y.shape)}")
    n_classes = check_labels(y, n_classes)
    check_scalar(C, "C", minimum=0.0, strict_minimum=True)
    max_iter = check_int(max_iter, "max_iter", minimum=1)
    check_scalar(tol, "tol", minimum=0.0)
    memory_size = check_int(memory_size, "memory_size", minimum=1)
    if sample_weight is None:
        sw = jnp.ones((n,), x.dtype)
    else:
        sw = jnp.asarray(sample_weight)
        if sw.shape != (n,):
            raise ValueError(f"sample_weight must have shape (n,) = ({n},); got {sw.shape}")
        if is_concrete(sw):
            swn = np.asarray(sw)
            if not np.all(np.isfinite(swn)) or np.any(swn < 0) or not np.any(swn > 0):
                raise ValueError("sample_weight must be finite, >= 0 and not all zero")
    if feature_mask is not None:
        feature_mask = jnp.asarray(feature_mask)
        if feature_mask.shape != (d,):
            raise ValueError(
                f"feature_mask must have shape (d,) = ({d},); got {feature_mask.shape}"
            )
        feature_mask = feature_mask.astype(x.dtype)
    return _fit_jit(
        x, jnp.asarray(y), sw, C, feature_mask, n_classes=n_classes, max_iter=max_iter,
        tol=float(tol), memory_size=memory_size,
    )  # fmt: skip


def predict_proba(model: LogisticRegressionModel, x: jax.Array) -> jax.Array:
    """Class probabilities ``[n, K]``."""
    return jax.nn.softmax(_logits((model.coef, model.intercept), jnp.asarray(x), None), axis=-1)


def predict(model: LogisticRegressionModel, x: jax.Array) -> jax.Array:
    """Most probable class ``[n]`` (int32)."""
    z = _logits((model.coef, model.intercept), jnp.asarray(x, model.coef.dtype), None)
    return jnp.argmax(z, axis=-1).astype(jnp.int32)


def score(
    model: LogisticRegressionModel, x: jax.Array, y: jax.Array, sample_weight=None
) -> jax.Array:
    """Accuracy (weighted by ``sample_weight`` when given)."""
    correct = (predict(model, x) == jnp.asarray(y)).astype(model.coef.dtype)
    if sample_weight is None:
        return jnp.mean(correct)
    sw = jnp.asarray(sample_weight, model.coef.dtype)
    return jnp.sum(sw * correct) / jnp.sum(sw)
