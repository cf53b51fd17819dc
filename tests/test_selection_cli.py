"""`jaxpoison select`: writes indices and a manifest (IFS: its ASR set and LiSSA diagnostics); bad strength
is refused."""

from __future__ import annotations

import json

import numpy as np

from jaxpoison.cli import main
from jaxpoison.influence import LissaConfig


def test_select_writes_indices_and_manifest(tmp_path, capsys):
    out = tmp_path / "sel"
    assert main(["select", "--method", "hfe", "--dataset", "digits", "--attack", "patch", "--epsilon", "0.5",
                 "--rate", "0.03", "--out", str(out)]) == 0  # fmt: skip
    indices = np.load(out / "indices.npy")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == indices.size == round(0.03 * 1437)
    assert np.all(np.diff(indices) > 0) and manifest["method"] == "hfe"
    assert main(["select", "--method", "rs", "--dataset", "digits", "--attack", "patch", "--epsilon", "0.5",
                 "--rate", "0.03", "--out", str(out)]) == 2  # fmt: skip
    assert "already holds" in capsys.readouterr().err


def test_select_refuses_a_strength_outside_unit_interval(tmp_path, capsys):
    assert main(["select", "--method", "rs", "--dataset", "digits", "--attack", "blended", "--epsilon", "1.5",
                 "--rate", "0.03", "--out", str(tmp_path / "x")]) == 2  # fmt: skip
    assert "(0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_select_ifs_manifest_names_its_asr_set_and_lissa_diagnostics(tmp_path, monkeypatch):
    import jaxpoison.selection as selection
    from jaxpoison.selection import IFSConfig

    real = selection.select_poisons
    tiny = IFSConfig(eta=2, surrogate_epochs=1, model="mlp", model_kwargs={"hidden": (8,)}, batch_size=64,
                     lissa=LissaConfig(depth=10, batch_size=64), validation_size=40)  # fmt: skip
    # The same command with a surrogate small enough for a test.
    monkeypatch.setattr(selection, "select_poisons", lambda method, *a, **kw: real(method, *a, tiny, **kw))
    out = tmp_path / "ifs"
    assert main(["select", "--method", "ifs", "--dataset", "digits", "--attack", "blended", "--epsilon", "0.2",
                 "--rate", "0.03", "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    indices = np.load(out / "indices.npy")
    asr = manifest["asr_set"]
    assert asr["source"] == "held-out training images" and asr["size"] == len(asr["indices"]) == 40
    assert asr["data_hash"] == manifest["data_hash"]
    assert not np.isin(asr["indices"], indices).any()
    assert manifest["lissa"]["depth"] == 10 and manifest["lissa"]["finite"]
    assert {"effective_damping", "scale", "relative_change", "iterate_change", "residual"} <= set(manifest["lissa"])
