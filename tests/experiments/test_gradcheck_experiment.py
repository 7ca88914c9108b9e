"""experiments.gradcheck: manual rules vs jax.grad vs central differences per seed model."""

from __future__ import annotations

import json

import jax
import pytest

from experiments import gradcheck as exp
from mljax.data import toy
from mljax.experiment import cli_main, execute
from mljax.nn import gradcheck, models

# Dense + L2 (seed 001 toy), conv + max-pool (seed 004 d), dropout + batch norm (seed 003 MLP).
MODELS = ("seed001_twolayer_toy", "seed004_d", "seed003_mlp")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gradcheck")
    config = exp.Config(quick=True, out=str(out), quiet=True, probes=4, models=MODELS)
    return execute(exp, config)


@pytest.mark.slow
def test_metrics_keys_and_tolerances(quick_run):
    metrics, run_dir = quick_run
    saved = json.loads(run_dir.file("metrics.json").read_text())
    for key in ("max_rel_err_manual_vs_autodiff", "max_rel_err_vs_numeric", "table", "per_model"):
        assert key in saved
    assert metrics["max_rel_err_manual_vs_autodiff"] <= 1e-10
    assert metrics["max_rel_err_vs_numeric"] <= 1e-7
    assert set(metrics["per_model"]) == set(MODELS)
    assert run_dir.file("gradcheck_table.md").exists()
    assert "passes" in run_dir.file("report.md").read_text()


@pytest.mark.slow
def test_table_has_every_parameter_leaf(quick_run):
    metrics, _ = quick_run
    seed = {m.name: m for m in models.seed_models()}
    for name in MODELS:
        shapes = models.variable_shapes(
            seed[name].layers, exp._input_shape(seed[name], exp.Config())
        )
        expected = {
            "/".join(str(getattr(k, "key", k)) for k in path)
            for path, _ in jax.tree_util.tree_flatten_with_path(shapes["params"])[0]
        }
        got = {r["leaf"] for r in metrics["table"] if r["model"] == name}
        assert got == expected, name
    for row in metrics["table"]:
        assert row["probed"] >= 1


@pytest.mark.slow
def test_seed001_matches_report_order_of_magnitude(quick_run):
    # Seed 001's checker prints W1 6.3e-9, b1 1.3e-9, W2 3.4e-9, b2 3.9e-11 on the same toy
    # problem; float64 central differences (step 1e-5, per-entry ratio) land within 10×.
    metrics, _ = quick_run
    ours = metrics["seed001_manual_vs_numeric"]
    assert set(ours) == set(toy.TWOLAYER_TOY_REPORTED_REL_ERR)
    for name, reported in toy.TWOLAYER_TOY_REPORTED_REL_ERR.items():
        assert reported / 10 <= ours[name] <= reported * 10, name


def test_a_wrong_rule_is_caught():
    # The check can fail: a gradient with one entry off is flagged on that leaf only.
    with jax.enable_x64(True):
        model = {m.name: m for m in models.seed_models()}["seed001_twolayer_toy"]
        case = exp.make_case(model, jax.random.key(0), exp.Config())
        f = exp.autodiff_loss(case)
        good = exp.manual_grads(case)
        bad = jax.tree.map(lambda a: a, good)
        bad["layer_3"]["bias"] = good["layer_3"]["bias"].at[0].multiply(1.01)
        ref = jax.jit(jax.grad(f))(case.params)
    errs = gradcheck.compare_trees(bad, ref).to_dict()
    assert errs["layer_3/bias"] > 1e-4
    assert max(v for k, v in errs.items() if k != "layer_3/bias") <= 1e-12


def test_help_and_bad_options(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(exp, ["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--quick", "--probes", "--eps", "--batch", "--out"):
        assert option in out
    assert cli_main(exp, ["--probes", "0"]) == 2
    assert "--probes" in capsys.readouterr().err
    assert cli_main(exp, ["--models", "resnet50"]) == 2
    assert "--models" in capsys.readouterr().err


def test_quick_models_are_seed_models():
    assert set(exp.QUICK_MODELS) <= {m.name for m in models.seed_models()}


def test_kink_diagnosis_tells_a_kink_from_a_smooth_mismatch():
    # relu(θ) at θ = 3e-7 with h = 1e-6: the forward side is exact (slope 1), the backward side
    # crosses the kink (slope 0.3), the central quotient 0.65 misses jax.grad's 1.
    with jax.enable_x64(True):
        relu_loss = lambda p: jax.nn.relu(p["w"][0])  # noqa: E731
        params = {"w": jax.numpy.array([3e-7])}
        forward, backward = exp.one_sided_slopes(relu_loss, params, 0, 1e-6)
        assert forward == pytest.approx(1.0, abs=1e-9)
        assert backward == pytest.approx(0.3, abs=1e-6)
        assert exp.kink_within_step(1.0, forward, backward)
        # A smooth function whose "analytic" gradient is simply wrong: no side matches it.
        smooth = lambda p: p["w"][0] ** 2  # noqa: E731
        forward, backward = exp.one_sided_slopes(smooth, {"w": jax.numpy.array([0.5])}, 0, 1e-6)
        assert not exp.kink_within_step(1.0 * 1.001, forward, backward)


def test_report_names_a_kink_only_when_one_was_found():
    base = {"manual_vs_autodiff": 0.0, "manual_vs_numeric": 1e-3, "autodiff_vs_numeric": 1e-3}
    metrics = {
        "per_model": {
            "kinked": {**base, "kink_found": True, "unexplained_vs_numeric": False},
            "unexplained": {**base, "kink_found": False, "unexplained_vs_numeric": True},
        }
    }
    notes = {r.figure.split(":")[0]: r.note for r in exp.report_rows(metrics)}
    assert "kink within the step" in notes["kinked"]
    assert "kink" in notes["unexplained"] and "no kink found" in notes["unexplained"]
    assert "cause not found" in notes["unexplained"]
