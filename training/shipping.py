"""The shipped model of a protocol run: its fold models averaged, calibrated, with the OOD score.

The protocol (training/protocol.py, training/study.py) trains one model per fold and keeps it
(``<runs>/<digest>/fold-seed<k>.keras`` with its threshold and subjects). Shipping those very
models means every number the protocol measured out of fold is a number about the members of
the shipped ensemble, and nothing is trained again.

In the graph, per member ``m``: ``z_m = logit(p_m) - logit(t_m)``, its probability centred on
the threshold it chose on its own validation subjects (members' scores sit on different
scales; centring makes them comparable, and ``z = 0`` is each member's own decision point).
The ensemble's ``z`` is the members' mean, and the calibrated probability is
``sigmoid(a * z + b)`` with ``a, b`` fitted (Platt) on the out-of-fold ``z`` of every C-NMC
cell. The decision threshold is ``sigmoid(b)``, i.e. ``z = 0``: the members' own operating
point, which is what the protocol's balanced accuracy measured. ``ood_score`` is the mean
of the members' scaled Mahalanobis distances (training/ood.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from numpy.typing import NDArray

from contract.card import ExplainMethod as Method
from training.explain import DEFAULT_METHOD, ExplainableCellClassifier, explain_section
from training.export import IMAGES_SPEC
from training.models import dihedral_views
from training.ood import FloatArray, GaussianFit, MahalanobisScore, MemberScores, feature_head
from training.preprocess import resize_for_model


@keras.saving.register_keras_serializable(package="training")
class CalibratedEnsemble(keras.Model):  # type: ignore[misc]
    """Members' threshold-centred logits averaged, then Platt-calibrated: [N, 1] P(all).

    ``members`` are plain networks (pixels -> P(all)); ``views`` dihedral views of the input
    are averaged per member (P and features), as ``DihedralAverage`` does.
    """

    def __init__(
        self,
        members: list[keras.Model],
        thresholds: list[float],
        a: float,
        b: float,
        fits: list[GaussianFit] | None = None,
        views: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=kwargs.pop("name", "calibrated_ensemble"), **kwargs)
        if len(thresholds) != len(members):
            raise ValueError("one threshold per member")
        self.members = list(members)
        self.heads = [feature_head(m) for m in members]
        self.thresholds = [float(t) for t in thresholds]
        self.a, self.b = float(a), float(b)
        self.views = views
        self.scores = [
            MahalanobisScore(f.means, f.precision, f.scale, name=f"ood_{i}")
            for i, f in enumerate(fits or [])
        ]
        if self.scores and len(self.scores) != len(members):
            raise ValueError("one Gaussian fit per member")

    def _member_outputs(self, x: tf.Tensor) -> list[tuple[tf.Tensor, tf.Tensor]]:
        n = tf.shape(x)[0]
        views = dihedral_views(x, self.views) if self.views > 1 else x
        out = []
        for head in self.heads:
            p, f = head(views, training=False)
            p = tf.reduce_mean(tf.reshape(p, [self.views, n]), axis=0)
            f = tf.reduce_mean(tf.reshape(f, [self.views, n, -1]), axis=0)
            out.append((p, f))
        return out

    @staticmethod
    def _logit(p: tf.Tensor) -> tf.Tensor:
        p = tf.clip_by_value(p, 1e-6, 1.0 - 1e-6)
        return tf.math.log(p) - tf.math.log1p(-p)

    def calibrated(self, outputs: list[tuple[tf.Tensor, tf.Tensor]]) -> tf.Tensor:
        z = tf.add_n(
            [
                self._logit(p) - self._logit(tf.constant(t, p.dtype))
                for (p, _), t in zip(outputs, self.thresholds, strict=True)
            ]
        ) / float(len(outputs))
        return tf.sigmoid(self.a * z + self.b)

    def ood(self, outputs: list[tuple[tf.Tensor, tf.Tensor]]) -> tf.Tensor:
        if not self.scores:
            raise ValueError("this ensemble has no OOD fits")
        return tf.add_n(
            [score(f) for (_, f), score in zip(outputs, self.scores, strict=True)]
        ) / float(len(self.scores))

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.calibrated(self._member_outputs(x))[:, None]

    def networks(self) -> list[tuple[keras.Model, int]]:
        """The plain member networks and their test-time views (for training/explain.py)."""
        return [(m, self.views) for m in self.members]

    def with_ood(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """([N] calibrated P(all), [N] OOD score) from one pass through the members."""
        outputs = self._member_outputs(x)
        return self.calibrated(outputs), self.ood(outputs)


# --- building the shipped version from a protocol run ---------------------------------------
def logit(p: NDArray[np.floating]) -> FloatArray:
    """The graph's ``CalibratedEnsemble._logit`` in numpy (same clipping, 1e-6), so the Platt
    map fitted here is fitted on the very ``z`` the exported graph computes."""
    q = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    return np.asarray(np.log(q) - np.log1p(-q), np.float64)


@dataclass
class OutOfFold:
    """Every C-NMC cell scored by the member that never saw its subject."""

    p: FloatArray  # that member's P(all)
    threshold: FloatArray  # that member's threshold
    z: FloatArray  # logit(p) - logit(threshold)
    ood: FloatArray  # scaled Mahalanobis distance (training/ood.py)
    fold: NDArray[np.int64]
    members: list[MemberScores]


def out_of_fold(members: list[MemberScores], n_cells: int) -> OutOfFold:
    p, threshold = np.full(n_cells, np.nan), np.full(n_cells, np.nan)
    ood = np.full(n_cells, np.nan)
    fold = np.full(n_cells, -1, dtype=np.int64)
    for k, m in enumerate(members):
        p[m.test_index], threshold[m.test_index] = m.test_p, m.threshold
        ood[m.test_index], fold[m.test_index] = m.test_score, k
    if np.isnan(p).any():
        raise ValueError("the fold models do not score every cell out of fold")
    return OutOfFold(p, threshold, logit(p) - logit(threshold), ood, fold, members)


class ShippedClassifier(ExplainableCellClassifier):
    """The exported module: calibrated probabilities and the OOD score from one pass, and the
    ``explain`` signature: the members' maps (training/explain.py's method, of each member's
    own P(all), averaged; calibration is monotone, so the direction is the ensemble's) with
    the same calibrated probabilities and OOD score as ``serve``."""

    def __init__(
        self,
        model: CalibratedEnsemble,
        input_size: int,
        crop_fraction: float,
        method: Method = DEFAULT_METHOD,
    ) -> None:
        super().__init__(model, input_size, crop_fraction, method)

    @tf.function(input_signature=[IMAGES_SPEC], autograph=False)  # type: ignore[untyped-decorator]
    def explain(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        maps = ExplainableCellClassifier.explain.python_function(self, images)
        out = ShippedClassifier.serve.python_function(self, images)
        return {**out, "class_activation": maps["class_activation"]}

    @tf.function(input_signature=[IMAGES_SPEC], autograph=False)  # type: ignore[untyped-decorator]
    def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = resize_for_model(images, self.input_size, self.crop_fraction)
        p_all, ood = self.model.with_ood(tf.cast(pixels, tf.float32))
        p_all = tf.cast(p_all, tf.float32)
        return {
            "probabilities": tf.stack([1.0 - p_all, p_all], axis=1),
            "ood_score": tf.cast(ood, tf.float32),
        }


@dataclass
class RunAnalysis:
    """What the card says about calibration and the OOD check, all measured out of fold."""

    a: float
    b: float
    ece_before: float  # members' own P(all), pooled out of fold
    ece_after: float  # cross-fitted Platt
    ood_threshold: float
    ood_flag_rate: float  # cross-fitted, genuine C-NMC cells of unseen subjects
    ood_flag_rate_by_class: dict[str, float]
    extra: dict[str, dict[str, dict[str, float]]]


def analyse(
    oof: OutOfFold,
    labels: NDArray[np.int64],
    extra_classes: dict[str, list[str]],
    ood_target: float,
) -> RunAnalysis:
    from training.calibration import cross_fitted, expected_calibration_error, fit_calibration
    from training.ood import cross_fitted_flag_rate

    members = oof.members
    platt = fit_calibration("platt", oof.z, labels)
    a, b = platt["a"], platt["b"]
    after = cross_fitted("platt", oof.z, labels, oof.fold)
    rate, _ = cross_fitted_flag_rate(oof.ood, oof.fold, ood_target)
    threshold = float(np.quantile(oof.ood, 1.0 - ood_target))
    extra: dict[str, dict[str, dict[str, float]]] = {}
    for key, classes in extra_classes.items():
        score = np.mean([m.extra_score[key] for m in members], axis=0)
        z = np.mean([logit(m.extra_p[key]) - logit(np.array(m.threshold)) for m in members], 0)
        flagged = score > threshold
        extra[key] = {}
        for name in sorted(set(classes)):
            here = np.array([c == name for c in classes])
            extra[key][name] = {
                "n": int(here.sum()),
                "flagged": round(float(np.mean(flagged[here])), 4),
                "called_all": round(float(np.mean(z[here] > 0)), 4),
                "called_all_not_flagged": int(np.sum((z[here] > 0) & ~flagged[here])),
                "median_score": round(float(np.median(score[here])), 2),
                "min_score": round(float(np.min(score[here])), 2),
            }
    return RunAnalysis(
        a, b,
        expected_calibration_error(oof.p, labels),
        expected_calibration_error(after, labels),
        threshold, rate,
        {n: float(np.mean(oof.ood[labels == c] > threshold)) for c, n in ((0, "hem"), (1, "all"))},
        extra,
    )  # fmt: skip


OOD_METHOD = (
    "Smallest squared Mahalanobis distance to a class mean (hem, all) of the classifier's "
    "penultimate features (pooled conv features + whole-cell area/colour descriptors), one "
    "shared Ledoit-Wolf-shrunk covariance per member fitted on its training subjects' cells, "
    "divided by the median distance of its validation subjects' cells, averaged over members "
    "(Lee et al., NeurIPS 2018). Threshold: the out-of-fold quantile of genuine C-NMC cells "
    "at the target flag rate."
)


def ship(
    models_dir: Path,
    data: Path,
    cache_dir: Path | None,
    model_store: Path,
    name: str,
    description: str,
    ood_target: float,
    extra: dict[str, Path],
    n_boot: int = 1000,
    command: str = "see training/README.md",
    views: int | None = None,
    pbc: tuple[Path, Path] | None = None,
) -> Path:
    """Export a protocol run's fold models (``<runs>/<digest>/``, scores in ``<digest>.npz``)
    as the next version of ``name``: calibrated ensemble + OOD score, card with the
    protocol's out-of-fold numbers and intervals."""
    from contract.card import CardCalibration, CardData, CardMetrics, CardOODCheck, CardTraining
    from training.data import load_images
    from training.export import CITATION, DATASET, build_card, export_version
    from training.ood import load_image_folder, score_fold_models
    from training.protocol import Cells, RecipeRun, recipe_summary
    from training.train import TrainConfig

    saved = np.load(models_dir.with_suffix(".npz"), allow_pickle=False)
    config = TrainConfig.from_dict(json.loads(str(saved["config"])))
    cost = json.loads(str(saved["cost"]))
    trained_views = config.tta_views if config.test_time_dihedral else 1
    views = trained_views if views is None else views
    images = load_images(data, config.input_size, config.crop_fraction, cache_dir)
    extra_pixels, extra_classes = {}, {}
    for key, folder in extra.items():
        extra_pixels[key], extra_classes[key] = load_image_folder(
            folder, config.input_size, config.crop_fraction
        )
    if pbc is not None:  # the PBC cells segmented like C-NMC cells (training/pbc.py)
        from training.pbc import PBC_CLASSES, load_pbc

        cells_pbc = load_pbc(pbc[0], pbc[1], config.input_size, config.crop_fraction, cache_dir)
        extra_pixels["pbc_segmented"] = cells_pbc.pixels
        extra_classes["pbc_segmented"] = [PBC_CLASSES[i] for i in cells_pbc.labels]
    members = score_fold_models(
        models_dir, images.pixels, images.labels, images.subjects, extra_pixels, views
    )
    oof = out_of_fold(members, len(images.labels))
    result = analyse(oof, images.labels, extra_classes, ood_target)
    cells = Cells(np.asarray(images.subjects), np.asarray(images.labels, dtype=np.int64))
    # The card's numbers are those of the members as shipped (with ``views``), each member's
    # threshold chosen on its validation subjects with those views.
    if views == trained_views and not np.allclose(oof.p, saved["scores"][0], atol=1e-4):
        raise ValueError("the fold models do not reproduce the protocol's out-of-fold scores")
    run = RecipeRun(models_dir.name, oof.p[None], oof.threshold[None], cost, oof.fold[None])
    if views != trained_views:
        # The same fold models with other test-time views: a recipe of its own for the study
        # table (training/study_table.py), paired with the others on the same folds.
        from dataclasses import replace

        from training.study import config_digest, save_run

        as_served = replace(config, test_time_dihedral=views > 1, tta_views=max(views, 1))
        digest = config_digest(as_served, len(members), 1, 0, images.manifest_sha256)
        save_run(models_dir.parent / f"{digest}.npz", run, as_served, cells)
    summary = recipe_summary(cells, run, n_boot=n_boot)
    metas = [m.meta for m in members]
    ensemble = CalibratedEnsemble(
        [m.model for m in members],
        [m.threshold for m in members],
        result.a,
        result.b,
        [m.fit for m in members],
        views,
    )
    threshold = float(1.0 / (1.0 + np.exp(-result.b)))
    oof_what = (
        "out of fold: every C-NMC cell scored by the member that never saw its subject "
        f"({len(members)} subject-grouped folds, seed {config.seed}, {views} test-time "
        f"view(s) per member); 95% intervals from "
        f"{n_boot} subject bootstraps (training/protocol.py)"
    )

    def make_card(version: int, files: dict[str, str]) -> Any:
        card = build_card(
            name=name, version=version, architecture=config.architecture,
            description=description, threshold=threshold, input_size=config.input_size,
            crop_fraction=config.crop_fraction,
            metrics=CardMetrics(
                validation={"what": oof_what, **summary},
                cross_validation={"what": oof_what, "protocol": summary},
            ),
            data=CardData(
                dataset=DATASET, citation=CITATION, manifest_sha256=images.manifest_sha256,
                duplicates_dropped=len(images.duplicates),
                splits={f"member {i}": {
                    "train": len(m["train"]), "validation": len(m["validation"]),
                    "test": len(m["test"]), "selected_epoch": m["selected_epoch"],
                } for i, m in enumerate(metas)},
            ),
            training=CardTraining(
                config=config.to_dict(), seed=config.seed, epochs_run=config.epochs,
                selected_epoch=max(int(m["selected_epoch"]) for m in metas),
                seconds=round(float(cost.get("train_seconds", 0.0)), 1),
                seconds_per_epoch=round(float(cost.get("seconds_per_epoch", 0.0)), 2),
                images_per_second=0.0, command=command,
            ),
            files=files,
        )  # fmt: skip
        return card.model_copy(
            update={
                "explain": explain_section(DEFAULT_METHOD),
                "ood_check": CardOODCheck(
                    threshold=result.ood_threshold,
                    method=OOD_METHOD,
                    measured={
                        "target_flag_rate": ood_target,
                        "cnmc_out_of_fold_flag_rate_cross_fitted": round(result.ood_flag_rate, 4),
                        "cnmc_out_of_fold_flag_rate_by_class": result.ood_flag_rate_by_class,
                        "extra_image_sets": result.extra,
                    },
                ),
                "calibration": CardCalibration(
                    method="platt on the members' threshold-centred logits",
                    parameters={
                        "a": result.a,
                        "b": result.b,
                        "views": float(views),
                        **{f"member_threshold_{i}": m.threshold for i, m in enumerate(members)},
                    },
                    applied="in_graph",
                    ece_before=round(result.ece_before, 4),
                    ece_after=round(result.ece_after, 4),
                    what=(
                        "P(all) = sigmoid(a * mean_m(logit p_m - logit t_m) + b), a and b fitted "
                        "on the out-of-fold cells; ece_before: the members' own P(all) out of "
                        "fold; ece_after: Platt fitted on the other folds (cross-fitted), 15 "
                        "equal-width bins, cells weighted equally. C-NMC's blast share (70%) is "
                        "the prior these probabilities carry."
                    ),
                ),
            }
        )

    return export_version(
        ensemble, model_store / name, config.input_size, config.crop_fraction, make_card,
        module=ShippedClassifier(ensemble, config.input_size, config.crop_fraction),
    )  # fmt: skip
