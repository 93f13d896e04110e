"""Fixtures shared by the reliability tests: the bad-input corpus and its pipeline run,
and clean tiny shards for training and sharing, each built once per session."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.corpus import Case, Expected, build_corpus, jpeg_of, run_all, stage_params


@pytest.fixture(scope="session")
def bad_corpus(tmp_path_factory) -> tuple[Path, Expected]:
    """The standard bad-input corpus (annotations backend) and what its reports must say."""
    root = tmp_path_factory.mktemp("bad_corpus") / "affectnet root"
    return root, build_corpus(root)


@pytest.fixture(scope="session")
def bad_corpus_run(bad_corpus, tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """One pipeline run over the bad corpus: (output folder, stage reports)."""
    root, _ = bad_corpus
    out = tmp_path_factory.mktemp("bad_run")
    return out, run_all(root, out, stage_params(out))


def clean_cases(n_train: int = 24, n_test: int = 8) -> list[Case]:
    """Good samples only, labels cycling over the 7 basic classes."""
    return ([Case(f"tr_{i:03d}", jpeg_of(1000 + i), label=str(i % 7)) for i in range(n_train)]
            + [Case(f"te_{i:03d}", jpeg_of(2000 + i), split="test", label=str(i % 7)) for i in range(n_test)])


@pytest.fixture(scope="session")
def clean_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clean") / "raw"
    build_corpus(root, clean_cases())
    return root


@pytest.fixture(scope="session")
def tiny_shards(clean_root, tmp_path_factory) -> Path:
    """Shards of the clean corpus (train/val/test), read-only for the tests that use them."""
    out = tmp_path_factory.mktemp("tiny_run")
    run_all(clean_root, out, stage_params(out, maxcount=8))
    return out / "shards"
