"""`jaxpoison select`: writes indices and a manifest; bad strength is refused."""

from __future__ import annotations

import json

import numpy as np

from jaxpoison.cli import main


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
    assert "[0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
