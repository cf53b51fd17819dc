"""Every notebook is a jupytext pair in sync, executes from top to bottom, and shows what it promises."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.py"))

# What each notebook must print (substrings of its stdout, in this order) and how many figures it draws.
EXPECTED = {
    "training_quickstart": (("devices:", "parameters", "test accuracy:"), 2),
    "delta_influence_quickstart": (("poisons among", "{'tpr':", "| Δ-Influence | eu |"), 2),
    "bring_your_own_model": (("poisons among", "victim: clean accuracy", "{'tpr':", "after unlearning:",
                              "Equinox victim:", "Equinox {'tpr':", "Equinox after unlearning:"), 1),
}


def _code(notebook) -> list[str]:
    return [cell.source.strip() for cell in notebook.cells if cell.cell_type == "code"]


def execute_notebook(notebook, directory: Path, expect: tuple[str, ...] = (), figures: int = 0) -> str:
    """Run ``notebook`` in a fresh kernel inside ``directory``; fail the test unless it ran clean.

    Errors are kept as cell outputs (``allow_errors``) instead of raised, so this function is
    what judges them: any error output, an unexecuted code cell, an ``expect`` string missing
    from stdout (in order) or fewer than ``figures`` PNG figures fails the calling test.

    Returns:
      The notebook's stdout, all cells joined.
    """
    resources = {"metadata": {"path": str(directory)}}
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources=resources, allow_errors=True).execute()
    stdout, drawn = [], 0
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("execution_count") is None:
            pytest.fail(f"code cell {index} never ran:\n{cell.source}")
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                pytest.fail(f"code cell {index} raised {output.ename}: {output.evalue}\n--- cell ---\n{cell.source}")
            if output.output_type == "stream" and output.name == "stdout":
                stdout.append(output.text)
            if output.output_type == "display_data" and "image/png" in output.get("data", {}):
                drawn += 1
    text = "".join(stdout)
    position = 0
    for wanted in expect:
        found = text.find(wanted, position)
        if found < 0:
            pytest.fail(f"the notebook's output lacks {wanted!r} (after offset {position}):\n{text}")
        position = found + len(wanted)
    if drawn < figures:
        pytest.fail(f"the notebook drew {drawn} figure(s), expected {figures}")
    return text


@pytest.fixture
def inline_figures(monkeypatch):
    # The inline backend turns plt.show() into PNG outputs the test can count; Agg would draw nothing.
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")


@pytest.mark.parametrize("script", NOTEBOOKS, ids=lambda p: p.stem)
def test_ipynb_is_in_sync_with_its_script(script):
    paired = script.with_suffix(".ipynb")
    assert paired.exists(), f"run: jupytext --to ipynb {script}"
    assert _code(nbformat.read(paired, as_version=4)) == _code(jupytext.read(script)), (
        f"{paired.name} is out of date; run: jupytext --sync {script}"
    )


def test_every_notebook_has_expectations():
    assert {script.stem for script in NOTEBOOKS} == set(EXPECTED)


@pytest.mark.parametrize("script", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(script, tmp_path, inline_figures):
    expect, figures = EXPECTED[script.stem]
    text = execute_notebook(jupytext.read(script), tmp_path, expect, figures)
    if script.stem == "training_quickstart":
        assert float(re.search(r"test accuracy: ([0-9.]+)", text).group(1)) > 0.9
    if script.stem == "delta_influence_quickstart":
        metrics = ast.literal_eval(re.search(r"^\{'tpr'.*\}$", text, re.MULTILINE).group(0))
        assert metrics["tpr"] >= 0.9 and metrics["n_flagged"] > 0  # the tiny preset's poisons are found
        assert (tmp_path / "runs" / "notebook" / "report.md").is_file()
    if script.stem == "bring_your_own_model":
        linen_before, linen_after, eqx_before, eqx_after = (float(v) for v in re.findall(r"poison success ([0-9.]+)",
                                                                                            text))  # fmt: skip
        assert linen_before > 0.5 and linen_after < linen_before / 2  # a working backdoor, then most of it unlearned
        assert eqx_before > 0.5 and eqx_after < eqx_before


def _tiny_notebook(*sources: str):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


def test_the_helper_fails_on_a_failing_cell(tmp_path):
    failing = _tiny_notebook("print('before')", "raise RuntimeError('cell exploded')", "print('after')")
    with pytest.raises(pytest.fail.Exception, match="cell 1 raised RuntimeError: cell exploded"):
        execute_notebook(failing, tmp_path)


def test_the_helper_fails_on_missing_output(tmp_path):
    assert execute_notebook(_tiny_notebook("print('one')", "print('two')"), tmp_path, ("one", "two")) == "one\ntwo\n"
    with pytest.raises(pytest.fail.Exception, match="lacks 'two'"):  # present, but in the wrong order
        execute_notebook(_tiny_notebook("print('two')", "print('one')"), tmp_path, ("one", "two"))
