"""A deterministic, offline smoke-test dataset in AffectNet's official on-disk layout.

Why: ``dvc repro`` on a fresh clone must run detect -> align -> train -> evaluate with
no download and no licensed data, and the trained model must clearly beat chance so a
broken stage shows up as a broken number. Real face photos that ship inside installed
packages (scikit-image, matplotlib, insightface) are detected once with the embedded
backend; each face then gets a *synthetic* expression from a landmark-driven
thin-plate-spline warp, a random pose, lighting and background, and is written as
``Manually_Annotated_Images/<dir>/<name>.jpg`` plus ``training.csv``/``validation.csv``
with the warped 68 landmarks and the face box. The expressions are caricatures made by
moving landmarks: use the sample to test the pipeline, never for research claims
(docs/sample_dataset.md).

Geometry lives in a per-face "face frame": an upright face, origin between the eyes,
y down, one unit about the inter-ocular distance (fitted on the nose and eye corners). Expressions are
landmark displacements in that frame; each output pixel is mapped back once
(output -> pose inverse -> spline -> portrait pixel), so every class goes through the
same single resampling and no class is blurrier than another.

Modules, in the order the data flows:

- ``sources``: the package photos, their detected faces as ``Identity`` portraits, and
  which identities each split and slot use;
- ``expressions``: each class as landmark displacements and skin creases;
- ``warp``: the thin-plate spline and the random pose;
- ``paint``: creases, mouth interiors, backgrounds and colour jitter;
- ``render``: one image (``render_sample``);
- ``writer``: the AffectNet layout and the entry point ``make_affectnet_sample``.
"""
from ferdata.sample.writer import MARKER, SampleParams, make_affectnet_sample

__all__ = ["MARKER", "SampleParams", "make_affectnet_sample"]
