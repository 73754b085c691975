"""Explanation maps as a second signature of the exported model, and their sanity checks.

Default method: **Integrated Gradients** (Sundararajan et al., 2017) from the black image,
summed over colour channels. Black is the natural baseline here: it is what segmentation left
around every C-NMC cell, so the path from black to the image "adds the cell", and the map's
total is exactly P(all | image) - P(all | black) (completeness). It is computed on each plain
network inside the shipped model (per test-time view, mapped back to the input's orientation,
then averaged over views and ensemble members like the probabilities). By construction a
pixel that is black in the model's input gets zero, so "heat on the cell" is high for any
model; what the method must show beyond that is that the maps depend on the learned weights
(Adebayo et al., 2018), which Grad-CAM on the committed improved CNN did not (its maps kept a
blob over the cell under random weights, rank correlation 0.88); Integrated Gradients did
(see app/README.md, "Explanations", for the numbers of every method on both models).

Also available (``method``, recorded in the card's ``explain`` group): ``grad-cam`` (Selvaraju
et al., 2017, on the last convolutional activation, with the black image's activation
subtracted), ``hires-cam`` (Draelos and Carin, 2020: gradient times activation per location
instead of Grad-CAM's channel-mean gradient), ``layer-cam`` (Jiang et al., 2021: HiResCAM's
elementwise product on every block's output, fused after scaling each to the same peak; the
gradient's sign is kept, so the map stays signed) and ``occlusion`` (Zeiler and Fergus, 2014,
with black patches over the whole shipped model).

Every method's signature returns, besides the probabilities, the *signed* map for the
positive label in the input image's own pixel frame: positive values push towards the positive
label, negative ones towards the other label. The map for the predicted class is
``max(+map, 0)`` (positive label) or ``max(-map, 0)`` (other label), because with a sigmoid
output d(1 - p) = -dp. Maps are resized from the model's input (or feature grid) to its crop
and padded with zeros outside it.

New versions get the signature at export (:mod:`training.pipeline`). Committed versions get it
without retraining: :func:`restore_shipped` rebuilds the network from the card's training
config and reads the weights from the version's own SavedModel variables;
:func:`export_with_explanations` writes them as a new version whose ``serving_default`` is
checked to give the same probabilities as the old one. ``python -m training.explain check``
runs the sanity checks on any version.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import get_args

import keras
import numpy as np
import tensorflow as tf
from keras import layers
from numpy.typing import NDArray

from contract.card import CARD_FILE, CardExplain, ModelCard
from contract.card import ExplainMethod as Method
from training.export import IMAGES_SPEC, CellClassifier, export_version
from training.models import (
    DihedralAverage,
    MeanEnsemble,
    check_choice,
    dihedral_views,
    make_model,
    with_dihedral_average,
)
from training.preprocess import resize_for_model
from training.train import TrainConfig

EXPLAIN_SIGNATURE = "explain"
DEFAULT_METHOD: Method = "integrated-gradients"
METHOD_NAMES: dict[Method, str] = {
    "grad-cam": "Grad-CAM",
    "hires-cam": "HiResCAM",
    "layer-cam": "LayerCAM",
    "integrated-gradients": "Integrated Gradients",
    "occlusion": "occlusion",
}


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
    if hasattr(model, "networks"):  # training.shipping.CalibratedEnsemble
        return list(model.networks())
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
    """``serve`` as before, plus ``explain``: probabilities and the signed map of ``method``."""

    def __init__(
        self,
        model: keras.Model,
        input_size: int,
        crop_fraction: float,
        method: Method = DEFAULT_METHOD,
    ) -> None:
        super().__init__(model, input_size, crop_fraction)
        check_choice("method", method, Method)
        self.method = method
        self.network_mappers = [
            NetworkMapper(net, views, method) for net, views in networks_of(model)
        ]

    @tf.function(input_signature=[IMAGES_SPEC], autograph=False)  # type: ignore[untyped-decorator]
    def explain(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        shape = tf.shape(images)
        pixels = tf.cast(resize_for_model(images, self.input_size, self.crop_fraction), tf.float32)
        if self.method == "occlusion":
            p_all, signed = occlusion_map(self.model, pixels, self.input_size)
        else:
            n = shape[0]
            maps, probs = [], []
            for mapper in self.network_mappers:
                signed_views, p = mapper(pixels)
                maps.append(signed_views)
                probs.append(tf.reduce_mean(tf.reshape(p, [mapper.views, n]), axis=0))
            signed = tf.add_n(maps) / float(len(maps))
            p_all = tf.add_n(probs) / float(len(probs))
        return {
            "probabilities": tf.stack([1.0 - p_all, p_all], axis=1),
            "class_activation": pad_to_frame(signed, shape[1], shape[2], self.crop_fraction),
        }


class NetworkMapper:
    """One plain network's signed map of P(all) on its input, test-time views undone."""

    def __init__(self, network: keras.Model, views: int, method: Method) -> None:
        self.views = views
        self.method = method
        self.input_size = int(network.inputs[0].shape[1])
        self.plain = network
        chosen = explained_layers(network, method)
        self.geometry = [feature_geometry(network, layer) for layer in chosen]
        outputs = [layer.output for layer in chosen]
        self.network = keras.Model(network.inputs, [*outputs, network.outputs[0]])

    def __call__(self, pixels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        batch = dihedral_views(pixels, self.views) if self.views > 1 else pixels
        if self.method == "integrated-gradients":
            signed, p = integrated_gradients(self.plain, batch)
        else:
            signed, p = self._activation_map(batch)
        per_view = tf.split(signed, self.views, axis=0) if self.views > 1 else [signed]
        return tf.add_n([undo_view(m, i) for i, m in enumerate(per_view)]) / self.views, p

    def _activation_map(self, batch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            *features, p = self.network(batch, training=False)
            target = tf.reduce_sum(p)
        grads = tape.gradient(target, features)
        *blacks, _ = self.network(tf.zeros_like(batch[:1]), training=False)
        maps = []
        for a, g, black, geometry in zip(features, grads, blacks, self.geometry, strict=True):
            if self.method == "grad-cam":
                g = tf.reduce_mean(g, axis=[1, 2], keepdims=True)
            m = tf.reduce_sum(g * (a - black), axis=-1, keepdims=True)
            maps.append(place_on_input(m, geometry, self.input_size))
        if len(maps) == 1:
            return maps[0], p
        # LayerCAM's fusion: each layer's map scaled to the same peak, so the coarse layers'
        # larger values do not drown the finer ones.
        peaks = [tf.reduce_max(tf.abs(m), axis=[1, 2, 3], keepdims=True) + 1e-12 for m in maps]
        return tf.add_n([m / peak for m, peak in zip(maps, peaks, strict=True)]), p


def explained_layers(network: keras.Model, method: Method) -> list[layers.Layer]:
    """The spatial layers a method reads: the last one, or (layer-cam) every block's output."""
    if method == "layer-cam":
        return block_outputs(network)
    if method == "integrated-gradients":
        return []
    return [feature_layer(network)]


def block_outputs(network: keras.Model) -> list[layers.Layer]:
    """Each convolutional block's activation (the layer before each pooling), finest first."""
    pools = layers.MaxPooling2D | layers.AveragePooling2D | layers.GlobalAveragePooling2D
    activations = layers.Conv2D | layers.ReLU | layers.Activation
    chosen = [
        before
        for before, after in zip(network.layers, network.layers[1:], strict=False)
        if isinstance(after, pools) and isinstance(before, activations)
    ]
    if not chosen:
        raise ValueError(f"{network.name} has no convolutional block to explain")
    return chosen


# The path's images go through the network as one batch of IG_STEPS x views x N: the service
# explains one image per call, so that batch stays small.
IG_STEPS = 16


def integrated_gradients(network: keras.Model, batch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Sundararajan et al. (2017) from the black image, summed over colour channels (midpoint
    rule, ``IG_STEPS`` points): the map sums to P(x) - P(black)."""
    n = tf.shape(batch)[0]
    alphas = (tf.range(IG_STEPS, dtype=tf.float32) + 0.5) / IG_STEPS
    path = alphas[:, None, None, None, None] * batch[None]
    path = tf.reshape(path, tf.concat([[-1], tf.shape(batch)[1:]], axis=0))
    with tf.GradientTape() as tape:
        tape.watch(path)
        p_path = network(path, training=False)
        target = tf.reduce_sum(p_path)
    grads = tf.reshape(tape.gradient(target, path), tf.concat([[IG_STEPS], tf.shape(batch)], 0))
    attribution = tf.reduce_sum(batch * tf.reduce_mean(grads, axis=0), axis=-1, keepdims=True)
    return attribution, tf.reshape(network(batch, training=False), [n, 1])


OCCLUSION_PATCH = 0.125  # of the model's input side
OCCLUSION_STRIDE = 0.5  # of the patch
OCCLUSION_CHUNK = 16  # occluded copies per model call, to bound memory


def occlusion_map(model: keras.Model, pixels: tf.Tensor, size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Zeiler and Fergus (2014) with black patches: each pixel's value is the mean drop in
    P(all) when a patch covering it is blacked out (black is what segmentation left around the
    cell, so a black patch removes that part of the cell). Runs the whole shipped model, views
    and members included."""
    masks = occlusion_masks(size)  # [K, S, S, 1], 0 inside the patch
    k = masks.shape[0]
    padded = -(-k // OCCLUSION_CHUNK) * OCCLUSION_CHUNK  # all-ones masks: no drop, no cover
    chunks = np.concatenate([masks, np.ones((padded - k, size, size, 1), np.float32)])
    chunks = chunks.reshape(padded // OCCLUSION_CHUNK, OCCLUSION_CHUNK, size, size, 1)
    n = tf.shape(pixels)[0]
    p = tf.reshape(model(pixels, training=False), [n])

    def p_of(chunk: tf.Tensor) -> tf.Tensor:
        occluded = tf.reshape(pixels[:, None] * chunk[None], [-1, size, size, 3])
        return tf.reshape(model(occluded, training=False), [n, OCCLUSION_CHUNK])

    p_chunks = tf.map_fn(
        p_of,
        tf.constant(chunks),
        fn_output_signature=tf.TensorSpec([None, OCCLUSION_CHUNK], tf.float32),
        parallel_iterations=1,
    )  # [chunks, N, chunk]
    p_occluded = tf.reshape(tf.transpose(p_chunks, [1, 0, 2]), [n, padded])[:, :k]
    drop = p[:, None] - p_occluded  # [N, K]
    inside = tf.constant(1.0 - masks[..., 0])  # [K, S, S]
    total = tf.einsum("nk,kij->nij", drop, inside)
    coverage = tf.maximum(tf.reduce_sum(inside, axis=0), 1.0)
    return p, (total / coverage)[..., None]


def occlusion_masks(size: int) -> NDArray[np.float32]:
    patch = max(1, round(size * OCCLUSION_PATCH))
    stride = max(1, round(patch * OCCLUSION_STRIDE))
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    masks = np.ones((len(starts) ** 2, size, size, 1), np.float32)
    for i, (top, left) in enumerate((y, x) for y in starts for x in starts):
        masks[i, top : top + patch, left : left + patch] = 0.0
    return masks


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
    if card.calibration is not None and "member_threshold_0" in card.calibration.parameters:
        # A calibrated ensemble (training/shipping.py): its maps and probabilities need the
        # members, their thresholds and the Platt map, all in the card; the OOD fits are not
        # needed for explanations.
        from training.shipping import CalibratedEnsemble

        q = card.calibration.parameters
        thresholds = [q[f"member_threshold_{i}"] for i in range(len(networks))]
        return (
            CalibratedEnsemble(networks, thresholds, q["a"], q["b"], views=int(q["views"])),
            config,
            card,
        )
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
    version_dir: Path | str,
    check_images: NDArray[np.uint8],
    tolerance: float = 1e-6,
    method: Method = DEFAULT_METHOD,
    model_dir: Path | str | None = None,
) -> Path:
    """Write ``version_dir``'s model again, with the ``explain`` signature, as the next version
    of ``model_dir`` (default: the folder ``version_dir`` is in).

    The new version's ``serving_default`` must give the old one's probabilities on
    ``check_images`` within ``tolerance``, otherwise nothing is written.
    """
    version_dir = Path(version_dir)
    model, config, old = restore_shipped(version_dir)
    reference = serving_probabilities(version_dir, check_images)
    module = ExplainableCellClassifier(model, config.input_size, config.crop_fraction, method)
    mine = module.serve(tf.constant(check_images))["probabilities"].numpy()
    difference = float(np.abs(mine - reference).max())
    if difference > tolerance:
        raise ValueError(f"rebuilt model differs from {version_dir} by {difference:.2e}")
    extends = explain_section(method).model_copy(
        update={
            "extends_version": old.version,
            "extends_digest": old.digest,
            "max_probability_difference": difference,
        }
    )
    extras = {p.name: p for p in sorted(version_dir.iterdir()) if p.suffix in (".md", ".png")}
    base = old.description  # a re-export replaces the sentence an earlier one added
    if old.explain and old.explain.extends_version:
        base = base.split(f" Version {old.explain.extends_version}'s weights")[0]

    def make_card(version: int, files: dict[str, str]) -> ModelCard:
        return old.model_copy(
            update={
                "version": version,
                "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "description": f"{base} Version {old.version}'s weights with an "
                f"{METHOD_NAMES[method]} 'explain' signature; classification unchanged.",
                "files": files,
                "explain": extends,
            }
        )

    out = export_version(
        model,
        Path(model_dir) if model_dir is not None else version_dir.parent,
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


def explain_section(method: Method = DEFAULT_METHOD) -> CardExplain:
    """The card's ``explain`` group of a version exported with ``ExplainableCellClassifier``."""
    return CardExplain(signature=EXPLAIN_SIGNATURE, method=method)


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


def randomisation_check(
    version_dir: Path, images: NDArray[np.uint8], seed: int = 0, method: Method | None = None
) -> list[float]:
    """Per image, the rank correlation over the cell's pixels between the trained model's
    signed map and the map of the same network with randomised weights."""
    return [c.randomisation_rho for c in sanity_check(version_dir, images, method, seed)]


@dataclass(frozen=True)
class CellCheck:
    """The sanity checks of one image's map."""

    label: str  # the predicted label, whose map is checked
    heat_on_cell: float | None  # share of that map on non-black pixels (None: empty map)
    # The same share for a map spread evenly over the model input's non-black pixels: what a
    # black-baseline method (Integrated Gradients, occlusion) reaches by construction.
    uniform_on_cell: float
    spatial_evidence: float  # that map's mass over the signed map's total absolute mass
    randomisation_rho: float  # rank correlation with the randomised model's map, on the cell


def sanity_check(
    version_dir: Path, images: NDArray[np.uint8], method: Method | None = None, seed: int = 0
) -> list[CellCheck]:
    """Heat on the cell and Adebayo et al.'s randomisation check for each image, with the
    version's own explain method (or ``method``), on weights rebuilt from its variables."""
    model, config, card = restore_shipped(version_dir)
    chosen = method or (card.explain.method if card.explain else DEFAULT_METHOD)
    module = ExplainableCellClassifier(model, config.input_size, config.crop_fraction, chosen)
    probabilities, trained = _maps(module, images)
    randomise_weights(model, seed)
    _, randomised = _maps(module, images)
    floors = uniform_heat_on_cell(images, config.input_size, config.crop_fraction)
    checks = []
    for p, signed, noise, pixels, floor in zip(
        probabilities, trained, randomised, images, floors, strict=True
    ):
        positive = bool(p[card.positive_index] >= card.threshold)
        mass = float(np.maximum(signed if positive else -signed, 0.0).sum())
        total = float(np.abs(signed).sum())
        cell = pixels.max(axis=-1) > 10
        checks.append(
            CellCheck(
                label=card.positive_label if positive else _negative(card),
                heat_on_cell=heat_on_cell(signed, pixels, positive),
                uniform_on_cell=floor,
                spatial_evidence=mass / total if total > 0 else 0.0,
                randomisation_rho=rank_correlation(signed[cell], noise[cell]),
            )
        )
    return checks


def uniform_heat_on_cell(
    images: NDArray[np.uint8], input_size: int, crop_fraction: float
) -> list[float]:
    """Per image, :func:`heat_on_cell` of a map that is 1 on every pixel of the model's input
    that is not exactly black, placed on the frame the way the explain signature does."""
    pixels = resize_for_model(tf.constant(images), input_size, crop_fraction)
    uniform = tf.cast(tf.reduce_max(pixels, axis=-1, keepdims=True) > 0, tf.float32)
    frames = pad_to_frame(uniform, images.shape[1], images.shape[2], crop_fraction).numpy()
    return [heat_on_cell(f, px, True) or 0.0 for f, px in zip(frames, images, strict=True)]


def _negative(card: ModelCard) -> str:
    return next(label for label in card.labels if label != card.positive_label)


def _maps(
    module: ExplainableCellClassifier, images: NDArray[np.uint8]
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    # One image per call: occlusion runs the model on hundreds of copies of each image.
    outputs = [module.explain(tf.constant(images[i : i + 1])) for i in range(len(images))]
    return (
        np.concatenate([o["probabilities"].numpy() for o in outputs]),
        np.concatenate([o["class_activation"].numpy() for o in outputs]),
    )


def read_images(paths: list[Path]) -> NDArray[np.uint8]:
    """RGB pixels of the image files given and of those under the folders given, sorted."""
    from PIL import Image

    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(path)
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files])


IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")


def main(argv: list[str] | None = None) -> None:
    """``python -m training.explain export <version_dir>... --images <file or folder>...``
    writes each version again with the explain signature; ``... check <version_dir> --images
    ...`` prints the sanity checks (one JSON line per image, then the summary)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write versions again with explanations")
    export.add_argument("versions", nargs="+", type=Path)
    export.add_argument(
        "--store", type=Path, help="model folder to write into (default: the version's)"
    )
    check = commands.add_parser("check", help="heat on the cell and the randomisation check")
    check.add_argument("version", type=Path)
    check.add_argument("--seed", type=int, default=0)
    for command in (export, check):
        command.add_argument("--images", nargs="+", type=Path, required=True)
        command.add_argument("--method", choices=get_args(Method), default=None)
    args = parser.parse_args(argv)
    images = read_images(args.images)
    if args.command == "export":
        for version_dir in args.versions:
            out = export_with_explanations(
                version_dir, images, method=args.method or DEFAULT_METHOD, model_dir=args.store
            )
            print(json.dumps({"from": str(version_dir), "to": str(out)}))
        return
    checks = sanity_check(args.version, images, args.method, args.seed)
    for check_one in checks:
        print(json.dumps(dataclasses.asdict(check_one)))
    heat = [c.heat_on_cell for c in checks if c.heat_on_cell is not None]
    rho = [c.randomisation_rho for c in checks]
    print(
        json.dumps(
            {
                "version": str(args.version),
                "images": len(checks),
                "heat_on_cell_mean": float(np.mean(heat)) if heat else None,
                "heat_on_cell_min": min(heat) if heat else None,
                "uniform_on_cell_mean": float(np.mean([c.uniform_on_cell for c in checks])),
                "randomisation_rho_mean": float(np.mean(rho)),
                "randomisation_abs_rho_max": float(np.max(np.abs(rho))),
            }
        )
    )


if __name__ == "__main__":
    main()
