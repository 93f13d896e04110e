"""Command help read from docstrings, reflowed by the terminal rather than by the source file.

Typer's rich help keeps a docstring's line breaks (in the command list and in every paragraph but
the first), so text wrapped at this code base's line length broke mid-sentence in an 80-column
terminal. :func:`reflow_help` gives each command the docstring with the lines of each paragraph
joined; paragraphs stay apart."""
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
    for group in app.registered_groups:
        reflow_help(group.typer_instance)
