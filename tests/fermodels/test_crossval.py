"""k-fold summaries from DVC experiment commits: series grouping, newest run per fold, mean / sample
std over folds and pooled metrics from the summed confusion matrices. The experiments are made here
with git alone, as DVC stores them (``refs/exps/<baseline sha[:2]>/<rest>/<name>``)."""
from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fermodels.cli import app
from fermodels.crossval import describe, read_experiments, summarise

ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@x"}


def git(repo: Path, *args: str, env: dict | None = None) -> str:
    return subprocess.run(["git", *args], cwd=repo, env=env or ENV, capture_output=True, text=True,
                          check=True).stdout.strip()


def experiment(repo: Path, baseline: str, name: str, when: int, params: dict,
               pairs: list[tuple[str, str]] | None, tested: str | dict | None = None,
               files: dict[str, str] | None = None) -> None:
    """An experiment commit on top of ``baseline``: params.yaml and (unless ``pairs`` is None) an
    evaluation whose test samples are the (actual, predicted) ``pairs``; ``tested``: the digest of the
    ckplus test split (or {dataset: digest}) its ``runs/select/evaluate.json`` pins (none when None);
    ``files``: other files of the commit, {path: text} (its dvc.lock)."""
    git(repo, "checkout", "-q", "-f", "--detach", baseline)
    git(repo, "clean", "-fdq")
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    for path, text in (files or {}).items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    if pairs is not None:
        (repo / "runs" / "eval").mkdir(parents=True, exist_ok=True)
        metrics = {**by_hand(pairs), "num_samples": len(pairs)}
        (repo / "runs" / "eval" / "metrics.json").write_text(json.dumps(metrics))
        (repo / "runs" / "eval" / "confusion.json").write_text(
            json.dumps([{"actual": a, "predicted": p} for a, p in pairs]))
    if tested is not None:
        (repo / "runs" / "select").mkdir(parents=True, exist_ok=True)
        pins = tested if isinstance(tested, dict) else {"ckplus": tested}
        chosen = pins if "datasets" in pins else {     # a whole selection file, or digests of the test splits
            "version": 2, "datasets": {name: {"shards": f"data/{name}/shards", "splits": {"test": sha}}
                                       for name, sha in pins.items()}}
        (repo / "runs" / "select" / "evaluate.json").write_text(json.dumps(chosen))
    git(repo, "add", "-A")
    stamp = {**ENV, "GIT_COMMITTER_DATE": f"{1_700_000_000 + when} +0000"}
    git(repo, "commit", "-q", "-m", name, env=stamp)
    git(repo, "update-ref", f"refs/exps/{baseline[:2]}/{baseline[2:]}/{name}", git(repo, "rev-parse", "HEAD"))


def by_hand(pairs: list[tuple[str, str]]) -> dict:
    """What evaluate writes, counted here: accuracy, mean recall and mean F1 over the classes present."""
    present = sorted({a for a, _ in pairs})
    recall, f1 = [], []
    for c in present:
        tp = sum(a == p == c for a, p in pairs)
        r, predicted = tp / sum(a == c for a, _ in pairs), sum(p == c for _, p in pairs)
        prec = tp / predicted if predicted else 0.0
        recall.append(r)
        f1.append(2 * prec * r / (prec + r) if prec + r else 0.0)
    return {"accuracy": sum(a == p for a, p in pairs) / len(pairs), "mean_class_accuracy": sum(recall) / len(present),
            "macro_f1": sum(f1) / len(present)}


def params(fold: int, folds: int = 3, model: str = "cmnet") -> dict:
    return {"shard": {"seed": 0, "folds": folds, "fold": fold}, "train": {"model": model, "datasets": ["ckplus"]}}


H, S, N = "Happy", "Sad", "Neutral"
FOLDS = {0: [(H, H), (H, H), (S, S), (S, H)],          # 3 of 4
         1: [(H, S), (N, H)],                          # 0 of 2 (a first run of fold 1, replaced below)
         2: [(S, S), (N, N)]}                          # 2 of 2


def baseline_repo(repo: Path) -> str:
    """A git repository at ``repo`` with one commit (the experiments' baseline); its sha."""
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "README").write_text("baseline\n")
    git(repo, "add", "README")
    git(repo, "commit", "-q", "-m", "baseline")
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture()
def repo(tmp_path) -> tuple[Path, str]:
    repo = tmp_path / "repo"
    base = baseline_repo(repo)
    experiment(repo, base, "f0", 1, params(0), FOLDS[0])
    experiment(repo, base, "f1-old", 2, params(1), [(H, H), (N, N)])
    experiment(repo, base, "f1", 3, params(1), FOLDS[1])
    experiment(repo, base, "f2", 4, params(2), FOLDS[2])
    experiment(repo, base, "other-model", 5, params(0, model="pcnn"), FOLDS[0])
    experiment(repo, base, "no-folds", 6, params(0, folds=0), FOLDS[0])
    experiment(repo, base, "no-eval", 7, params(2), None)
    return repo, base


def test_folds_are_grouped_and_summarised(repo):
    runs, skipped = read_experiments(repo[0], repo[1])
    assert set(skipped) == {"no-eval"} and len(runs) == 6
    series = summarise(runs)
    assert [s.params["train"]["model"] for s in series] == ["pcnn", "cmnet"]       # newest first
    pcnn, cmnet = series
    assert pcnn.missing == [1, 2] and cmnet.missing == []
    assert {k: r.name for k, r in cmnet.runs.items()} == {0: "f0", 1: "f1", 2: "f2"} and cmnet.replaced == ["f1-old"]
    acc = cmnet.table()["accuracy"]
    assert acc["folds"] == [0.75, 0.0, 1.0]
    assert acc["mean"] == pytest.approx(1.75 / 3)
    assert acc["std"] == pytest.approx(math.sqrt(((0.75 - 1.75 / 3) ** 2 + (1.75 / 3) ** 2 + (1 - 1.75 / 3) ** 2) / 2))
    assert acc["pooled"] == pytest.approx(5 / 8)
    # each fold's other figures are its own evaluation's (fold 0: Happy recall 1, Sad 1/2; F1 0.8 and 2/3)
    assert cmnet.table()["mean_class_accuracy"]["folds"] == pytest.approx([0.75, 0.0, 1.0])
    assert cmnet.table()["macro_f1"]["folds"] == pytest.approx([(0.8 + 2 / 3) / 2, 0.0, 1.0])
    assert cmnet.table()["macro_f1"]["mean"] == pytest.approx(((0.8 + 2 / 3) / 2 + 1) / 3)
    # pooled recall per class: Happy 2 of 3 (fold 1 misses one), Sad 2 of 3, Neutral 1 of 2
    assert cmnet.table()["mean_class_accuracy"]["pooled"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 2) / 3)
    assert cmnet.table()["num_samples"] == {"folds": [4, 2, 2], "pooled": 8}
    assert len(pcnn.runs) == 1 and pcnn.table()["accuracy"]["std"] is None      # undefined for one fold, not 0
    assert [row.split()[:2] for row in describe(pcnn).splitlines() if row.split()[0] == "std"] == [["std", "n/a"]]


def test_the_command_prints_and_writes_the_summary(repo, tmp_path):
    out = tmp_path / "cv.json"
    res = CliRunner().invoke(app, ["crossval", "--repo", str(repo[0]), "--rev", repo[1], "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "cmnet on ckplus: 3 of 3 folds" in res.output
    assert "pcnn on ckplus: 1 of 3 folds, missing [1, 2]" in res.output
    assert "skipped experiment no-eval" in res.output
    saved = json.loads(out.read_text())
    assert saved[1]["experiments"] == {"0": "f0", "1": "f1", "2": "f2"}
    assert saved[1]["metrics"]["accuracy"]["pooled"] == pytest.approx(5 / 8)


def test_no_folds_is_a_clear_error(tmp_path):
    repo = tmp_path / "empty"
    baseline_repo(repo)
    res = CliRunner().invoke(app, ["crossval", "--repo", str(repo)])
    assert res.exit_code != 0 and "no cross-validation experiments of HEAD" in str(res.exception)


def test_outside_a_repository_or_before_a_commit_the_error_says_where_to_run(tmp_path):
    """Both were git's own message ("fatal: Needed a single revision")."""
    plain, fresh = tmp_path / "not_a_repo", tmp_path / "no_commit"
    plain.mkdir()
    fresh.mkdir()
    subprocess.run(["git", "init", "-q", str(fresh)], check=True)
    for repo in (plain, fresh):
        res = CliRunner().invoke(app, ["crossval", "--repo", str(repo)])
        assert res.exit_code != 0 and "no commit 'HEAD'" in str(res.exception)
        assert "run this in the project's git repository" in str(res.exception)
    res = CliRunner().invoke(app, ["crossval", "--repo", str(tmp_path / "missing")])        # an OSError before
    assert isinstance(res.exception, ValueError)
    assert "missing is no folder: give the project's git" in str(res.exception)


def test_the_summary_holds_what_recomputes_it(repo, tmp_path):
    """cv.json keeps each fold's confusion matrix and the pooled per-class metrics: the pooled and
    per-fold figures can be recomputed from it."""
    import numpy as np

    from fermodels.metrics import metrics_from_confusion

    out = tmp_path / "cv.json"
    res = CliRunner().invoke(app, ["crossval", "--repo", str(repo[0]), "--rev", repo[1], "--out", str(out)])
    assert res.exit_code == 0, res.output
    cmnet = json.loads(out.read_text())[1]
    folds = {k: np.array(v) for k, v in cmnet["confusion"].items()}
    assert {k: int(v.sum()) for k, v in folds.items()} == {"0": 4, "1": 2, "2": 2}
    pooled = metrics_from_confusion(sum(folds.values()), cmnet["classes"])
    assert pooled["accuracy"] == pytest.approx(5 / 8) == cmnet["metrics"]["accuracy"]["pooled"]
    assert cmnet["metrics"]["per_class_pooled"]["Happy"] == {**pooled["per_class"]["Happy"]}
    assert cmnet["metrics"]["per_class_pooled"]["Happy"]["recall"] == pytest.approx(2 / 3)


def test_folds_tested_on_one_split_are_not_summarised(tmp_path):
    """RAF-DB or AffectNet keep their official test split whatever shard.fold says: K such "folds"
    are one test set counted K times (std 0, pooled samples K times too many). The pinned test
    split tells them apart from real folds."""
    repo = tmp_path / "repo"
    base = baseline_repo(repo)
    for k in range(3):
        experiment(repo, base, f"raf{k}", k, params(k, model="pcnn"), FOLDS[0], tested="same-sha")
        experiment(repo, base, f"ck{k}", 10 + k, params(k), FOLDS[k], tested=f"sha-{k}")
    pcnn, cmnet = summarise(read_experiments(repo, base)[0])[::-1]
    assert cmnet.problem is None and cmnet.table()["num_samples"]["pooled"] == 8
    assert pcnn.problem.startswith("folds 0 and 1 and 2 (ckplus test) were tested on the same split")
    assert describe(pcnn).splitlines()[1].startswith("not summarised: folds 0 and 1 and 2 (ckplus test)")
    out = tmp_path / "cv.json"
    res = CliRunner().invoke(app, ["crossval", "--repo", str(repo), "--rev", base, "--out", str(out)])
    assert res.exit_code != 0 and "their folds share a test split" in str(res.exception)
    saved = {s["params"]["train"]["model"]: s for s in json.loads(out.read_text())}
    assert "metrics" not in saved["pcnn"] and "official test split" in saved["pcnn"]["problem"]
    assert saved["cmnet"]["metrics"]["accuracy"]["pooled"] == pytest.approx(5 / 8)


def test_folds_pinned_by_the_first_selection_version_are_listed_unchecked(tmp_path):
    """Selection version 1 (before the content digests) pinned the sha256 of the whole _info.json, whose
    params_hash holds shard.fold: one official test split pinned another digest in every fold, so such
    folds were averaged as a cross-validation, neither refused nor listed as unchecked."""
    repo = tmp_path / "repo"
    base = baseline_repo(repo)
    for k in range(3):
        v1 = {"version": 1, "datasets": {"rafdb": {"shards": "data/rafdb/shards", "splits": {"test": f"whole-{k}"}}}}
        experiment(repo, base, f"f{k}", k, params(k), FOLDS[k], tested=v1)
    (series,) = summarise(read_experiments(repo, base)[0])
    assert series.unchecked == [0, 1, 2]
    assert "folds 0, 1, 2 record no comparable test split" in describe(series)


def test_a_dataset_keeping_its_test_split_is_found_beside_one_that_folds(tmp_path):
    """Evaluated on two datasets' test splits: CK+'s changes with the fold, RAF-DB's official one does
    not; the run's pins differ as a whole, yet RAF-DB's test set would be counted once per fold."""
    repo = tmp_path / "repo"
    base = baseline_repo(repo)
    for k in range(2):
        experiment(repo, base, f"f{k}", k, params(k), FOLDS[0], tested={"ckplus": f"ck-{k}", "rafdb": "raf"})
    (series,) = summarise(read_experiments(repo, base)[0])
    assert series.problem.startswith("folds 0 and 1 (rafdb test) were tested on the same split")


def test_folds_of_a_dataset_with_an_official_test_split_pin_the_same_test_split(tmp_path):
    """The real stages: whatever shard.fold says, an AffectNet-layout dataset keeps its official test
    split (the same shards); its pinned digest must say so though each fold's params differ."""
    from dataclasses import replace

    from ferdata.selection import selection
    from ferdata.stages.shard import run_shard
    from tests.reliability.corpus import Case, build_corpus, jpeg_of, run_all, stage_params

    cases = [Case(f"tr{i}", jpeg_of(i), label=str(i % 7)) for i in range(12)]
    cases += [Case(f"te{i}", jpeg_of(100 + i), split="test", label=str(i % 7)) for i in range(5)]
    build_corpus(tmp_path / "raw", cases)
    stages = stage_params(tmp_path)
    stages["shard"] = replace(stages["shard"], folds=3, fold=0)
    run_all(tmp_path / "raw", tmp_path / "x", stages)
    pinned = []
    for fold in (0, 1):
        run_shard(tmp_path / "x/aligned", tmp_path / "x/derived", replace(stages["shard"], fold=fold),
                  tmp_path / "data" / "x" / "shards")
        info = json.loads((tmp_path / "data/x/shards/test/_info.json").read_text())
        pinned.append((info["params_hash"], selection(tmp_path / "data", ["x"], ["test"])))
    (hash0, chosen0), (hash1, chosen1) = pinned
    assert hash0 != hash1 and chosen0 == chosen1
    assert "fold_assignment" not in chosen0["datasets"]["x"]            # not dealt into folds


def test_another_split_seed_is_another_series_and_a_missing_first_fold_is_named(tmp_path):
    repo = tmp_path / "repo"
    base = baseline_repo(repo)
    for k in (1, 2):
        experiment(repo, base, f"s0f{k}", k, params(k), FOLDS[k], tested=f"a{k}")
        other = params(k)
        other["shard"]["seed"] = 1                              # another deal of the people into folds
        experiment(repo, base, f"s1f{k}", 10 + k, other, FOLDS[k], tested=f"b{k}")
    series = summarise(read_experiments(repo, base)[0])
    assert sorted(s.params["shard"]["seed"] for s in series) == [0, 1]
    assert all(s.missing == [0] for s in series)


def test_folds_run_with_other_loader_workers_are_one_series_and_another_lr_is_another(tmp_path):
    """Folds run on two machines differ in train.workers, evaluate.workers, detect.cache_dir: one
    cross-validation (they were three incomplete series under one heading); train.lr is not a speed."""
    repo = tmp_path / "repo"
    base = baseline_repo(repo)
    for k in range(3):
        p = params(k)
        p["train"].update(workers=0 if k == 2 else 2, checkpoint_every=k)
        p["evaluate"] = {"split": "test", "workers": 8 if k == 1 else 2}
        p["detect"] = {"backend": "embedded", "cache_dir": f"/machine{k}/cache", "workers": k + 1}
        p["datasets"] = {"ckplus": {"reader": "ckplus", "root": "raw/ckplus",
                                    "detect": {"det_size": 320, "workers": k + 1, "cache_dir": f"/m{k}"}}}
        experiment(repo, base, f"f{k}", k + 1, p, FOLDS[k], tested=f"digest{k}")
        p["train"]["lr"] = 0.1
        experiment(repo, base, f"lr{k}", 10 + k, p, FOLDS[k], tested=f"digest{k}")
    series = summarise(read_experiments(repo, base)[0])
    assert sorted((sorted(s.runs), s.missing, s.params["train"].get("lr", 0)) for s in series) == \
        [([0, 1, 2], [], 0), ([0, 1, 2], [], 0.1)]
    assert {r.name for s in series for r in s.runs.values()} == {"f0", "f1", "f2", "lr0", "lr1", "lr2"}


def test_folds_dealt_from_two_preparations_are_not_summarised(tmp_path):
    """A fold run after the data were prepared again (a face lost or gained) has its people dealt
    otherwise: pooled with the others, its test set overlaps theirs and misses faces."""
    repo = tmp_path / "repo"
    base = baseline_repo(repo)
    for k, dealt in enumerate(("a1", "a1", "b2")):
        chosen = {"version": 2, "datasets": {"ckplus": {"shards": "data/ckplus/shards", "splits": {"test": f"t{k}"},
                                                        "fold_assignment": dealt}}}
        experiment(repo, base, f"f{k}", k, params(k), FOLDS[k], tested=chosen)
    (series,) = summarise(read_experiments(repo, base)[0])
    assert series.problem.startswith("the folds were dealt from different preparations of the data (ckplus: "
                                     "folds 0,1 vs 2)")


def test_a_recipe_series_is_named_with_the_recipes_datasets(tmp_path):
    repo = tmp_path / "repo"
    base = baseline_repo(repo)
    experiment(repo, base, "r0", 0, {"shard": {"folds": 2, "fold": 0},
                                     "train": {"recipe": "pcnn_rafdb", "model": "cmnet", "datasets": ["sample"]}},
               FOLDS[0])
    assert describe(summarise(read_experiments(repo, base)[0])[0]).startswith("pcnn_rafdb on rafdb: 1 of 2 folds")


def test_folds_that_record_no_test_split_are_said_to_be_unchecked(tmp_path):
    """Runs of a version that pinned no test split passed the shared-split check silently: K runs on
    RAF-DB's official test set would be averaged as a cross-validation without a word."""
    repo = tmp_path / "repo"
    base = baseline_repo(repo)
    for k in range(2):
        experiment(repo, base, f"f{k}", k, params(k, folds=2), FOLDS[0], tested=None if k == 0 else "sha-1")
    (series,) = summarise(read_experiments(repo, base)[0])
    assert series.problem is None and series.unchecked == [0]
    said = "folds 0 record no comparable test split (runs of an older version): not checked to differ"
    assert said in describe(series)
    assert series.record()["unchecked"] == [0]


def test_folds_scored_on_another_split_than_test_are_not_summarised(tmp_path):
    """evaluate.split val scores each fold on the split that chose its best.pt; the table looked like
    a cross-validation."""
    repo = tmp_path / "repo"
    base = baseline_repo(repo)
    for k in range(3):
        experiment(repo, base, f"f{k}", k, {**params(k), "evaluate": {"split": "val"}}, FOLDS[k], tested=f"sha-{k}")
    (series,) = summarise(read_experiments(repo, base)[0])
    assert series.problem.startswith("the folds were scored on evaluate.split 'val', not on their test fold")
    res = CliRunner().invoke(app, ["crossval", "--repo", str(repo), "--rev", base])
    assert res.exit_code != 0 and "scored on another split" in str(res.exception)


def test_an_unwritable_out_is_told_before_the_experiments_are_read(repo, tmp_path):
    """``--out`` naming a folder, or a path under a file, failed after the table was printed
    (reading experiments takes seconds to minutes); now before, and nothing is printed."""
    (tmp_path / "a_file").write_text("x")
    for out, says in ((tmp_path, "is a folder: give the JSON file"), (tmp_path / "a_file" / "cv.json", "is a file")):
        res = CliRunner().invoke(app, ["crossval", "--repo", str(repo[0]), "--rev", repo[1], "--out", str(out)])
        assert isinstance(res.exception, ValueError) and says in str(res.exception), res.output
        assert "folds" not in res.output


def test_a_cross_dataset_series_names_its_test_dataset(tmp_path):
    """Scored on another k-fold dataset (evaluate.dataset: jaffe, dealt into folds too), a series is
    summarised (its test splits differ per fold); its header names the dataset it was tested on."""
    repo = tmp_path / "repo"
    base = baseline_repo(repo)
    for k in range(3):
        experiment(repo, base, f"ck{k}", k, params(k), FOLDS[k], tested={"ckplus": f"ck-{k}"})
        cross = {**params(k), "evaluate": {"dataset": "jaffe", "split": "test"}}
        experiment(repo, base, f"jf{k}", 10 + k, cross, FOLDS[k], tested={"jaffe": f"jf-{k}"})
    cross, own = summarise(read_experiments(repo, base)[0])
    assert cross.problem is None and own.problem is None            # both summarised: each JAFFE face tested once
    heads = [describe(s).splitlines()[0] for s in (cross, own)]
    assert heads[0] != heads[1], heads                               # both read "cmnet on ckplus: 3 of 3 folds"
    assert "jaffe" in heads[0]


def test_a_series_scored_on_one_of_its_training_datasets_names_it(tmp_path):
    """Trained on ckplus+jaffe and scored on jaffe alone: the header read like the series scored on both."""
    repo = tmp_path / "repo"
    base = baseline_repo(repo)
    for k in range(3):
        both = {"shard": {"seed": 0, "folds": 3, "fold": k},
                "train": {"model": "cmnet", "datasets": ["ckplus", "jaffe"]}}
        experiment(repo, base, f"b{k}", k, both, FOLDS[k], tested={"ckplus": f"ck-{k}", "jaffe": f"jf-{k}"})
        one = {**both, "evaluate": {"dataset": "jaffe", "split": "test"}}
        experiment(repo, base, f"j{k}", 10 + k, one, FOLDS[k], tested={"jaffe": f"jf-{k}"})
    heads = sorted(describe(s).splitlines()[0] for s in summarise(read_experiments(repo, base)[0]))
    assert heads == ["cmnet on ckplus+jaffe, tested on jaffe: 3 of 3 folds", "cmnet on ckplus+jaffe: 3 of 3 folds"]


def _lock(train_py: str, test_split: str) -> str:
    """A dvc.lock as DVC writes it: the train stage's code, the fold's own selection and shards."""
    def dep(path: str, md5: str) -> dict:
        return {"path": path, "hash": "md5", "md5": md5}

    return yaml.safe_dump({"schema": "2.0", "stages": {
        "shard@ckplus": {"deps": [dep("data/ckplus/aligned", "a.dir"), dep("ferdata/splits.py", "s1")]},
        "select": {"deps": [dep("data", f"{test_split}.dir"), dep("ferdata/selection.py", "s2")]},
        "train": {"deps": [dep("runs/select/train.json", test_split), dep("fermodels/train.py", train_py)]},
        "detect@ckplus": {"deps": [dep("raw/CK+", "raw.dir")]}}})


def test_folds_that_ran_other_code_are_not_summarised(tmp_path):
    """A fold queued (or re-run) after an edit of the code is another experiment: its commit's dvc.lock
    records other deps. Its figures were averaged with the others' (the newest run of a fold counts)."""
    repo = tmp_path / "repo"
    base = baseline_repo(repo)
    for k in range(3):
        experiment(repo, base, f"f{k}", k, params(k), FOLDS[k], tested=f"sha-{k}",
                   files={"dvc.lock": _lock("code-v1", f"split{k}")})       # the folds' own data differ: fine
    (series,) = summarise(read_experiments(repo, base)[0])
    assert series.problem is None and series.table()["num_samples"]["pooled"] == 8
    experiment(repo, base, "f1-edited", 9, params(1), FOLDS[1], tested="sha-1",
               files={"dvc.lock": _lock("code-v2", "split1")})
    (series,) = summarise(read_experiments(repo, base)[0])
    assert series.runs[1].name == "f1-edited"
    assert series.problem.startswith("the folds ran different code or inputs")
    assert "folds 0,2 vs 1" in series.problem
    res = CliRunner().invoke(app, ["crossval", "--repo", str(repo), "--rev", base])
    assert res.exit_code != 0 and "ran different code or inputs" in str(res.exception)


def test_series_of_one_model_on_one_dataset_are_told_apart_by_what_differs(tmp_path):
    """Two series that differ in train.seed (or lr) printed the same heading, "cmnet on ckplus: 3 of 3
    folds", twice: nothing said which table was which."""
    repo = tmp_path / "repo"
    base = baseline_repo(repo)
    for k in range(3):
        experiment(repo, base, f"a{k}", k, params(k), FOLDS[k], tested=f"a-{k}")
        other = params(k)
        other["train"]["seed"] = 1
        experiment(repo, base, f"b{k}", 10 + k, other, FOLDS[k], tested=f"b-{k}")
    res = CliRunner().invoke(app, ["crossval", "--repo", str(repo), "--rev", base])
    assert res.exit_code == 0, res.output
    heads = [line for line in res.output.splitlines() if " of 3 folds" in line]
    assert heads == ["cmnet on ckplus: 3 of 3 folds (train.seed 1)",
                     "cmnet on ckplus: 3 of 3 folds (train.seed (unset))"]


def test_the_readme_summarises_the_folds_after_they_have_run():
    """README's block ran `dvc queue start && dvc queue status` then `fermodels crossval`: the queue
    runs in the background, so the summary came before any fold had ended (an error, or the partial
    series of a queue half done, exit status 0)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in readme.split("```bash")[1:] if "fermodels crossval" in b.split("```")[0]]
    assert blocks, "README has no bash block that runs fermodels crossval"
    for block in blocks:
        lines = [line.split("#")[0].strip() for line in block.split("```")[0].splitlines()]
        before = lines[:next(i for i, line in enumerate(lines) if line.startswith("fermodels crossval"))]
        assert any("--run-all" in line for line in before), before
        assert not any(line.startswith("dvc queue start") for line in before), before


def test_folds_scored_on_two_datasets_give_each_datasets_figures_pooled_over_the_folds(tmp_path):
    """Folds of a model trained and tested on two k-fold datasets (CK+ and JAFFE): each fold's metrics.json
    has per_dataset (confusion matrices over the model's 7 classes); the summary pooled only the two
    together, so neither dataset's cross-validated figures could be had from cv.json."""
    from ferdata.classes import class_names
    from fermodels.metrics import confusion_matrix, metrics_from_confusion

    classes = list(class_names(7))
    folds = {0: {"ckplus": [(H, H), (S, H)], "jaffe": [(N, N)]}, 1: {"ckplus": [(S, S)], "jaffe": [(H, N), (N, N)]},
             2: {"ckplus": [(N, N)]}}        # a fold whose test split holds no JAFFE face
    repo = tmp_path / "repo"
    base = baseline_repo(repo)
    for k, by_dataset in folds.items():
        pairs = [pair for dataset_pairs in by_dataset.values() for pair in dataset_pairs]
        experiment(repo, base, f"f{k}", k, params(k, folds=3), pairs, tested={"ckplus": f"c{k}", "jaffe": f"j{k}"})
        metrics = json.loads(git(repo, "show", "HEAD:runs/eval/metrics.json"))
        metrics["classes"] = classes
        metrics["per_dataset"] = {name: {"confusion_matrix": confusion_matrix(
            [classes.index(a) for a, _ in ps], [classes.index(p) for _, p in ps], 7).tolist(), **by_hand(ps)}
            for name, ps in by_dataset.items()}
        (repo / "runs" / "eval" / "metrics.json").write_text(json.dumps(metrics))
        git(repo, "commit", "-q", "-a", "-m", f"f{k} per dataset")
        git(repo, "update-ref", f"refs/exps/{base[:2]}/{base[2:]}/f{k}", git(repo, "rev-parse", "HEAD"))
    [series] = summarise(read_experiments(repo, base)[0])
    table = series.table()
    jaffe = table["per_dataset"]["jaffe"]
    assert jaffe["accuracy"]["folds"] == [1.0, 0.5, None] and jaffe["accuracy"]["pooled"] == pytest.approx(2 / 3)
    assert jaffe["num_samples"] == 3 and table["per_dataset"]["ckplus"]["num_samples"] == 4
    ckplus = [pair for by_dataset in folds.values() for pair in by_dataset["ckplus"]]
    expected = metrics_from_confusion(confusion_matrix([classes.index(a) for a, _ in ckplus],
                                                       [classes.index(p) for _, p in ckplus], 7), classes)
    assert table["per_dataset"]["ckplus"]["macro_f1"]["pooled"] == pytest.approx(expected["macro_f1"])
    assert "pooled on jaffe: accuracy 0.6667" in describe(series)
