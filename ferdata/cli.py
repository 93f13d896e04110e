"""The `ferdata` command line: thin typer commands over the library functions.

Library modules are imported inside the commands, so `ferdata --help` and the data commands
start fast and never import torch (only `predict` does, when it runs)."""
from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Optional

import typer

from ferdata.clihelp import reflow_help, version_option
from ferdata.errors import console_logging, run_cli

app = typer.Typer(help="FER data pipeline: read datasets, detect/align faces, derive, shard, verify.",
                  no_args_is_help=True, add_completion=False, rich_markup_mode=None)


BACKEND_HELP = ("Face backend for this dataset (`ferdata backends`), over params.yaml's detect.backend and "
                "datasets.<name>.detect; e.g. precropped for images that are face crops already (FER2013).")
DETECT_BACKEND_HELP = ("Face backend for this dataset (`ferdata backends`), over params.yaml's detect.backend "
                       "and datasets.<name>.detect: one that runs a model (embedded, insightface, face_alignment, "
                       "auto), whose detections the cache keeps.")


def _setup_logging(verbose: bool) -> None:
    console_logging(logging.DEBUG if verbose else logging.INFO, "%(name)s: %(message)s")
    logging.getLogger("PIL").setLevel(logging.INFO)         # its debug lines (a PNG's chunks) would bury ours
    logging.getLogger("matplotlib").setLevel(logging.WARNING)   # and its INFO "generated new fontManager"


@app.command()
def prepare(
    dataset: str = typer.Argument(..., help="Dataset name from params.yaml `datasets` (e.g. sample), or a reader "
                                  "name with --root (e.g. rafdb)."),
    root: Optional[Path] = typer.Option(None, help="Dataset root folder (overrides params.yaml)."),
    out: Path = typer.Option(Path("data"), help="Output folder; results go to OUT/<dataset>/{detect,aligned,derived,shards}."),
    params: Path = typer.Option(Path("params.yaml"), help="Parameters file."),
    option: list[str] = typer.Option([], "--option", help="Reader option KEY=VALUE (a YAML value), "
                                     "repeatable, over params.yaml's; e.g. --option 'exclude_classes=[Contempt]'."),
    backend: Optional[str] = typer.Option(None, help=BACKEND_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also log debug messages."),
) -> None:
    """Run detect -> align -> derive -> shard for one dataset (the same functions as `dvc repro`)."""
    from ferdata.layout import DROPS, stage_dirs
    from ferdata.prepare import prepare as run

    _setup_logging(verbose)
    options, loaded = _dataset_inputs(option, params, dataset, root)
    reports = run(dataset, loaded, out, root, options, _backend_name(backend))
    for stage, r in reports.items():
        typer.echo(f"{stage:7s} kept {r['kept']:7d}  dropped {r['dropped_total']:6d}  {r['dropped'] or ''}")
    dirs = stage_dirs(out, dataset)
    typer.echo(f"shards in {dirs['shards']}; each drop listed in {dirs['detect'] / DROPS} and "
               f"{dirs['aligned'] / DROPS}; check the faces with `ferdata show {dirs['shards']}`")


def _dataset_inputs(option: list[str], params: Path, dataset: str, root: Optional[Path]) -> tuple[dict, dict]:
    """The reader options given as ``--option KEY=VALUE`` and the loaded params file of a command that
    reads ``dataset``; the bundled sample's folder must exist (its reader would say it does not look
    like AffectNet)."""
    from ferdata.params import dataset_specs, load_params, parse_assignments

    try:
        options = parse_assignments(option)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--option") from None
    loaded = load_params(params)
    spec = dataset_specs(loaded).get(dataset)
    made = spec.get("root") if dataset == "sample" and root is None and isinstance(spec, dict) else None
    if isinstance(made, str) and not Path(made).exists():
        raise FileNotFoundError(f"{made}: the sample dataset is generated, not shipped: `ferdata sample {made}` "
                                "makes it (`dvc repro` does both)")
    return options, loaded


def _backend_name(backend: Optional[str]) -> Optional[str]:
    """``--backend``, a misspelt one refused as such: it was told as a bad datasets.<name>.detect.backend in
    params.yaml, a key the user had not set."""
    from ferdata.faces import BACKENDS

    if backend is not None and backend not in BACKENDS:
        raise typer.BadParameter(f"unknown face backend {backend!r}; known: {', '.join(BACKENDS.names())}",
                                 param_hint="--backend")
    return backend


@app.command()
def detect(
    dataset: str = typer.Argument(..., help="Dataset name from params.yaml `datasets`, or a reader name with --root."),
    part: str = typer.Option("1/1", help="This machine's part K/N of the dataset (1/4 .. 4/4 on four machines)."),
    root: Optional[Path] = typer.Option(None, help="Dataset root folder (overrides params.yaml)."),
    params: Path = typer.Option(Path("params.yaml"), help="Parameters file (section `detect`: backend, cache_dir)."),
    option: list[str] = typer.Option([], "--option", help="Reader option KEY=VALUE, as for `prepare`."),
    backend: Optional[str] = typer.Option(None, help=DETECT_BACKEND_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also log debug messages."),
) -> None:
    """Detect one part of a dataset into the detection cache, for sharing detection between machines.

    Run part K/N on machine K, copy each machine's `detect.cache_dir` folder whole (its -wal too) to
    one machine, `ferdata cache merge` the folders there, and `dvc repro` (or `prepare`) detects nothing."""
    from ferdata.parts import Part
    from ferdata.prepare import detect_part

    _setup_logging(verbose)
    try:
        which = Part.parse(part)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--part") from None
    options, loaded = _dataset_inputs(option, params, dataset, root)
    r = detect_part(dataset, loaded, which, root, options, _backend_name(backend))
    n = r["notes"]
    dropped = f" {r['dropped']}" if r["dropped"] else ""
    typer.echo(f"part {which}: {r['kept']} images with a face, {r['dropped_total']} dropped{dropped}; "
               f"{n['detections_run']} detected ({n['stored']} into the cache), {n['cache_hits']} were cached")
    typer.echo(f"cache {n['cache']} (backend {n['backend']})")


cache_app = typer.Typer(help="The detection cache (detect.cache_dir): merge caches filled on other machines, prune "
                             "entries no dataset uses.",
                        no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("merge")
def cache_merge(
    sources: list[Path] = typer.Argument(..., help="Other caches: folders holding detections.sqlite, or the files."),
    into: Optional[Path] = typer.Option(None, help="The cache folder to merge into (default: detect.cache_dir)."),
    dataset: Optional[str] = typer.Option(None, help="Merge into the cache this dataset's detect runs use "
                                                     "(its datasets.<name>.detect.cache_dir, when it sets one)."),
    params: Path = typer.Option(Path("params.yaml"), help="Parameters file (for detect.cache_dir)."),
) -> None:
    """Add the entries of other detection caches to this machine's (existing entries stay)."""
    from ferdata.cache import DetectionCache, readable_cache, stored_signatures
    from ferdata.parts import Part, parts_missing
    from ferdata.params import load_params
    from ferdata.prepare import cache_dir_of

    if into is not None and dataset is not None:
        raise typer.BadParameter("give --into or --dataset, not both", param_hint="--dataset")
    for source in sources:              # every source found and readable before the target is opened (or made)
        readable_cache(source)
    target = into if into is not None else cache_dir_of(load_params(params), dataset)
    in_use = _signatures_here(params)
    with DetectionCache(target) as cache:
        for source in sources:
            c = cache.merge(source)
            typer.echo(f"{source}: {c.added} added, {c.present} already here"
                       + (f", {c.differing} differing from the entry here (kept it)" if c.differing else "")
                       + (f", {c.corrupt} damaged (skipped: detected again when needed)" if c.corrupt else ""))
            unused = sum(n for sig, n in stored_signatures(source).items() if in_use is not None and sig not in in_use)
            if unused:
                typer.echo(f"  warning: {unused} of its entries were detected with a backend signature no dataset of "
                           f"{params} uses here (another backend, setting, model file or face package release; see "
                           "below): `dvc repro` detects those images again on this machine")
        typer.echo(f"{cache.path}: {len(cache)} detections")
        for sig, n in cache.signatures().items():
            typer.echo(f"  {n:9d}  {sig}")
        parts = cache.parts()
        for (name, sig), done in sorted(parts.items()):
            several = sum(d == name for d, _ in parts) > 1
            gap = parts_missing(done)
            listed = ", ".join(sorted(done, key=lambda p: (Part.parse(p).count, Part.parse(p).index)))
            typer.echo(f"{name}: parts {listed} detected" + (f" (backend {sig})" if several else "")
                       + (f"; {gap}: `dvc repro` detects those images here" if gap else ": the whole dataset"))


def _signatures_here(params: Path) -> Optional[set[str]]:
    """The detection-cache signatures the datasets of ``params`` would use on this machine, or None where that
    cannot be told (no params file, a backend whose models are not here): a part detected with other settings
    is said at the merge, before `dvc repro` detects its images again on one machine."""
    from ferdata.params import load_params
    from ferdata.prepare import signatures_in_use

    try:
        return set().union(*signatures_in_use(load_params(params)).values())
    except (OSError, ValueError, KeyError, ImportError):
        return None


@cache_app.command("prune")
def cache_prune(
    params: list[Path] = typer.Option([Path("params.yaml")], "--params",
                                      help="Parameters file: the datasets whose detections to keep; repeat it for "
                                           "every checkout (or experiment's params) that shares the cache."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be dropped; change nothing."),
) -> None:
    """Drop the entries no dataset in params.yaml would use now (detected with other backends, settings,
    model files, package releases or decoding code) and compact each cache file.

    A cache shared between checkouts keeps only what the --params files use: give each checkout's."""
    from ferdata.cache import FILE, DetectionCache, stored_signatures
    from ferdata.params import load_params
    from ferdata.prepare import signatures_in_use

    in_use: dict[Path, set[str]] = {}
    for path in params:
        for folder, sigs in signatures_in_use(load_params(path)).items():
            in_use.setdefault(folder, set()).update(sigs)
    for folder, keep in in_use.items():
        if not (folder / FILE).is_file():
            typer.echo(f"{folder}: no detection cache yet")
            continue
        if dry_run:                     # read-only: opened to write, the file was made WAL (a rewrite) or refused
            counts = stored_signatures(folder)
            stale = {sig: n for sig, n in counts.items() if sig not in keep}
            dropped = sum(stale.values())
            typer.echo(f"{folder / FILE}: would drop {dropped}, kept {sum(counts.values()) - dropped}")
        else:
            with DetectionCache(folder) as cache:
                stale = {sig: n for sig, n in cache.signatures().items() if sig not in keep}
                dropped = cache.prune(keep)
                typer.echo(f"{cache.path}: dropped {dropped}, kept {len(cache)}")
        for sig, n in stale.items():
            typer.echo(f"  {n:9d}  {sig}")


@app.command()
def datasets() -> None:
    """List dataset readers and what each expects on disk."""
    from ferdata.datasets import COMMON_OPTIONS, READERS

    for name in READERS.names():
        reader = READERS.get(name)
        typer.echo(f"{name:12s} {reader.expects}")
        if reader.option_defaults:
            typer.echo(f"{'':12s} options: {json.dumps(dict(reader.option_defaults))}")
    listed = [n for n in READERS.names() if READERS.get(n).subset_pattern is not None]
    readers = ", ".join(listed[:-1]) + (" and " if len(listed) > 1 else "") + listed[-1]
    typer.echo(f"every reader also takes: {json.dumps(dict(COMMON_OPTIONS))} "
               "(exclude_classes: class names dropped as excluded_class, e.g. [Contempt]; subsets, "
               f"{readers} only: "
               "{name: list file} of test subsets the evaluator scores apart)")


@app.command()
def backends(
    model_dir: Optional[Path] = typer.Option(None, help="Folder with model files (default: detect.model_dir of "
                                             "--params, or of params.yaml when there is one here)."),
    params: Optional[Path] = typer.Option(None, help="Parameters file (section `detect`: model_dir, options; default: "
                                          "params.yaml when there is one here)."),
) -> None:
    """List face backends and whether each can run here without downloading.

    Looks in the model folder and in each package's own default places, for the files detect.options
    picks (insightface's pack, face_alignment's detector)."""
    from ferdata.faces import BACKENDS
    from ferdata.params import load_params

    given, given_dir = params is not None, model_dir  # one given is read (a missing one is an error)
    if not given and Path("params.yaml").is_file():   # one found here may be another project's
        params = Path("params.yaml")
    options: dict = {}
    configured = None
    if params is not None:
        detect = load_params(params).get("detect")
        if given and not isinstance(detect, dict):
            raise ValueError(f"{params} has no detect section (a mapping with model_dir) to read")
        if isinstance(detect, dict):
            configured = detect.get("backend")
            # the options pick the files a backend needs (insightface's pack, face_alignment's detector)
            options = detect.get("options") or {}
            if not isinstance(options, dict):
                raise ValueError(f"{params}: detect.options must be a mapping, got {options!r}")
        if model_dir is None:
            model_dir = detect.get("model_dir") if isinstance(detect, dict) else None
            if model_dir is not None and not isinstance(model_dir, str):
                raise ValueError(f"{params}: detect.model_dir must be a folder path or null, got {model_dir!r}")
    for name in BACKENDS.names():
        cls = BACKENDS.get(name)
        mine = {k: v for k, v in options.items() if k in cls.option_names()}
        fallback = None if name == configured or configured in (None, "auto") else {}
        typer.echo(f"{name:15s} {_readiness(cls, mine, model_dir, fallback)}")
    if params is not None:
        _dataset_backends(load_params(params), given_dir)


def _dataset_backends(params: dict, model_dir: Optional[Path]) -> None:
    """One line per dataset whose own detect values (``datasets.<name>.detect``: backend, options,
    model_dir) differ from the section's, judged as its detect stage resolves them (``--model-dir``
    still wins): the section's line says nothing of the models that dataset needs."""
    from ferdata.datasets import dataset_spec
    from ferdata.faces import BACKENDS
    from ferdata.params import dataset_specs
    from ferdata.stages.detect import detect_section

    try:
        names = list(dataset_specs(params))
    except ValueError as e:             # another project's params.yaml (found here, not given): said, not fatal
        typer.echo(f"datasets: {e}")
        return
    for name in names:
        try:
            spec = dataset_spec(params, name, build=False)
            if not set(spec.detect or {}) & {"backend", "options", "model_dir"}:
                continue
            det = detect_section(params, name, spec)
        except (ValueError, KeyError) as e:
            typer.echo(f"datasets.{name}: {e}")
            continue
        cls = BACKENDS.get(det.backend)
        mine = {k: v for k, v in det.options.items() if k in cls.option_names()}
        typer.echo(f"datasets.{name} {det.backend}: "
                   f"{_readiness(cls, mine, model_dir if model_dir is not None else det.model_dir, None)}")


def _readiness(cls, options: dict, model_dir, fallback: Optional[dict]) -> str:
    """Whether face backend ``cls`` can run here with ``options`` from ``model_dir``, in words;
    ``fallback``: the options to judge it with when it refuses these (None: say the refusal)."""
    from ferdata.faces import MissingModelError

    try:
        try:
            cls(options, model_dir).check_ready()
        except ValueError:
            if fallback is None:
                raise
            cls(fallback, model_dir).check_ready()      # options set for detect.backend: judge this one alone
    except ValueError as e:
        return f"refuses detect.options ({e})"
    except MissingModelError as e:
        return f"weights missing: {e.missing} (looked in {', '.join(e.looked_in) or 'no folder'})"
    except ImportError as e:
        return f"package missing ({e})"
    return "available (nothing to download; model files, if any, load when a run starts)"


@app.command()
def verify(shards: Path = typer.Argument(..., help="A shards folder (with <split>/_info.json), or one split's "
                                                   "folder (its own checks only: not splits sharing a sample, "
                                                   "a split missing, or splits from two preparations).")) -> None:
    """Check shards against their _info.json (docs/sharing.md, "Verifying what arrived").

    Every shard's sha256, size and sample count, the class histogram, samples in two shards or
    splits, each sample's members, unsafe tar members."""
    from ferdata.errors import shown
    from ferdata.verify import verify_shards

    problems = verify_shards(shards)
    for p in problems:              # names from the folder and its _info.json (a copy from elsewhere): shown inert
        typer.echo(shown(p), err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{shown(shards)}: all shards match their _info.json")


@app.command()
def sample(
    out: Path = typer.Argument(..., help="Where to write the sample dataset."),
    params: Path = typer.Option(Path("params.yaml"), help="Parameters file (section `sample`)."),
) -> None:
    """Generate the bundled smoke-test dataset (AffectNet layout)."""
    from ferdata.params import load_params, stage_section
    from ferdata.sample import SampleParams, make_affectnet_sample

    _setup_logging(False)
    summary = make_affectnet_sample(out, stage_section(load_params(params), "sample", SampleParams))
    typer.echo(json.dumps(summary, indent=2))


@app.command("params")
def default_params() -> None:
    """Print the project's params.yaml, to start a project outside a checkout.

    `ferdata params > params.yaml` gives `prepare`, `detect`, `sample` and `cache` the settings a checkout has.

    An installed wheel prints its copy, as released; under `pip install -e`, the checkout's file, edits included."""
    from ferdata.params import default_params_text

    typer.echo(default_params_text(), nl=False)


@app.command("show")
def show_sheet(
    path: Path = typer.Argument(..., help="Shards folder (<split>/*.tar), one .tar, or an aligned chunk folder."),
    out: Path = typer.Option(Path("sheet.png"), "--out", "-o",
                             help="Contact sheet image to write (.png, or .jpg, .webp, .bmp: the format follows "
                                  "the suffix)."),
    n: int = typer.Option(32, "--n", "-n", min=1, help="How many samples to show (taken a tar at a time in turn, so splits and shards mix; a sheet holds at most 5000, a .jpg or .webp fewer)."),
) -> None:
    """Contact sheet of aligned faces to check alignment by eye.

    Each face shows its landmarks, the template points, the heatmap and both half-faces, with class and backend."""
    from ferdata.show import show

    typer.echo(str(show(path, out, n)))


@app.command()
def predict(
    inputs: list[Path] = typer.Argument(..., help="Images, videos or folders of them."),
    model: Path = typer.Option(..., "--model", "-m", help="A training checkpoint (runs/train/ckpt/best.pt)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write .csv or .json here (default: CSV on stdout)."),
    annotate: Optional[Path] = typer.Option(
        None, help="Folder for copies of the images with boxes and labels (sub-folders as in the inputs)."),
    backend: Optional[str] = typer.Option(
        None, help="Face backend (`ferdata backends`): auto, embedded, insightface, ... Default: the one that "
                   "made the model's training faces when it runs here, else auto."),
    model_dir: Optional[Path] = typer.Option(None, help="Folder with the backend's model files."),
    backend_option: list[str] = typer.Option(
        [], "--backend-option", help="KEY=VALUE for the face backend, as detect.options in params.yaml "
                                     "(e.g. pack=antelopev2), over the options training's backend ran with; "
                                     "repeatable."),
    batch_size: int = typer.Option(32, min=1, help="Faces per forward pass."),
    every: int = typer.Option(10, min=1, help="Videos: score every N-th frame."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    flip_tta: bool = typer.Option(False, help="Average with the mirrored face."),
    grey: Optional[bool] = typer.Option(
        None, "--grey/--colour", help="Score faces in grey (R = G = B) or in colour. Default: grey for a model "
                                      "trained on grey faces only (FER2013, JAFFE), else colour."),
    keypoints: Optional[str] = typer.Option(
        None, help="Align each face by the face backend's 5 keypoints (detector) or by the eye centres, nose "
                   "tip and mouth corners of its 68 landmarks (landmarks). Default: landmarks for a model most of "
                   "whose faces placed by points were placed by a dataset's own landmarks (backend annotations), "
                   "else detector."),
    allow_download: bool = typer.Option(
        False, "--allow-download", help="Let insightface / face_alignment fetch missing weights (needs network)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also log debug messages."),
) -> None:
    """Per-face expression probabilities of images, videos or folders, faces aligned as in training.

    Prints CSV or writes CSV/JSON; the last line counts faces, images without one and inputs not read
    (exit status 1 when no input could be read)."""
    from ferdata.params import parse_assignments
    from fermodels.distributed import DEVICE_RULE
    from fermodels.predict import describe, predict_files     # torch: imported by this command only
    from fermodels.predictor import KEYPOINTS

    # told as usage errors before the inputs are walked and the checkpoint loaded (a typo was told after both)
    if keypoints is not None and keypoints not in KEYPOINTS:
        raise typer.BadParameter(f"{keypoints!r}: give {' or '.join(KEYPOINTS)}", param_hint="--keypoints")
    if not DEVICE_RULE[0](device):
        raise typer.BadParameter(f"{device!r}: give {DEVICE_RULE[1]}", param_hint="--device")
    _setup_logging(verbose)                                   # which face backend runs, and why

    try:
        options = parse_assignments(backend_option, example="threads=2")
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--backend-option") from None
    # `kill`, `timeout`, a container's stop: the run ends as on Ctrl-C, keeping what it scored (a .json's
    # .partial too; a signal's default action ends the process with the rows held in memory), status 128 + 15
    before = signal.signal(signal.SIGTERM, _stopped)
    try:
        summary = predict_files(inputs, model, out=out, annotate=annotate, backend=backend, model_dir=model_dir,
                                backend_options=options, batch_size=batch_size, every=every, device=device,
                                flip_tta=flip_tta, allow_download=allow_download, grey=grey, keypoints=keypoints,
                                stream=write_stdout if out is None else None).summary
    finally:
        signal.signal(signal.SIGTERM, before)
    typer.echo(describe(summary), err=True)
    if summary and all(s.get("problem") for s in summary):   # nothing scored: not "no faces"
        raise typer.Exit(1)


def _stopped(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def write_stdout(text: str) -> None:
    """Text naming files, written as UTF-8 whatever the locale, a file name undecodable as UTF-8 as its
    own bytes (as ``--out`` writes it), never an encoding error after every image was scored. On a
    terminal each line is shown as ``ferdata.errors.shown`` writes names (a file named with ESC
    sequences cleared the screen or set its title); into a pipe or a file the text is written as it is."""
    if sys.stdout.isatty():
        from ferdata.errors import inert_lines

        text = inert_lines(text)
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        sys.stdout.write(text)
        return
    sys.stdout.flush()
    buffer.write(text.encode("utf-8", "surrogateescape"))
    buffer.flush()


version_option(app, "ferdata")
reflow_help(app)


def main() -> None:
    """The ``ferdata`` console script (:mod:`ferdata.errors`: bad input is one line, not a traceback)."""
    run_cli(app)


if __name__ == "__main__":
    main()
