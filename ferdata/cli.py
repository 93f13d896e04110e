"""The `ferdata` command line: thin typer commands over the library functions."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="FER data pipeline: read datasets, detect/align faces, derive, shard, verify.",
                  no_args_is_help=True, add_completion=False)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(name)s: %(message)s")


@app.command()
def prepare(
    dataset: str = typer.Argument(..., help="Dataset name from params.yaml `datasets` (e.g. sample, affectnet)."),
    root: Optional[Path] = typer.Option(None, help="Dataset root folder (overrides params.yaml)."),
    out: Path = typer.Option(Path("data"), help="Output folder; results go to OUT/<dataset>/{detect,aligned,derived,shards}."),
    params: Path = typer.Option(Path("params.yaml"), help="Parameters file."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run detect -> align -> derive -> shard for one dataset (the same functions as `dvc repro`)."""
    from ferdata.params import load_params
    from ferdata.prepare import prepare as run

    _setup_logging(verbose)
    reports = run(dataset, load_params(params), out, root)
    for stage, r in reports.items():
        typer.echo(f"{stage:7s} kept {r['kept']:7d}  dropped {r['dropped_total']:6d}  {r['dropped'] or ''}")


@app.command()
def datasets() -> None:
    """List dataset readers and what each expects on disk."""
    from ferdata.datasets import READERS

    for name in READERS.names():
        reader = READERS.get(name)
        typer.echo(f"{name:12s} {reader.expects}")
        if reader.option_defaults:
            typer.echo(f"{'':12s} options: {json.dumps(dict(reader.option_defaults))}")


@app.command()
def backends() -> None:
    """List face backends and whether each can run here without downloading."""
    from ferdata.faces import BACKENDS

    for name in BACKENDS.names():
        typer.echo(f"{name:15s} {'available' if BACKENDS.get(name).is_available() else 'weights missing'}")


@app.command()
def verify(shards: Path = typer.Argument(..., help="A shards folder (with <split>/_info.json).")) -> None:
    """Check every shard's sha256 and sample count against _info.json."""
    from ferdata.verify import verify_shards

    problems = verify_shards(shards)
    for p in problems:
        typer.echo(p, err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{shards}: all shards match their _info.json")


@app.command()
def sample(
    out: Path = typer.Argument(..., help="Where to write the sample dataset."),
    params: Path = typer.Option(Path("params.yaml"), help="Parameters file (section `sample`)."),
) -> None:
    """Generate the bundled smoke-test dataset (AffectNet layout)."""
    from ferdata.params import load_params
    from ferdata.sample import make_affectnet_sample

    _setup_logging(False)
    summary = make_affectnet_sample(out, **load_params(params)["sample"])
    typer.echo(json.dumps(summary, indent=2))


def _register_optional_commands() -> None:
    """Commands whose implementation lives next to the library code they wrap."""
    from ferdata.show import show_command
    from fermodels.predict import predict_command

    app.command("show")(show_command)
    app.command("predict")(predict_command)


_register_optional_commands()

if __name__ == "__main__":
    app()
