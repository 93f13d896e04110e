"""README's upgrading paragraph promises byte-identical prepared data "unless <the notes> say
otherwise": the notes it points to must exist and name the changes that re-make prepared data
(e4e43ad -> cb7f5ca: NFC keys and split hashes, d0e5dcc; threads out of the recorded detect
settings, e680564 / 1c39559)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _upgrade_paragraph() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("After pulling a newer version of this project")
    return text[start:text.index("\n\n", start)]


def test_the_upgrade_notes_readme_names_exist_and_list_output_changes():
    paragraph = _upgrade_paragraph()
    links = re.findall(r"\]\(([^)#]+)\)", paragraph)
    notes = [ROOT / link for link in links if link.lower().startswith("changes")]
    assert notes, f"README's upgrading paragraph names no notes file: {paragraph!r}"
    assert all(p.is_file() for p in notes), notes
    text = notes[0].read_text(encoding="utf-8")
    for commit, words in {"d0e5dcc": ("NFC", "split"), "e680564": ("threads", "_info.json"),
                          "1c39559": ("score_threshold",)}.items():
        assert commit in text and all(w in text for w in words), (commit, words)
