"""The notebooks' sources: notebooks/NN_name.py (jupytext percent format) and the .ipynb made from them."""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from feds_lab.pipeline import NOTEBOOK_DIR, PipelineConfig
from feds_lab.run_folder import NOTEBOOKS, RunLayout

REPO = Path(__file__).resolve().parents[1]


def _sync_tool():
    spec = importlib.util.spec_from_file_location("sync_notebooks", REPO / "tools" / "sync_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_notebook_has_a_source_and_the_committed_ipynb_is_what_it_makes():
    tool = _sync_tool()
    assert [p.stem for p in tool.sources()] == list(NOTEBOOKS)
    for src in tool.sources():
        ipynb = src.with_suffix(".ipynb")
        assert ipynb.read_text() == tool.render(src), f"{ipynb.name} is stale: run tools/sync_notebooks.py"
    assert tool.main(["--check"]) == 0


def test_committed_notebooks_are_clean_and_name_the_project_kernel():
    for name in NOTEBOOKS:
        nb = json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "feds-lab"
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, name


def _parameters_cell(name: str) -> str:
    nb = json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text())
    cells = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(cells) == 1, name
    return "".join(cells[0]["source"])


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_take_the_run_folder_and_overrides_only(name):
    """Adding a pipeline parameter must not need a notebook edit: no notebook lists parameters."""
    assigned = [t.id for node in ast.parse(_parameters_cell(name)).body for t in node.targets]
    assert assigned == ["run_dir", "overrides"]


def test_a_notebook_reads_every_parameter_from_the_runs_pipeline_yaml(tmp_path):
    data = tmp_path / "photos"
    data.mkdir()
    written = PipelineConfig().updated(dict(
        name="r", runs_dir=str(tmp_path / "runs"), family="transformer", lambdas=[0.1, 0.2, 0.3, 0.4],
        teacher="train", teacher_steps=7, data=str(data), entropy_images=3, train={"crop": 64},
        variants={"feds": {"alpha": 0.5}}, warm_start_ladder=False, anchors=["jpeg"])).resolved()
    layout = RunLayout(written.run_dir)
    layout.root.mkdir(parents=True)
    layout.pipeline_file.write_text(yaml.safe_dump(written.to_dict(), sort_keys=False))  # as run_pipeline does

    seen = PipelineConfig.for_notebook(str(layout.root), {})
    assert seen == written
    assert PipelineConfig.for_notebook(layout.root, {"teacher_steps": 9}).teacher_steps == 9
    moved = tmp_path / "elsewhere" / "r2"
    moved.parent.mkdir()
    layout.root.rename(moved)  # a run folder that moved is still itself
    assert PipelineConfig.for_notebook(moved).run_dir == moved


def test_a_notebook_without_a_run_uses_the_defaults_and_refuses_unknown_overrides(tmp_path):
    cfg = PipelineConfig.for_notebook(tmp_path / "fresh", {"entropy_images": 2})
    assert cfg.entropy_images == 2 and cfg.preset == PipelineConfig().preset and cfg.run_dir == tmp_path / "fresh"
    from feds_lab.errors import FedsLabError

    with pytest.raises(FedsLabError, match="unknown pipeline parameter"):
        PipelineConfig.for_notebook(tmp_path / "fresh", {"teacher_step": 2})
