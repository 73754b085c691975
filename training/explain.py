"""Grad-CAM class-activation maps as a second signature of the exported model.

Method: Grad-CAM (Selvaraju et al., 2017) on the last convolutional activation of each
network. For the improved architecture (conv features -> global average pooling -> dense)
Grad-CAM equals the original CAM of Zhou et al. (2016) up to a constant, i.e. it is exactly
the per-location contribution of the pooled features to the logit's linear part; for the
paper CNN (flatten -> dense) it is the usual first-order approximation. Gradient-only maps
(plain gradients, SmoothGrad) were not chosen: on these small networks they mostly trace
edges and the black border, and they fail Adebayo et al.'s randomisation check more often.

The exported ``explain`` signature returns, besides the probabilities, the *signed* map for
the positive label in the input image's own pixel frame: positive values push towards the
positive label, negative ones towards the other label. The map for the predicted class is
``max(+map, 0)`` (positive label) or ``max(-map, 0)`` (other label), because with a sigmoid
output d(1 - p) = -dp. Test-time views are mapped back to the input's orientation before
averaging, ensemble members are averaged like their probabilities, and the map is resized
from the feature grid to the model's crop and padded with zeros outside it.

Committed versions get the signature without retraining: :func:`restore_shipped` rebuilds
the network from the card's training config and reads the weights from the version's own
SavedModel variables; :func:`export_with_explanations` writes them as a new version whose
``serving_default`` is checked to give the same probabilities as the old one.
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import keras
import numpy as np
import tensorflow as tf
from keras import layers
from numpy.typing import NDArray

from contract.card import CARD_FILE, CardExplain, ModelCard
from training.export import IMAGES_SPEC, CellClassifier, export_version
from training.models import (
    DihedralAverage,
    MeanEnsemble,
    dihedral_views,
    make_model,
    with_dihedral_average,
)
from training.preprocess import resize_for_model
from training.train import TrainConfig

EXPLAIN_SIGNATURE = "explain"
METHOD: Literal["grad-cam"] = "grad-cam"


def feature_layer(model: keras.Model) -> layers.Layer:
    """The last layer with a spatial (4-D) output that is a convolution or its activation."""
    for layer in reversed(model.layers):
        shape = getattr(layer, "output", None)
        if (
            isinstance(layer, (layers.Conv2D, layers.ReLU, layers.Activation))
            and shape is not None
            and len(shape.shape) == 4
        ):
            return layer
    raise ValueError(f"{model.name} has no convolutional layer to explain")


def feature_geometry(network: keras.Model, feature: layers.Layer) -> tuple[float, int]:
    """Where the feature grid sits on the network's input: (top-left, side) in pixels.

    With 'same' padding the grid tiles the whole input; 'valid' convolutions shrink it
    towards the centre (the paper CNN's 12x12 grid covers input pixels 31 to 223 of 256),
    so placing the map over the whole input would shift and stretch it.
    """
    centre, stride = 0.0, 1
    for layer in network.layers:
        if isinstance(layer, layers.Conv2D):
            if layer.padding == "valid":
                centre += (layer.kernel_size[0] - 1) / 2 * stride * layer.dilation_rate[0]
            stride *= layer.strides[0]
        elif isinstance(layer, layers.MaxPooling2D | layers.AveragePooling2D):
            if layer.padding == "valid":
                centre += (layer.pool_size[0] - 1) / 2 * stride
            stride *= layer.strides[0]
        if layer is feature:
            grid = int(feature.output.shape[1])
            return centre - (stride - 1) / 2, grid * stride
    raise ValueError(f"{feature.name} is not a layer of {network.name}")


def networks_of(model: keras.Model) -> list[tuple[keras.Model, int]]:
    """The plain networks inside a shipped model and each one's number of test-time views."""
    members = model.members if isinstance(model, MeanEnsemble) else [model]
    out = []
    for member in members:
        if isinstance(member, DihedralAverage):
            out.append((member.inner, member.views))
        else:
            out.append((member, 1))
    return out


def undo_view(maps: tf.Tensor, index: int) -> tf.Tensor:
    """Map a [N, g, g, 1] map of view ``index`` (see ``dihedral_views``) back to the input."""
    flip, turns = divmod(index, 4)
    if flip:
        maps = tf.image.flip_left_right(maps)
    return tf.image.rot90(maps, k=(4 - turns) % 4)


def place_on_input(maps: tf.Tensor, geometry: tuple[float, int], input_size: int) -> tf.Tensor:
    """[N, g, g, 1] feature-grid map -> [N, input_size, input_size, 1], zero off the grid."""
    top, side = round(geometry[0]), geometry[1]
    resized = tf.image.resize(maps, (side, side), method="bilinear")
    after = input_size - side - top
    return tf.pad(resized, [[0, 0], [top, after], [top, after], [0, 0]])


def pad_to_frame(maps: tf.Tensor, height: tf.Tensor, width: tf.Tensor, crop: float) -> tf.Tensor:
    """[N, S, S, 1] on the model's central crop -> [N, height, width] on the whole image."""
    side = tf.maximum(
        tf.cast(tf.math.round(tf.cast(tf.minimum(height, width), tf.float32) * crop), tf.int32), 1
    )
    top, left = (height - side) // 2, (width - side) // 2
    resized = tf.image.resize(maps, tf.stack([side, side]), method="bilinear")
    padded = tf.pad(
        resized, [[0, 0], [top, height - side - top], [left, width - side - left], [0, 0]]
    )
    return padded[..., 0]


class ExplainableCellClassifier(CellClassifier):
    """``serve`` as before, plus ``explain``: probabilities and the signed Grad-CAM map."""

    def __init__(self, model: keras.Model, input_size: int, crop_fraction: float) -> None:
        super().__init__(model, input_size, crop_fraction)
        self.cam_networks = [
            keras.Model(net.inputs, [feature_layer(net).output, net.outputs[0]])
            for net, _ in networks_of(model)
        ]
        self.cam_views = [views for _, views in networks_of(model)]
        self.cam_geometry = [
            feature_geometry(net, feature_layer(net)) for net, _ in networks_of(model)
        ]

    @tf.function(input_signature=[IMAGES_SPEC], autograph=False)  # type: ignore[untyped-decorator]
    def explain(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        shape = tf.shape(images)
        pixels = tf.cast(resize_for_model(images, self.input_size, self.crop_fraction), tf.float32)
        n = shape[0]
        cams, probs = [], []
        for network, views, geometry in zip(
            self.cam_networks, self.cam_views, self.cam_geometry, strict=True
        ):
            batch = dihedral_views(pixels, views) if views > 1 else pixels
            with tf.GradientTape() as tape:
                features, p = network(batch, training=False)
                target = tf.reduce_sum(p)
            grads = tape.gradient(target, features)
            weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)
            black, _ = network(tf.zeros_like(batch[:1]), training=False)
            cam = tf.reduce_sum(weights * (features - black), axis=-1, keepdims=True)
            per_view = tf.split(cam, views, axis=0) if views > 1 else [cam]
            cam = tf.add_n([undo_view(c, i) for i, c in enumerate(per_view)]) / views
            cams.append(place_on_input(cam, geometry, self.input_size))
            probs.append(tf.reduce_mean(tf.reshape(p, [views, n]), axis=0))
        cam = tf.add_n(cams) / float(len(cams))
        p_all = tf.add_n(probs) / float(len(probs))
        return {
            "probabilities": tf.stack([1.0 - p_all, p_all], axis=1),
            "class_activation": pad_to_frame(cam, shape[1], shape[2], self.crop_fraction),
        }


# --- committed versions ----------------------------------------------------------------------

_NETWORK_PREFIX = re.compile(r"^(model(?:/.+?)?)/_operations/\d+/[^/]+/\.ATTRIBUTES/")


def network_prefixes(variables: Path) -> list[str]:
    """Checkpoint paths of the plain networks in a SavedModel (one per ensemble member)."""
    names = tf.train.load_checkpoint(str(variables)).get_variable_to_shape_map()
    prefixes = {
        m.group(1) for k in names if "optimizer" not in k and (m := _NETWORK_PREFIX.match(k))
    }
    return sorted(prefixes)


def restore_shipped(version_dir: Path) -> tuple[keras.Model, TrainConfig, ModelCard]:
    """The shipped Keras model of a committed version, weights read from its variables."""
    card = ModelCard.model_validate_json((version_dir / CARD_FILE).read_text())
    config = TrainConfig.from_dict(card.training.config)
    variables = version_dir / "variables" / "variables"
    networks = []
    for prefix in network_prefixes(variables):
        network = make_model(config.spec, config.improved)
        _restore_by_index(network, variables, prefix)
        networks.append(network)
    if config.test_time_dihedral:
        networks = [with_dihedral_average(n, config.tta_views) for n in networks]
    model = networks[0] if len(networks) == 1 else MeanEnsemble(networks)
    return model, config, card


def _restore_by_index(network: keras.Model, variables: Path, prefix: str) -> None:
    """Keras tracks a functional model's layers as ``_operations/<index>``; read each weight
    by that path and check its shape (a different architecture fails here, loudly)."""
    reader = tf.train.load_checkpoint(str(variables))
    stored = reader.get_variable_to_shape_map()
    for index, layer in enumerate(network.layers):
        for weight in layer.weights:
            attr = weight.path.split("/")[-1]
            key = f"{prefix}/_operations/{index}/{_ATTR.get(attr, attr)}/.ATTRIBUTES/VARIABLE_VALUE"
            if key not in stored:
                raise ValueError(f"{variables}: no value for {key}")
            value = reader.get_tensor(key)
            if tuple(value.shape) != tuple(weight.shape):
                raise ValueError(f"{key}: shape {value.shape}, model wants {weight.shape}")
            weight.assign(value)


_ATTR = {"kernel": "_kernel"}


def serving_probabilities(version_dir: Path, images: NDArray[np.uint8]) -> NDArray[np.float32]:
    loaded = tf.saved_model.load(str(version_dir))
    out = loaded.signatures["serving_default"](images=tf.constant(images))["probabilities"]
    return np.asarray(out.numpy(), dtype=np.float32)


def export_with_explanations(
    version_dir: Path | str, check_images: NDArray[np.uint8], tolerance: float = 1e-6
) -> Path:
    """Write ``version_dir``'s model again, with the ``explain`` signature, as the next version.

    The new version's ``serving_default`` must give the old one's probabilities on
    ``check_images`` within ``tolerance``, otherwise nothing is written.
    """
    version_dir = Path(version_dir)
    model, config, old = restore_shipped(version_dir)
    reference = serving_probabilities(version_dir, check_images)
    module = ExplainableCellClassifier(model, config.input_size, config.crop_fraction)
    mine = module.serve(tf.constant(check_images))["probabilities"].numpy()
    difference = float(np.abs(mine - reference).max())
    if difference > tolerance:
        raise ValueError(f"rebuilt model differs from {version_dir} by {difference:.2e}")
    extends = CardExplain(
        signature=EXPLAIN_SIGNATURE,
        method=METHOD,
        extends_version=old.version,
        extends_digest=old.digest,
        max_probability_difference=difference,
    )
    extras = {p.name: p for p in sorted(version_dir.iterdir()) if p.suffix in (".md", ".png")}

    def make_card(version: int, files: dict[str, str]) -> ModelCard:
        return old.model_copy(
            update={
                "version": version,
                "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "description": f"{old.description} Version {old.version}'s weights with a "
                "Grad-CAM 'explain' signature; classification unchanged.",
                "files": files,
                "explain": extends,
            }
        )

    out = export_version(
        model,
        version_dir.parent,
        config.input_size,
        config.crop_fraction,
        make_card,
        extras,
        module=module,
    )
    new = serving_probabilities(out, check_images)
    if float(np.abs(new - reference).max()) > tolerance:
        shutil.rmtree(out)
        raise ValueError(f"{out}: exported probabilities differ from {version_dir}")
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m training.explain <version_dir>... --images <png>...``"""
    import argparse

    from PIL import Image

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("versions", nargs="+", type=Path)
    parser.add_argument("--images", nargs="+", type=Path, required=True)
    args = parser.parse_args(argv)
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in args.images])
    for version_dir in args.versions:
        out = export_with_explanations(version_dir, images)
        print(json.dumps({"from": str(version_dir), "to": str(out)}))


if __name__ == "__main__":
    main()


# --- sanity checks ---------------------------------------------------------------------------


def randomise_weights(model: keras.Model, seed: int) -> None:
    """Adebayo et al. (2018)'s model-randomisation test: every conv and dense weight redrawn
    (normal, same spread as the trained weight); batch-norm statistics kept, so activations
    stay in range and only what was learned is destroyed."""
    rng = np.random.default_rng(seed)
    for network, _ in networks_of(model):
        for layer in network.layers:
            if isinstance(layer, layers.Conv2D | layers.Dense):
                for weight in layer.weights:
                    spread = float(np.std(weight.numpy())) or 0.05
                    weight.assign(rng.normal(0.0, spread, weight.shape).astype(np.float32))


def rank_correlation(a: NDArray[np.floating], b: NDArray[np.floating]) -> float:
    """Spearman's rho (ties broken by position; the maps are continuous)."""
    ranks_a = np.argsort(np.argsort(a, axis=None)).astype(np.float64)
    ranks_b = np.argsort(np.argsort(b, axis=None)).astype(np.float64)
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def heat_on_cell(
    signed: NDArray[np.float32], pixels: NDArray[np.uint8], positive: bool, dark_level: int = 10
) -> float | None:
    """Share of the predicted label's map mass on non-black pixels (None: no mass)."""
    heat = np.maximum(signed if positive else -signed, 0.0)
    total = float(heat.sum())
    if total <= 0:
        return None
    return float(heat[pixels.max(axis=-1) > dark_level].sum()) / total


def randomisation_check(version_dir: Path, images: NDArray[np.uint8], seed: int = 0) -> list[float]:
    """Per image, the rank correlation over the cell's pixels between the trained model's
    signed map and the map of the same network with randomised weights."""
    model, config, _ = restore_shipped(version_dir)
    module = ExplainableCellClassifier(model, config.input_size, config.crop_fraction)
    trained = module.explain(tf.constant(images))["class_activation"].numpy()
    randomise_weights(model, seed)
    randomised = module.explain(tf.constant(images))["class_activation"].numpy()
    cells = images.max(axis=-1) > 10
    return [
        rank_correlation(t[c], r[c]) for t, r, c in zip(trained, randomised, cells, strict=True)
    ]
