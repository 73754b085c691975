"""Data parsing, subject splits, a short real training run, export and its serving signature."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from contract.card import CardData, CardMetrics, CardTraining, ModelCard
from training import export as export_module
from training.data import decode_rgb, discover, load_images, parse_subject_id
from training.evaluate import choose_threshold, classification_metrics
from training.export import next_version
from training.models import ImprovedOptions, make_model, make_paper_model, with_dihedral_average
from training.pipeline import train_and_export
from training.splits import cv_splits, final_split, subject_table
from training.train import TrainConfig, predict_p_all, train_model

REAL = Path(__file__).resolve().parents[1] / "data" / "cnmc_real"
TINY_CONFIG = TrainConfig(  # the shipped improved recipe, shrunk
    architecture="improved",
    input_size=32,
    crop_fraction=0.9,
    epochs=2,
    batch_size=8,
    seed=1,
    improved=ImprovedOptions(widths=(8, 16), stain_normalization=False, shape_features=True),
    blur_noise=True,
    test_time_dihedral=True,
)


def stub_card(version: int, files: dict[str, str], threshold: float = 0.5) -> ModelCard:
    """A complete card for exports whose metrics do not matter to the test."""
    return export_module.build_card(
        name="m",
        version=version,
        architecture="improved",
        description="test export",
        threshold=threshold,
        input_size=32,
        crop_fraction=0.9,
        metrics=CardMetrics(),
        data=CardData(
            dataset="none",
            citation="n/a",
            manifest_sha256="0" * 64,
            duplicates_dropped=0,
            splits={},
        ),
        training=CardTraining(
            config=TINY_CONFIG.to_dict(),
            seed=1,
            epochs_run=0,
            selected_epoch=0,
            seconds=0.0,
            seconds_per_epoch=0.0,
            images_per_second=0.0,
            command="tests",
        ),
        files=files,
    )


@pytest.mark.parametrize(
    "change",
    [
        {"architecture": "resnet"},
        {"optimizer": "sgd"},
        {"select_epoch": "best"},
        {"ship": "ensemble"},
        {"tta_views": 3},
    ],
)
def test_config_choices_are_checked_when_built(change: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(change))):
        dataclasses.replace(TINY_CONFIG, **change)  # type: ignore[arg-type]


def test_committed_configs_read_back() -> None:
    """Committed cards hold the flat layout (options beside the other fields); both layouts
    give the same config, and a saved config round-trips."""
    store = Path(__file__).resolve().parents[2] / "model_store"
    flat = json.loads((store / "cnmc-improved-cnn" / "2" / "model_card.json").read_text())
    config = TrainConfig.from_dict(flat["training"]["config"])
    assert config.improved.widths == (16, 32, 64, 128) and config.ship == "cv_ensemble"
    assert not config.improved.stain_normalization and config.tta_views == 4
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(TypeError):
        TrainConfig.from_dict(flat["training"]["config"] | {"widthz": [8]})


def test_parse_subject_ids() -> None:
    assert parse_subject_id("UID_11_1_1_all.bmp") == "UID_11"
    assert parse_subject_id("UID_H10_100_1_hem.png") == "UID_H10"
    assert parse_subject_id("UID_h3_1_1_hem.bmp") == "UID_H3"
    assert parse_subject_id("1.bmp") is None


def test_real_images_are_parsed() -> None:
    ds = discover(REAL)
    assert ds.problems == []
    assert ds.counts() == {"hem": 6, "all": 6}
    subjects = ds.subjects()
    assert subjects["UID_H3"] == "hem" and subjects["UID_51"] == "all"
    assert len(subjects) == 12


def test_tiny_dataset_dedupe_problems_and_prelim(cnmc_tiny: Path, tmp_path: Path) -> None:
    images = load_images(cnmc_tiny, 32, 1.0, cache_dir=tmp_path)
    reasons = {Path(p.path).name: p.reason for p in images.problems}
    assert reasons["UID_H1_50_1_hem.bmp"].startswith("unreadable image")
    assert reasons["notes.txt"] == "unexpected file type"
    assert images.duplicates == [
        (
            "training_data/fold_1/all/UID_2_99_1_all.png",
            "training_data/fold_0/all/UID_1_1_1_all.bmp",
        )
    ]
    n_generated = 6 + 5 + 4 + 4 + 8 + 6 + 3 + 4  # generated cells + prelim; dup and junk out
    assert len(images.labels) == n_generated
    assert {"UID_57", "UID_H49", "UID_H3"} <= set(images.subjects.tolist())
    assert images.pixels.shape[1:] == (32, 32, 3) and images.pixels.dtype == np.uint8
    again = load_images(cnmc_tiny, 32, 1.0, cache_dir=tmp_path)  # from the cache file
    assert np.array_equal(again.pixels, images.pixels)
    assert again.duplicates == images.duplicates and again.manifest_sha256 == images.manifest_sha256


def test_splits_are_subject_disjoint_and_cover_every_subject(cnmc_tiny: Path) -> None:
    images = load_images(cnmc_tiny, 16, 1.0)
    table = subject_table(images.subjects, images.labels)
    folds = cv_splits(table)
    assert len(folds) == 3
    held_out = [s for f in folds for s in f.test]
    assert sorted(held_out) == sorted(table)  # each subject is a test subject exactly once
    for split in [*folds, final_split(table)]:
        roles = [set(split.train), set(split.validation), set(split.test)]
        assert not (roles[0] & roles[1] or roles[0] & roles[2] or roles[1] & roles[2])
        assert set().union(*roles) == set(table)
        for role in ("train", "validation"):
            assert {table[s][0] for s in getattr(split, role)} == {"hem", "all"}


def test_threshold_and_metrics_use_all_as_positive() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.7, 0.6, 0.8, 0.9])
    t = choose_threshold(y, p)
    m = classification_metrics(y, p, t)
    assert m["confusion_matrix"]["rows_true_cols_pred"][1] == [
        m["n_per_class"]["all"] - round(m["sensitivity"] * 3),
        round(m["sensitivity"] * 3),
    ]
    assert m["balanced_accuracy"] == pytest.approx(5 / 6)
    assert m["roc_auc"] == pytest.approx(8 / 9)


def test_paper_model_matches_the_seed_architecture() -> None:
    model = make_paper_model()
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert [c.filters for c in convs] == [16, 32, 16, 32, 16]
    assert all(c.kernel_size == (3, 3) and c.padding == "valid" for c in convs)
    assert model.output_shape == (None, 1)
    assert model.layers[-2].units == 256


def test_train_export_and_serving_signature(cnmc_tiny: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    summary = train_and_export(
        TINY_CONFIG, cnmc_tiny, tmp_path / "cache", tmp_path / "run", store, "tiny-cnn", do_cv=True
    )
    version_dir = Path(summary["exported"])
    assert version_dir == store / "tiny-cnn" / "1"
    card = json.loads((version_dir / "model_card.json").read_text())
    assert card["labels"] == ["hem", "all"] and card["positive_label"] == "all"
    typed = ModelCard.model_validate(card)  # the contract, and today's service, both read it
    assert typed.input.model_input_size == (32, 32) and typed.input_checks.expected_size
    from app.registry import ModelCard as ServiceCard

    assert ServiceCard.model_validate(card).threshold == typed.threshold
    assert 0.0 <= card["threshold"] <= 1.0
    assert TrainConfig.from_dict(card["training"]["config"]) == TINY_CONFIG
    assert card["data"]["duplicates_dropped"] == 1
    assert len(card["metrics"]["cross_validation"]["folds"]) == 3
    assert "NOT this model's own test set" in card["metrics"]["test"]["what"]
    for rel, digest in card["files"].items():
        import hashlib

        assert hashlib.sha256((version_dir / rel).read_bytes()).hexdigest() == digest
    assert "saved_model.pb" in card["files"]
    run_config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert TrainConfig.from_dict(run_config["config"]) == TINY_CONFIG

    serve = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    odd = serve(images=tf.zeros([2, 70, 50, 3], tf.uint8))["probabilities"]  # any HxW
    assert odd.shape == (2, 2)


def test_cv_ensemble_ships_the_fold_models_with_an_out_of_fold_threshold(
    cnmc_tiny: Path, tmp_path: Path
) -> None:
    from training.pipeline import FoldOutcome, cross_validate, ensemble_outcome

    config = dataclasses.replace(TINY_CONFIG, epochs=1, ship="cv_ensemble")
    images = load_images(cnmc_tiny, 32, 0.9)
    outcomes: list[FoldOutcome] = []
    cross_validate(config, images, tmp_path, outcomes)
    assert len(outcomes) == 3
    shipped = ensemble_outcome(outcomes, outcomes[0].split)
    y = np.concatenate([o.y_test for o in outcomes])
    p = np.concatenate([o.p_test for o in outcomes])
    assert len(y) == len(images.labels)  # every image scored once, by the model that held it out
    assert shipped.threshold == choose_threshold(y, p)
    # the shipped model is the mean of the members, image by image
    members = np.stack([predict_p_all(o.result.model, images) for o in outcomes])
    np.testing.assert_allclose(
        predict_p_all(shipped.result.model, images), members.mean(axis=0), atol=1e-6
    )
    assert not np.allclose(members[0], members[1])  # the members really differ

    store = tmp_path / "store"
    summary = train_and_export(config, cnmc_tiny, None, tmp_path / "run", store, "tiny-ens")
    card = json.loads((Path(summary["exported"]) / "model_card.json").read_text())
    assert "out-of-fold" in card["metrics"]["validation"]["what"]
    check = card["metrics"]["validation"]["threshold_transfer"]
    assert [f["fold"] for f in check["folds"]] == ["fold_A", "fold_B", "fold_C"]
    assert check["consistent"] == (check["mean"]["balanced_accuracy"] >= 0.6)
    assert "Threshold transfer check" in (tmp_path / "run" / "report.md").read_text()
    assert card["training"]["config"]["ship"] == "cv_ensemble"
    # The explain signature is written at export, from the same weights.
    assert card["explain"]["method"] == "integrated-gradients"
    loaded = tf.saved_model.load(summary["exported"])
    raw = np.stack(
        [decode_rgb(p) for p in sorted((cnmc_tiny / "training_data").rglob("*_all.bmp"))[:3]]
    )
    explained = loaded.signatures["explain"](images=tf.constant(raw))
    served = loaded.signatures["serving_default"](images=tf.constant(raw))
    np.testing.assert_allclose(explained["probabilities"], served["probabilities"], atol=1e-5)
    with pytest.raises(ValueError, match="fresh CV run"):
        train_and_export(config, cnmc_tiny, None, tmp_path / "r2", store, "x", do_cv=False)


def test_threshold_transfer_flags_members_on_different_scales() -> None:
    from training.pipeline import FoldOutcome, threshold_transfer
    from training.splits import Split

    rng = np.random.default_rng(0)

    def member(name: str, shift: float) -> FoldOutcome:
        y = np.repeat([0, 1], 200)
        p = 1 / (1 + np.exp(-(2.0 * (y - 0.5) * 3 + rng.normal(0, 1, 400) + shift)))
        split = Split(name, (), ())
        return FoldOutcome(split, 0.5, {}, None, None, y, p, y, p)  # type: ignore[arg-type]

    same = threshold_transfer([member("a", 0.0), member("b", 0.0), member("c", 0.0)])
    assert same["consistent"] and same["mean"]["balanced_accuracy"] > 0.9
    # one member's scores sit far higher: thresholds from the others no longer fit it
    apart = threshold_transfer([member("a", 0.0), member("b", 0.0), member("c", 9.0)])
    assert apart["folds"][2]["balanced_accuracy"] == pytest.approx(0.5, abs=0.05)
    assert apart["mean"]["balanced_accuracy"] < same["mean"]["balanced_accuracy"]


def test_same_config_same_weights_with_augmentation(cnmc_tiny: Path) -> None:
    from training.train import make_dataset

    images = load_images(cnmc_tiny, 32, 0.9)
    config = dataclasses.replace(TINY_CONFIG, epochs=2, colour_jitter=2.0)
    first, second = (train_model(config, images, images).model for _ in range(2))
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # ...while the augmentation still differs from epoch to epoch
    ds = make_dataset(images, 64, False, True, None, 0, True, 2.0)
    epoch1, epoch2 = (next(iter(ds))[0].numpy() for _ in range(2))
    assert not np.array_equal(epoch1, epoch2)


@pytest.mark.parametrize("views", [4, 8])
def test_test_time_views_make_predictions_turn_invariant(views: int) -> None:
    net = make_model(TINY_CONFIG.spec, TINY_CONFIG.improved)
    wrapped = with_dihedral_average(net, views)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.integers(0, 256, (3, 32, 32, 3)), tf.float32)
    p = wrapped(x).numpy()
    assert p.shape == (3, 1)
    np.testing.assert_allclose(wrapped(tf.image.rot90(x, 1)).numpy(), p, atol=1e-5)
    mirrored = wrapped(tf.image.flip_left_right(x)).numpy()
    if views == 8:
        np.testing.assert_allclose(mirrored, p, atol=1e-5)
    assert not np.allclose(net(x).numpy(), net(tf.image.rot90(x, 1)).numpy(), atol=1e-5)


def test_signature_matches_keras_model_on_same_images(cnmc_tiny: Path, tmp_path: Path) -> None:
    images = load_images(cnmc_tiny, 32, 0.9)
    config = dataclasses.replace(TINY_CONFIG, epochs=1)
    model = with_dihedral_average(train_model(config, images, images).model)
    out = export_module.export_version(model, tmp_path, 32, 0.9, stub_card)
    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    first = images.subset(np.arange(len(images.labels)) < 6)
    raw = np.stack([decode_rgb(cnmc_tiny / p) for p in first.paths])  # original 48x48 files
    probs = serve(images=tf.constant(raw))["probabilities"].numpy()
    assert probs.shape == (6, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    # Resize happens inside the signature and equals the training cache bit for bit, so the
    # probabilities match the Keras model applied to the cached pixels.
    np.testing.assert_allclose(probs[:, 1], predict_p_all(model, first), atol=1e-5)


def test_versions_increment_and_failed_export_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_model(TINY_CONFIG.spec)
    store = tmp_path / "store"

    card = stub_card
    first = export_module.export_version(model, store, 32, 1.0, card)
    (store / ".tmp-stale").mkdir()  # a crashed writer's leftover is not a version
    (store / "notes").mkdir()
    second = export_module.export_version(model, store, 32, 1.0, card)
    assert (first.name, second.name) == ("1", "2")
    assert next_version(store) == 3

    def broken(folder: Path) -> dict[str, str]:
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "sha256_files", broken)
    with pytest.raises(OSError):
        export_module.export_version(model, store, 32, 1.0, card)
    assert sorted(p.name for p in store.iterdir()) == [".tmp-stale", "1", "2", "notes"]


def test_promote_copies_verified_versions_only(tmp_path: Path) -> None:
    model = make_model(TINY_CONFIG.spec, TINY_CONFIG.improved)
    staged = export_module.export_version(model, tmp_path / "staging", 32, 0.9, stub_card)
    store = tmp_path / "model_store" / "m"
    assert export_module.promote(staged, store).name == "1"
    second = export_module.promote(staged, store)
    assert second.name == "2"
    assert json.loads((second / "model_card.json").read_text())["version"] == 2
    (staged / "saved_model.pb").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="sha256"):
        export_module.promote(staged, store)
    assert sorted(p.name for p in store.iterdir()) == ["1", "2"]


def test_predict_files_uses_the_signature_and_card(tmp_path: Path) -> None:
    from training.predict import classify_files, predict_files

    model = make_model(TINY_CONFIG.spec, TINY_CONFIG.improved)
    version = export_module.export_version(model, tmp_path, 32, 0.9, stub_card)
    files = sorted(REAL.rglob("*.png"))[:3]
    probs = predict_files(version, files)
    serve = tf.saved_model.load(str(version)).signatures["serving_default"]
    direct = serve(images=tf.constant(decode_rgb(files[0])[None]))["probabilities"].numpy()[0]
    np.testing.assert_array_equal(probs[0], direct)
    rows = classify_files(version, files)
    assert [r["label"] for r in rows] == ["all" if p[1] >= 0.5 else "hem" for p in probs]
