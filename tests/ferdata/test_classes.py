"""Canonical class tables, synonyms and the explicit-mapping helper.

Expected tables are written out by hand from datasets_and_pipeline.md §1.11.
"""
from __future__ import annotations

import pytest

from ferdata.params import read_yaml

from ferdata.classes import (
    CLASSES, JAFFE_CODES, NATIVE_TO_CANONICAL, UnknownClassError, canonical_id, class_names,
    resolve_names, stored_class_id, to_canonical,
)


def test_canonical_order_is_affectnet():
    assert CLASSES == ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt")
    assert class_names(7) == CLASSES[:7]
    with pytest.raises(ValueError):
        class_names(6)


@pytest.mark.parametrize("dataset,table", [
    ("affectnet", (0, 1, 2, 3, 4, 5, 6, 7)),
    ("fer2013", (6, 5, 4, 1, 2, 3, 0)),   # Angry Disgust Fear Happy Sad Surprise Neutral
    ("expw", (6, 5, 4, 1, 2, 3, 0)),
    ("ferplus", (0, 1, 3, 2, 6, 5, 4, 7)),  # neutral happiness surprise sadness anger disgust fear contempt
    ("rafdb", (3, 4, 5, 1, 2, 6, 0)),       # (label-1): Surprise Fear Disgust Happiness Sadness Anger Neutral
    ("ckplus", (0, 6, 7, 5, 4, 1, 2, 3)),   # neutral anger contempt disgust fear happy sadness surprise
])
def test_native_tables(dataset, table):
    assert NATIVE_TO_CANONICAL[dataset] == table
    assert [to_canonical(dataset, i) for i in range(len(table))] == list(table)
    with pytest.raises(ValueError):
        to_canonical(dataset, len(table))
    with pytest.raises(ValueError):
        to_canonical(dataset, -1)


def test_jaffe_codes():
    assert dict(JAFFE_CODES) == {"NE": 0, "HA": 1, "SA": 2, "SU": 3, "FE": 4, "DI": 5, "AN": 6}


@pytest.mark.parametrize("name,cid", [
    ("happy", 1), ("Happiness", 1), ("JOY", 1), ("angry", 6), ("Anger", 6), ("sad", 2), ("Sadness", 2),
    ("surprised", 3), ("Surprise", 3), ("fear", 4), ("afraid", 4), ("Fearful", 4), ("disgust", 5),
    ("Disgusted", 5), ("neutral", 0), ("Contempt", 7), (" Neutral ", 0),
])
def test_synonyms(name, cid):
    assert canonical_id(name) == cid


@pytest.mark.parametrize("name", ["calm", "3", "happyy", ""])
def test_unknown_names_raise(name):
    with pytest.raises(UnknownClassError):
        canonical_id(name)


def test_resolve_names_lists_every_unknown_and_the_fix():
    with pytest.raises(UnknownClassError) as err:
        resolve_names(["happy", "calm", "0", "Sad"])
    assert err.value.unknown == ["0", "calm"]
    assert "mapping" in str(err.value)


def test_resolve_names_explicit_mapping_wins_and_can_exclude():
    ids = resolve_names(["Happy", "calm", "0", "other"], {"CALM": "neutral", "0": "Anger", "other": None})
    assert ids == {"Happy": 1, "calm": 0, "0": 6, "other": None}


def test_number_keys_name_folders_named_by_number():
    """Kaggle's RAF-DB has folders 1..7; YAML reads ``{1: Surprise}`` with number keys, which were refused."""
    assert resolve_names(["1", "2", "7"], {1: "Surprise", 2: "Fear", "7": "Neutral"}) == {"1": 3, "2": 4, "7": 0}
    with pytest.raises(ValueError, match="must map folder names to classes"):
        resolve_names(["1"], {True: "Surprise"})                   # YAML's yes/no are no folder names


def test_resolve_names_rejects_bad_targets_and_stray_keys():
    with pytest.raises(ValueError, match="not a class"):
        resolve_names(["x"], {"x": "Boredom"})
    with pytest.raises(ValueError, match="match no class folder"):
        resolve_names(["happy"], {"hapy": "Happy"})


@pytest.mark.parametrize("text, want", [(b"0", 0), (b"7", 7), (b" 3\n", 3), (b"8", None), (b"-1", None),
                                        (b"+1", None), (b"", None), (b"1.0", None), (b"\xd9\xa3", None)])
def test_stored_class_id(text, want):
    assert stored_class_id(text) == want


@pytest.mark.parametrize("text", ['{1: Surprise, "1": Fear}', "{calm: Neutral, Calm: Sad}"])
def test_a_mapping_naming_one_folder_twice_is_refused(text):
    """1 and "1", Calm and calm name one folder: the last was kept silently."""
    mapping = read_yaml(f"mapping: {text}")["mapping"]          # params.yaml reads both keys (not the same key)
    with pytest.raises(ValueError, match="twice"):
        resolve_names(["1", "calm"], mapping, where="folder class folders")


def test_a_mapping_naming_each_folder_once_still_resolves():
    out = resolve_names(["1", "calm"], read_yaml("m: {1: Surprise, Calm: Neutral}")["m"])
    assert {k: CLASSES[v] for k, v in out.items()} == {"1": "Surprise", "calm": "Neutral"}


def test_the_unknown_name_fix_gives_the_command_line_form_too():
    """`ferdata prepare folder --root ...` users got only the params.yaml form of the fix (audit h107)."""
    with pytest.raises(UnknownClassError) as err:
        resolve_names(["sad face", "happy"])
    assert """--option 'mapping={"sad face": <class>}'""" in str(err.value)


def test_the_command_line_form_of_the_fix_is_quoted_for_the_shell():
    """A folder named with a quote (``don't know``) broke the single-quoted --option the error offered."""
    import shlex

    with pytest.raises(UnknownClassError) as err:
        resolve_names(["don't know", "happy"])
    offered = str(err.value).split("on the command line: ", 1)[1]
    assert shlex.split(offered) == ["--option", 'mapping={"don\'t know": <class>}']
