"""Export a trained model as a versioned SavedModel with its model card, atomically."""

from __future__ import annotations

import hashlib
import os
import platform
import secrets
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import keras
import tensorflow as tf

from contract.card import (
    CARD_FILE,
    CardData,
    CardFramework,
    CardInput,
    CardMetrics,
    CardOutput,
    CardTraining,
    InputChecks,
    ModelCard,
)
from training.data import LABELS, POSITIVE_LABEL
from training.preprocess import resize_for_model

CITATION = (
    "Gupta, A., & Gupta, R. (2019). ALL Challenge dataset of ISBI 2019 [Data set]. "
    "The Cancer Imaging Archive. https://doi.org/10.7937/tcia.2019.dc64i46r (CC BY 3.0)"
)
DATASET = "C-NMC 2019 (subset in shared/data/cnmc)"
INTENDED_USE = (
    "Research and decision-support demonstration on C-NMC-style segmented single "
    "white-cell images. Not a diagnostic device; not validated for clinical use."
)

IMAGES_SPEC = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")


class CellClassifier(tf.Module):  # type: ignore[misc]
    """uint8 images of any size -> [N, 2] probabilities ordered as ``LABELS``."""

    def __init__(self, model: keras.Model, input_size: int, crop_fraction: float) -> None:
        super().__init__(name="cell_classifier")
        self.model = model
        self.input_size = input_size
        self.crop_fraction = crop_fraction

    @tf.function(input_signature=[IMAGES_SPEC], autograph=False)  # type: ignore[untyped-decorator]
    def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = resize_for_model(images, self.input_size, self.crop_fraction)
        p_all = tf.reshape(self.model(tf.cast(pixels, tf.float32), training=False), [-1])
        p_all = tf.cast(p_all, tf.float32)
        return {"probabilities": tf.stack([1.0 - p_all, p_all], axis=1)}


def next_version(model_dir: Path) -> int:
    versions = (
        [
            int(p.name)
            for p in model_dir.iterdir()
            if p.is_dir() and p.name.isdigit() and int(p.name) > 0
        ]
        if model_dir.is_dir()
        else []
    )
    return max(versions, default=0) + 1


def sha256_files(folder: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            out[path.relative_to(folder).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def build_card(
    *,
    name: str,
    version: int,
    architecture: str,
    description: str,
    threshold: float,
    input_size: int,
    crop_fraction: float,
    metrics: CardMetrics,
    data: CardData,
    training: CardTraining,
    files: dict[str, str],
    input_checks: InputChecks | None = None,
    intended_use: str = INTENDED_USE,
    resize: str = "bilinear (antialiased), rounded to uint8, inside the model",
    created_at: str | None = None,
) -> ModelCard:
    """The card of one exported version (``contract.card.ModelCard``).

    ``input_checks`` defaults to the out-of-distribution rule calibrated on the C-NMC training
    images (see ``contract.card.InputChecks``); ``created_at`` to now.
    """
    crop = (
        "none"
        if crop_fraction >= 1.0
        else f"central square of {crop_fraction:g} x min(height, width), inside the model"
    )
    return ModelCard(
        name=name,
        version=version,
        created_at=created_at or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        architecture=architecture,
        description=description,
        intended_use=intended_use,
        labels=list(LABELS),
        label_descriptions={
            "all": "ALL lymphoblast (leukaemic)",
            "hem": "normal (healthy) B-lymphoid cell",
        },
        positive_label=POSITIVE_LABEL,
        threshold=threshold,
        input=CardInput(
            model_input_size=(input_size, input_size),
            crop=crop,
            resize=resize,
            scaling="x/255, inside the model",
            expected_image="C-NMC-style segmented single white cell on black background, 450x450",
        ),
        input_checks=input_checks or InputChecks(),
        output=CardOutput(),
        metrics=metrics,
        data=data,
        training=training,
        framework=CardFramework(
            tensorflow=tf.__version__, keras=keras.__version__, python=platform.python_version()
        ),
        files=files,
    )


def export_version(
    model: keras.Model,
    model_dir: Path | str,
    input_size: int,
    crop_fraction: float,
    make_card: Callable[[int, dict[str, str]], ModelCard],
    extra_files: dict[str, Path] | None = None,
    module: CellClassifier | None = None,
) -> Path:
    """Write ``model_dir/<next integer>/`` via a temporary folder and ``os.rename``.

    ``make_card(version, file_hashes)`` returns the card. On any failure the temporary folder
    is removed and no integer folder appears. ``module`` replaces the plain
    :class:`CellClassifier`; its ``explain`` function, if it has one, is saved as the
    ``explain`` signature.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".tmp-{secrets.token_hex(4)}"
    try:
        module = module or CellClassifier(model, input_size, crop_fraction)
        signatures = {"serving_default": module.serve}
        if hasattr(module, "explain"):
            signatures["explain"] = module.explain
        tf.saved_model.save(module, str(tmp), signatures=signatures)
        files = sha256_files(tmp)
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
        while True:
            version = next_version(model_dir)
            card = make_card(version, files).model_copy(update={"version": version})
            (tmp / CARD_FILE).write_text(card.to_json())
            try:
                os.rename(tmp, model_dir / str(version))  # fails if a writer took this number
                return model_dir / str(version)
            except OSError:
                if not (model_dir / str(version)).exists():
                    raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def promote(staged: Path | str, model_dir: Path | str) -> Path:
    """Copy a reviewed, staged version into ``model_dir`` as its next version (atomically).

    The files are verified against the card's hashes first, so nothing corrupted is promoted.
    """
    staged, model_dir = Path(staged), Path(model_dir)
    card = ModelCard.model_validate_json((staged / CARD_FILE).read_text())
    actual = {k: v for k, v in sha256_files(staged).items() if k in card.files}
    if actual != card.files:
        raise ValueError(f"{staged}: files do not match the card's sha256 list")
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".tmp-{secrets.token_hex(4)}"
    try:
        shutil.copytree(staged, tmp)
        version = next_version(model_dir)
        (tmp / CARD_FILE).write_text(card.model_copy(update={"version": version}).to_json())
        os.rename(tmp, model_dir / str(version))
        return model_dir / str(version)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
