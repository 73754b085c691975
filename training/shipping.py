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

from typing import Any

import keras
import tensorflow as tf

from training.models import dihedral_views
from training.ood import GaussianFit, MahalanobisScore, feature_head


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

    def with_ood(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """([N] calibrated P(all), [N] OOD score) from one pass through the members."""
        outputs = self._member_outputs(x)
        return self.calibrated(outputs), self.ood(outputs)
