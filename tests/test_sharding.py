"""Data-parallel training on 8 simulated CPU devices equals training on 1 device.

JAX fixes the device count when its backend starts, so the comparison runs in a
fresh interpreter with ``jax_num_cpu_devices = 8`` and trains each model twice in
it: on a 1-device mesh and on an 8-device mesh, same seed, same batches.

Tolerances: the sharded step sums per-device partial results, so float32 results
differ from the single-device ones in the last bits. For the BatchNorm ResNet these
rounding differences are amplified by training (normalising by small batch
variances), so it is compared in float64, where both runs must agree to 1e-10 —
showing they compute the same function, not merely similar ones.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np

SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    import numpy as np
    jax.config.update("jax_num_cpu_devices", 8)
    jax.config.update("jax_enable_x64", True)
    from jaxpoison.data import load_dataset
    from jaxpoison.models import create_model, to_functional
    from jaxpoison.sharding import data_mesh
    from jaxpoison.training import reference_recipe, train

    data = load_dataset("digits", "train").subset(range(256))
    recipe = reference_recipe(epochs=2).replace(batch_size=32, learning_rate=0.05, crop_padding=1)
    out = {"devices": jax.device_count()}
    for name, kw, dtype in (("cnn", {}, np.float32), ("resnet18", {"width": 4}, np.float64)):
        model = to_functional(create_model(name, data.image_shape, data.num_classes, seed=0, **kw), data.mean, data.std)
        cast = lambda tree: jax.tree.map(lambda a: a.astype(dtype), tree)
        model = model.replace(params=cast(model.params), state=cast(model.state))
        runs = [train(model, data, recipe, seed=1, mesh=data_mesh(n), progress=False) for n in (1, 8)]
        leaves = [jax.tree.leaves(jax.device_get(r.params)) for r in runs]
        out[name] = {
            "losses": [r.step_losses.astype(float).tolist() for r in runs],
            "loss_dtype": str(runs[0].step_losses.dtype),
            "param_max_abs_diff": max(float(np.abs(a - b).max()) for a, b in zip(*leaves)),
            "param_devices": len(jax.tree.leaves(runs[1].params)[0].sharding.device_set),
        }
    print("RESULT" + json.dumps(out))
    """
)


def _run():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


def test_eight_devices_match_one_device():
    result = _run()
    assert result["devices"] == 8
    cnn, resnet = result["cnn"], result["resnet18"]
    assert cnn["loss_dtype"] == "float32" and resnet["loss_dtype"] == "float64"
    assert cnn["param_devices"] == resnet["param_devices"] == 8  # really replicated over 8 devices
    for run, rtol, param_atol in ((cnn, 1e-5, 1e-5), (resnet, 1e-10, 1e-10)):
        one, eight = (np.asarray(x) for x in run["losses"])
        assert one.shape == eight.shape == (16,)
        assert np.ptp(one) > 0.1  # a real, moving trajectory
        np.testing.assert_allclose(eight, one, rtol=rtol)
        assert run["param_max_abs_diff"] < param_atol


INFLUENCE_SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    import numpy as np
    jax.config.update("jax_num_cpu_devices", 8)
    jax.config.update("jax_enable_x64", True)
    from jaxpoison.data import load_dataset
    from jaxpoison.influence import FactorConfig, ScoreConfig, fit_factors, pairwise_scores, self_scores
    from jaxpoison.models import create_model, to_functional
    from jaxpoison.sharding import data_mesh

    data = load_dataset("digits", "train").subset(range(100))  # 100: the last batch of 32 is padded
    model = to_functional(create_model("cnn", data.image_shape, data.num_classes, seed=0, width=4, hidden=16))
    cast = lambda tree: jax.tree.map(lambda a: a.astype(np.float64), tree)
    model = model.replace(params=cast(model.params), state=cast(model.state))
    out = {}
    for n in (1, 8):
        mesh = data_mesh(n)
        factors = fit_factors(model, data, FactorConfig(batch_size=32, seed=3), mesh=mesh, progress=False)
        config = ScoreConfig(damping=1e-3, batch_size=32)
        pair = pairwise_scores(model, data, data.images[:4], data.labels[:4], factors, config, mesh=mesh,
                               progress=False)
        own = self_scores(model, data, factors, config, mesh=mesh, progress=False)
        out[n] = {"pair": pair.values.tolist(), "self": own.values.tolist(),
                  "lambda": np.asarray(factors.blocks["fc1"]["eigenvalues"]).ravel().tolist()}
    print("RESULT" + json.dumps(out))
    """
)


def test_influence_on_eight_devices_matches_one_device():
    proc = subprocess.run([sys.executable, "-c", INFLUENCE_SCRIPT], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    result = json.loads(line[len("RESULT") :])
    for key in ("pair", "self", "lambda"):
        one, eight = np.asarray(result["1"][key]), np.asarray(result["8"][key])
        assert one.size > 0 and np.ptp(one) > 0
        np.testing.assert_allclose(eight, one, rtol=1e-9, atol=1e-12 * np.abs(one).max(), err_msg=key)


DONATION_SCRIPT = textwrap.dedent(
    """
    import jax
    jax.config.update("jax_num_cpu_devices", 2)
    from jaxpoison.data import load_dataset
    from jaxpoison.models import create_model, to_functional
    from jaxpoison.sharding import data_mesh, replicate
    from jaxpoison.training import TrainRecipe, train

    data = load_dataset("digits", "train").first(64)
    victim = to_functional(create_model("cnn", data.image_shape, data.num_classes, seed=0), data.mean, data.std)
    victim = victim.replace(params=jax.device_put(victim.params, jax.devices()[0]))  # as a loaded model is
    for _ in range(2):  # two unlearners continue from the same victim, as CF and cf_reset do
        train(victim, data, TrainRecipe(epochs=1, batch_size=32), mesh=data_mesh(2), progress=False)
    copy = replicate(data_mesh(2), victim.params)
    print("DELETED", sum(leaf.is_deleted() for leaf in jax.tree.leaves(victim.params)),
          sum(leaf.is_deleted() for leaf in jax.tree.leaves(copy)))
    """
)


def test_training_on_a_mesh_never_deletes_the_callers_model():
    proc = subprocess.run([sys.executable, "-c", DONATION_SCRIPT], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DELETED 0 0" in proc.stdout
