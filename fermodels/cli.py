"""``fermodels`` command line: list the registered models and show one model's card and cost."""
from __future__ import annotations

import typer

from fermodels.info import model_info
from fermodels.registry import create_model, list_models

app = typer.Typer(help="FER model zoo: registered models, their inputs, sizes and costs.",
                  no_args_is_help=True)


@app.command("list")
def list_cmd(details: bool = typer.Option(False, help="build each model to show its input size and fields")) -> None:
    """Print every registered model name (with ``--details``: input size and sample fields)."""
    for name in list_models():
        if not details:
            typer.echo(name)
            continue
        card = create_model(name).card
        typer.echo(f"{name:<16} {card.input_size:>4}px  fields={','.join(card.fields)}")


@app.command()
def info(name: str, num_classes: int = typer.Option(7, help="number of output classes")) -> None:
    """Parameters used in forward, MACs at the card's input size, fields, losses and paper."""
    i = model_info(name, num_classes=num_classes)
    typer.echo(f"model:       {i.name}")
    typer.echo(f"input size:  {i.input_size} x {i.input_size}")
    typer.echo(f"fields:      {', '.join(i.fields)}")
    typer.echo(f"losses:      {', '.join(i.losses)}")
    typer.echo(f"params:      {i.params_used / 1e6:.2f} M used in forward "
               f"({i.params_registered / 1e6:.2f} M registered, {i.params_trainable / 1e6:.2f} M trainable)")
    typer.echo(f"MACs:        {i.macs / 1e9:.2f} G (batch 1; FLOPs = 2 x MACs)")
    typer.echo(f"paper:       {i.paper}")
    typer.echo(f"notes:       {i.notes}")


if __name__ == "__main__":
    app()
