"""Command help read from docstrings, reflowed by the terminal rather than by the source file.

Typer's rich help keeps a docstring's line breaks (in the command list and in every paragraph but
the first), so text wrapped at this code base's line length broke mid-sentence in an 80-column
terminal. :func:`reflow_help` gives each command the docstring with the lines of each paragraph
joined; paragraphs stay apart, and the command lists show each first paragraph whole (click cut
it at about 45 characters). The apps use click's plain help layout (``rich_markup_mode=None``):
rich's table gave an option's help a 16-character column in 80 columns (a terminal, or any
redirected output) and cut long words with an ellipsis ("(runs/train/ckp…")."""
from __future__ import annotations

import inspect

import typer


def reflowed(doc: str) -> str:
    """``doc`` (dedented) with each paragraph on one line."""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines() if line.strip()) for p in paragraphs)


def reflow_help(app: typer.Typer) -> None:
    """Every command of ``app`` (and of its sub-apps) without a ``help=`` of its own gets its
    docstring :func:`reflowed`; call once all commands are registered."""
    for info in app.registered_commands:
        if info.help is None and info.callback is not None and info.callback.__doc__:
            info.help = reflowed(info.callback.__doc__)
        if info.short_help is None and info.help:              # the command list: whole, wrapped (not cut at 45)
            info.short_help = info.help.split("\n\n")[0]
    for group in app.registered_groups:
        text = group.help if isinstance(group.help, str) else group.typer_instance.info.help
        if not isinstance(group.short_help, str) and isinstance(text, str):
            group.short_help = reflowed(text).split("\n\n")[0]
        reflow_help(group.typer_instance)


def version_option(app: typer.Typer, prog: str) -> None:
    """``prog --version`` prints the installed release (``ferdata.__version__``, one for both packages)
    and exits, as a bug report or an environment check asks for."""
    from ferdata import __version__

    def show(value: bool) -> None:
        if value:
            typer.echo(f"{prog} {__version__}")
            raise typer.Exit()

    @app.callback()
    def root(version: bool = typer.Option(False, "--version", callback=show, is_eager=True,
                                          help="Print the version and exit.")) -> None:
        pass
