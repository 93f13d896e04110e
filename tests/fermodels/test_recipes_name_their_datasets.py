"""`fermodels recipes` names the params.yaml datasets each recipe trains on: the AffectNet recipes train on
`affectnet7` / `affectnet8`, where README's datasets example names the entry `affectnet`, and `dvc exp run -S
train.recipe=...` then failed at select with no word of the name expected (audit h116)."""
from __future__ import annotations

from typer.testing import CliRunner

from fermodels.cli import app
from fermodels.recipes import RECIPES, list_recipes


def test_recipes_lists_the_datasets_each_recipe_trains_on():
    res = CliRunner().invoke(app, ["recipes"])
    assert res.exit_code == 0, res.output
    blocks = {}
    for line in res.output.splitlines():
        if not line.startswith(" "):
            name = line.split()[0]
        blocks[name] = blocks.get(name, "") + line
    for name in list_recipes():
        datasets = RECIPES.get(name).values["datasets"]
        assert f"trains on params.yaml datasets {', '.join(datasets)}" in " ".join(blocks[name].split()), name
    assert "affectnet7" in blocks["cmnet_affectnet7"]
