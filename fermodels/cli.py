"""``fermodels`` command line: the model registry (cards, costs), recipes, export, k-fold summaries."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ferdata.atomic import atomic_write_text, writable_folder
from ferdata.classes import class_names
from ferdata.clihelp import reflow_help, version_option
from ferdata.errors import run_cli

app = typer.Typer(help="FER models: the registry (inputs, sizes, costs), training recipes, export, "
                       "k-fold cross-validation summaries.",
                  no_args_is_help=True, add_completion=False, rich_markup_mode=None)


@app.command("list")
def list_cmd(details: bool = typer.Option(False, help="build each model to show its input size and fields")) -> None:
    """Print every registered model name (with `--details`: input size and sample fields)."""
    from fermodels.registry import create_model, list_models

    width = max(map(len, list_models()))
    for name in list_models():
        if not details:
            typer.echo(name)
            continue
        card = create_model(name).card
        typer.echo(f"{name:<{width}} {card.input_size:>4}px  fields={','.join(card.fields)}")


@app.command()
def info(name: str = typer.Argument(..., help="a registered model name (`fermodels list`)"),
         num_classes: int = typer.Option(7, help="number of output classes: 7 (no Contempt) or 8")) -> None:
    """Parameters used in forward, MACs at the card's input size, fields, losses, keywords and paper."""
    from fermodels.info import model_info
    from fermodels.registry import model_kwargs

    class_names(num_classes)            # 7 or 8, as train.num_classes: the sizes of a model that can be trained
    i = model_info(name, num_classes=num_classes)
    card = i.card
    typer.echo(f"model:       {card.name}")
    typer.echo(f"input size:  {card.input_size} x {card.input_size}")
    typer.echo(f"fields:      {', '.join(card.fields)}")
    typer.echo(f"losses:      {', '.join(card.losses)}")
    keywords = model_kwargs(name, {})       # train.model_kwargs: each keyword the model takes, at its default
    typer.echo(f"keywords:    {', '.join(f'{k}={v!r}' for k, v in keywords.items()) or '(none)'}")
    typer.echo(f"params:      {i.params_used / 1e6:.2f} M used in forward "
               f"({i.params_registered / 1e6:.2f} M registered, {i.params_trainable / 1e6:.2f} M trainable)")
    typer.echo(f"MACs:        {i.macs / 1e9:.2f} G (batch 1; FLOPs = 2 x MACs)")
    typer.echo(f"paper:       {card.paper}")
    typer.echo(f"notes:       {card.notes}")


@app.command()
def recipes() -> None:
    """Named training presets (`dvc exp run -S train.recipe=NAME`), their sources, the datasets they train on
    and the paper's figure."""
    from fermodels.recipes import RECIPES, list_recipes

    for name in list_recipes():
        recipe = RECIPES.get(name)
        # the params.yaml datasets names it trains on: `affectnet7`, not the reader's name (README's `affectnet`)
        typer.echo(f"{name:24s} {recipe.source}\n{'':24s} trains on params.yaml datasets "
                   f"{', '.join(recipe.values['datasets'])} ({recipe.values['num_classes']} classes)\n"
                   f"{'':24s} paper's test accuracy: {recipe.published}")


@app.command()
def export(checkpoint: Path = typer.Argument(..., help="A training checkpoint (runs/train/ckpt/best.pt)."),
           out: Path = typer.Argument(..., help="Output folder."),
           onnx: bool = typer.Option(True, help="Write <model>.onnx."),
           torchscript: bool = typer.Option(True, help="Write <model>.ts.")) -> None:
    """Export to ONNX and TorchScript with preprocessing metadata, and check both against PyTorch."""
    from fermodels.export import export_command

    export_command(checkpoint, out, onnx, torchscript)


@app.command()
def crossval(rev: str = typer.Option("HEAD", help="The baseline commit whose experiments to read."),
             repo: Path = typer.Option(Path("."), help="The project's git repository."),
             out: Optional[Path] = typer.Option(None, help="Also write the summaries as JSON here.")) -> None:
    """Summarise k-fold experiments (`dvc exp run --queue -S shard.fold=0,...,K-1`): per fold, mean, std, pooled."""
    from fermodels.crossval import describe, distinct, read_experiments, summarise

    if out is not None:                         # told before the experiments are read, not after the table
        if out.is_dir():
            raise ValueError(f"--out {out} is a folder: give the JSON file to write (e.g. {out / 'cv.json'})")
        writable_folder(out.parent, "crossval --out")
    runs, skipped = read_experiments(repo, rev)
    for name, why in skipped.items():
        typer.echo(f"skipped experiment {name}: {why}", err=True)
    series = summarise(runs)
    if not series:
        raise ValueError(f"no cross-validation experiments of {rev} (of {len(runs)} with an evaluation): set "
                         f"shard.folds in params.yaml, commit, then `dvc exp run --queue -S shard.fold=0,1,...` "
                         f"and `dvc exp run --run-all` (after `dvc queue start`: wait until `dvc queue status` "
                         f"shows them ended); experiments of another commit: --rev COMMIT (`dvc exp show -A` lists them)")
    typer.echo("\n\n".join(describe(s, d) for s, d in zip(series, distinct(series))))
    if out is not None:
        atomic_write_text(out, json.dumps([s.record() for s in series], indent=2) + "\n")
    if any(s.problem for s in series):
        raise ValueError("some series are not cross-validations (above): their folds share a test split, ran "
                         "different code or inputs, were dealt from different preparations of the data or were "
                         "scored on another split")


version_option(app, "fermodels")
reflow_help(app)


def main() -> None:
    """The ``fermodels`` console script (:mod:`ferdata.errors`: bad input is one line, not a traceback)."""
    run_cli(app)


if __name__ == "__main__":
    main()
