"""experiments.twolayer (SPEC E3): the seed's gradients (manual rules, jax.grad and the seed's
closed forms in float64), a sweep member equal to its single run, the missing-data path, the
seed's split on the real files, and one quick run on small CIFAR-format files written here."""

import dataclasses
import json
import pickle

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import experiments
from experiments import reproduce
from experiments import twolayer as e3
from mljax.data import images
from mljax.experiment import cli_main, execute
from mljax.nn import models
from mljax.results import to_jsonable
from mljax.train import loop, tasks


def _seed_loss_and_grads(x, y, w1, b1, w2, b2, lam):
    """The seed's loss and its closed-form gradients (Question 2), in NumPy float64."""
    n = x.shape[0]
    z1 = x @ w1 + b1
    a = np.maximum(z1, 0)
    z = a @ w2 + b2
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    loss = -np.mean(np.log(p[np.arange(n), y])) + lam * (np.sum(w1**2) + np.sum(w2**2))
    dz = (p - np.eye(p.shape[1])[y]) / n  # dJ/dz = (softmax − onehot)/N
    dz1 = (dz @ w2.T) * (z1 > 0)
    return loss, {
        "layer_1": {"kernel": x.T @ dz1 + 2 * lam * w1, "bias": dz1.sum(0)},
        "layer_3": {"kernel": a.T @ dz + 2 * lam * w2, "bias": dz.sum(0)},
    }


def test_manual_rules_and_jax_grad_match_the_seeds_gradients_in_float64(x64):
    """The seed's toy problem (5 inputs of dim 4, hidden 10, 3 classes), λ = 0.05: our manual
    rules + the 2λW penalty (l2 = 2λ) and jax.grad of J both equal the seed's closed forms."""
    lam = 0.05
    rng = np.random.default_rng(0)  # inputs from numpy: no eager float64 op-by-op programs
    x = jnp.asarray(rng.normal(size=(5, 4)))
    y = jnp.array([0, 1, 2, 2, 1])
    task = tasks.layer_task(models.two_layer_net(10, 3), (1, 4), param_dtype=jnp.float64)
    shapes = jax.eval_shape(task.init, jax.random.key(0))[0]
    params = jax.tree.map(lambda a: jnp.asarray(0.5 * rng.normal(size=a.shape)), shapes)
    hp = e3.hyper(e3.Setting(reg=lam))

    @jax.jit  # one program per side, not an eager op-by-op float64 run
    def manual_rules(p):
        loss, grads, _ = task.manual_grad(p, (x, y, jnp.ones(5, bool)), None, {}, hp)
        return loss, loop.penalty_grads(grads, p, 0.0, hp.l2)

    loss, manual = manual_rules(params)

    def seed_j(p):
        logits, _ = task.apply(p, {}, x, train=True, rng=None, hparams=hp)
        ce = jnp.mean(jax.nn.logsumexp(logits, -1) - logits[jnp.arange(5), y])
        return ce + lam * (
            jnp.sum(p["layer_1"]["kernel"] ** 2) + jnp.sum(p["layer_3"]["kernel"] ** 2)
        )

    seed_j = jax.jit(seed_j)
    auto = jax.jit(jax.grad(seed_j))(params)
    np_p = jax.tree.map(np.asarray, params)
    ref_loss, ref = _seed_loss_and_grads(
        np.asarray(x), np.asarray(y), np_p["layer_1"]["kernel"], np_p["layer_1"]["bias"],
        np_p["layer_3"]["kernel"], np_p["layer_3"]["bias"], lam,
    )  # fmt: skip
    ce_only = ref_loss - lam * sum(np.sum(np_p[n]["kernel"] ** 2) for n in ("layer_1", "layer_3"))
    np.testing.assert_allclose(loss, ce_only, rtol=1e-12)  # the engine's loss is the data term
    np.testing.assert_allclose(seed_j(params), ref_loss, rtol=1e-12)
    chex.assert_trees_all_close(manual, ref, rtol=1e-8, atol=1e-12)
    chex.assert_trees_all_close(auto, ref, rtol=1e-8, atol=1e-12)


def _numpy_course_code_train(x, y, p, batches, lr, reg, decay_every):
    """The course code's loop in numpy with its hand-derived gradients (dJ/dz = (softmax −
    onehot)/N, 2λW), fed the same batches and initial weights."""
    p = {k: np.array(v, np.float64) for k, v in p.items()}
    for it, idx in enumerate(batches):
        xb, yb = x[idx], y[idx]
        h = np.maximum(xb @ p["W1"] + p["b1"], 0)
        z = h @ p["W2"] + p["b2"]
        e = np.exp(z - z.max(1, keepdims=True))
        dz = e / e.sum(1, keepdims=True)
        dz[np.arange(len(idx)), yb] -= 1
        dz /= len(idx)
        dh = (dz @ p["W2"].T) * (h > 0)
        g = {"W2": h.T @ dz + 2 * reg * p["W2"], "b2": dz.sum(0),
             "W1": xb.T @ dh + 2 * reg * p["W1"], "b1": dh.sum(0)}  # fmt: skip
        p = {k: p[k] - lr * g[k] for k in p}
        if it % decay_every == 0:
            lr *= e3.LR_DECAY
    return p


def test_course_code_loop_is_the_seeds_train_loop(x64):
    """course_code_train against a numpy transcription of TwoLayerNet.train: batches drawn
    with replacement from the same keys, the rate decayed at it % (N / batch) == 0 (so at
    iterations 0, 3, 6 for N / batch = 3), the same final weights in float64."""
    rng = np.random.default_rng(0)
    n, d, batch, iters = 30, 7, 10, 8
    x, y = rng.normal(size=(n, d)) * 50, rng.integers(0, 10, n)
    setting = e3.Setting((6,), batch, iters, 0.5, 0.25, 1.0)
    key = jax.random.key(4)
    got = e3.course_code_train(jnp.asarray(x), jnp.asarray(y), setting, key, iterations=iters)
    k1, k2, k3 = jax.random.split(key, 3)
    init = {
        "W1": e3.INIT_STD * jax.random.normal(k1, (d, 6), jnp.float64),
        "b1": np.zeros(6),
        "W2": e3.INIT_STD * jax.random.normal(k2, (6, 10), jnp.float64),
        "b2": np.zeros(10),
    }
    batches = [np.asarray(jax.random.randint(jax.random.fold_in(k3, it), (batch,), 0, n))
               for it in range(iters)]  # fmt: skip
    assert any(len(set(b.tolist())) < batch for b in batches)  # drawn with replacement
    want = _numpy_course_code_train(x, y, init, batches, 0.5, 0.25, n // batch)
    chex.assert_trees_all_close(dict(got), want, rtol=1e-10, atol=1e-14)
    # One decay fewer (as if iteration 0 did not count) gives other weights: the test sees it.
    other = _numpy_course_code_train(x, y, init, batches, 0.5, 0.25, 4)
    assert not np.allclose(other["W1"], want["W1"], rtol=1e-6)


def test_iterations_become_whole_epochs():
    assert e3.steps_per_epoch(49_000, 200) == 245
    assert e3.epochs_for(1000, 49_000, 200) == 4  # 980 steps
    assert e3.epochs_for(4000, 49_000, 200) == 16  # 3,920 steps
    assert e3.epochs_for(4000, 49_000, 300) == 25  # 163 steps per epoch
    assert e3.epochs_for(10, 1000, 200) == 2 and e3.epochs_for(1, 1000, 200) == 1


@pytest.mark.slow
def test_a_sweep_member_equals_its_single_run():
    """The λ program (seeds × λ as one vmapped sweep) gives each member what loop.train gives
    it alone from the same key."""
    k = jax.random.split(jax.random.key(1), 2)
    x = jax.random.normal(k[0], (60, 12))
    y = jax.random.randint(k[1], (60,), 0, 10)
    split = e3.Split(loop.Data(x[:40], y[:40], x[40:], y[40:]), x[40:], y[40:], 20, "test")
    cfg = e3.Config(sweep_seeds=2)
    setting = e3.Setting((5,), 10, 12, 1e-2, 0.25)
    task = e3.make_task((5,), 12)
    key = jax.random.key(7)
    run = e3.run_program(task, setting, {"l2": [0.0, 1.0]}, 2, split, cfg, key)
    assert run.epochs == 3 and run.iterations == 12 and len(run.members) == 4
    m = 3  # λ = 0.5 (l2 = 1), seed 1
    assert run.members[m].seed == 1 and run.members[m].hyper.l2 == 1.0
    alone = loop.train(task, e3.train_config(3, 10, "manual"), split.data,
                       run.members[m].hyper, key=jax.random.fold_in(key, 1))  # fmt: skip
    chex.assert_trees_all_close(
        jax.tree.map(lambda a: a[m], run.result.params), alone.params, rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(run.val_acc[m], alone.history["val_accuracy"][-1], atol=1e-6)


@pytest.fixture
def no_cifar(monkeypatch, tmp_path):
    """No CIFAR-10 anywhere (no TFDS either)."""
    monkeypatch.setenv("MLJAX_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    def no_tfds(*args, **kwargs):
        raise RuntimeError("no tensorflow-datasets in tests")

    monkeypatch.setattr(images, "_load_tfds", no_tfds)
    return tmp_path


def test_missing_cifar_is_a_not_run_row_with_the_install_command(no_cifar):
    info = experiments.get("twolayer")
    assert info.spec == "E3" and info.seed_file.startswith("001_") and info.load() is e3
    outcome = reproduce.run_one(info, reproduce.Config(quick=True, out=str(no_cifar / "r")))
    assert outcome.status == "skipped"
    assert outcome.reason.startswith("CIFAR-10 not installed")
    assert "cifar-10-python.tar.gz" in outcome.reason and "--data-dir" in outcome.reason
    assert "not run" in reproduce.render([outcome], reproduce.Config(), 0.0)


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(e3, ["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(e3.Config):
        assert "--" + f.name.replace("_", "-") in text
    assert "autodiff" in text and "keep_prob" in text


@pytest.mark.parametrize(
    "args", [["--sweeps", "nope"], ["--grad", "numeric"], ["--sweep-seeds", "0"],
             ["--iteration-scale", "2"], ["--n-val", "0"]],
)  # fmt: skip
def test_bad_option_is_an_error_before_any_work(args, tmp_path, capsys):
    out = tmp_path / "run"
    try:
        code = cli_main(e3, [*args, "--quick", "--out", str(out)])
    except SystemExit as e:
        code = e.code
    assert code == 2 and not (out / "metrics.json").exists()


# ----------------------------------------------------------------------------- small files


def _write_cifar(d, per_batch: int = 60, n_test: int = 40) -> None:
    """CIFAR-10 python batches: class c brightens its own 4-row band of the image."""
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(n):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 120, (n, 32, 32, 3)).astype(np.uint8)
        for i, c in enumerate(y):
            x[i, 3 * c : 3 * c + 3] = 250
        # stored channels first, as the original files
        return {"data": x.transpose(0, 3, 1, 2).reshape(n, -1), "labels": [int(v) for v in y]}

    for i in range(1, 6):
        (d / f"data_batch_{i}").write_bytes(pickle.dumps(batch(per_batch)))
    (d / "test_batch").write_bytes(pickle.dumps(batch(n_test)))
    names = {"label_names": list(images.CIFAR10_CLASSES)}
    (d / "batches.meta").write_bytes(pickle.dumps(names))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick run of every sweep on 250 small images (the module's tests share it)."""
    root = tmp_path_factory.mktemp("e3")
    _write_cifar(root / "cifar10" / "cifar-10-batches-py")
    cfg = e3.Config(quick=True, quiet=True, data_dir=str(root / "cifar10"), out=str(root / "run"),
                    n_train=250, n_val=50)  # fmt: skip
    metrics, run_dir = execute(e3, cfg)
    return metrics, run_dir


@pytest.mark.slow
def test_quick_run_writes_the_issues_metrics_and_figures(quick_run):
    metrics, run_dir = quick_run
    assert set(metrics["baseline"]) >= {"val_acc_mean"}
    assert set(metrics["best"]) >= {"test_acc_mean", "test_acc_std", "val_acc_mean"}
    assert set(metrics["sweeps"]) == {
        "iterations", "learning_rate", "hidden", "batch", "reg", "keep_prob", "pca", "depth"
    }  # fmt: skip
    for name, rows in metrics["sweeps"].items():
        assert rows, name
        for r in rows:
            assert {"val_acc_mean", "val_acc_std", "seed_val_acc"} <= set(r), name
    assert metrics["_meta"]["n_test"] == 40 and metrics["_meta"]["test_batch_size"] == 40
    # the bands of the class-coded images are learnable: the best net beats chance
    assert metrics["best"]["test_acc_mean"] > 0.3
    cl = metrics["best"]["course_code_loop"]
    # the course code's loop (batches with replacement, 4,000 × 0.01 iterations) learns too
    assert cl["steps"] == 40 and len(cl["test_acc_per_seed"]) == metrics["_meta"]["seeds"]
    assert cl["test_acc_mean"] > 0.3
    ag = metrics["best"]["agreement"]
    # manual rules and jax.grad from the same keys: the same run, bit for bit
    assert ag["max_rel_param_diff"] == 0 and ag["test_acc_diff"] == 0
    for png in ("curves.png", "first_layer.png", "pca_variance.png"):
        assert (run_dir.path / png).is_file()
    report = (run_dir.path / "report.md").read_text()
    assert "Table 5" in report and "50.9" in report and "Quick mode" in report
    assert "identical, bit for bit" in report and "The course code's loop, literally" in report


@pytest.mark.realdata("cifar10")
@pytest.mark.slow
def test_the_seeds_split_of_the_real_files():
    s = e3.load_data(e3.Config())
    assert s.data.x_train.shape == (49_000, 3072) and s.data.x_val.shape == (1_000, 3072)
    assert s.x_test.shape[0] == min(1000, s.n_test_available)
    np.testing.assert_allclose(np.asarray(s.data.x_train[:2000]).mean(), 0.0, atol=2.0)
    np.testing.assert_allclose(np.asarray(s.data.x_train).mean(0), 0.0, atol=1e-3)
    if s.n_test_available == 1000:  # ../shared/data: the first 1,000 test images
        counts = np.bincount(np.asarray(s.y_test), minlength=10)
        assert counts.tolist() == [103, 89, 100, 103, 90, 86, 112, 102, 106, 109]


@pytest.mark.slow
def test_a_rerun_reuses_the_finished_sweeps(quick_run, monkeypatch):
    """The same settings and --out again: every sweep comes from stages/ (the sweep functions
    are not called), with the same rows; --fresh recomputes them."""
    metrics, run_dir = quick_run
    cfg = e3.Config(quick=True, quiet=True, data_dir=str(run_dir.path.parent / "cifar10"),
                    out=str(run_dir.path), n_train=250, n_val=50)  # fmt: skip

    def not_again(*args, **kwargs):
        raise AssertionError("a finished sweep ran again")

    with monkeypatch.context() as m:
        m.setattr(e3, "run_sweep", not_again)
        again, _ = execute(e3, cfg)
    assert again["sweeps"] == json.loads(json.dumps(to_jsonable(metrics["sweeps"])))
    assert sorted(again["_meta"]["sweeps_reused"]) == sorted(
        ["iterations", "reg", "keep_prob", "hidden", "pca", "depth", "batch"]
    )
    assert "Reused from an earlier run" in (run_dir.path / "report.md").read_text()
    calls = []
    real = e3.run_sweep
    monkeypatch.setattr(e3, "run_sweep", lambda name, *a: calls.append(name) or real(name, *a))
    fresh, _ = execute(e3, dataclasses.replace(cfg, fresh=True, sweeps=("reg",)))
    assert calls == ["reg"] and fresh["_meta"]["sweeps_reused"] == []
