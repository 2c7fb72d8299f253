"""Object crops (data.crops, geometry.crops), the crops trainer and the alert-region crop classifier."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from ood_perception.cli import main
from ood_perception.data import Frame, SemanticKittiWriter
from ood_perception.data.crops import OOD_LABEL, CropSet, real_crops, world_crops
from ood_perception.geometry import Calibration
from ood_perception.geometry.crops import square_box
from ood_perception.models.dual_encoder import DualEncoder, HashTokenizer, TinyImageEncoder, TinyTextEncoder
from ood_perception.pipeline.crops import CropClassifier
from ood_perception.pipeline.regions import Region
from ood_perception.trainer.crops import evaluate_neglabel, train_cma
from ood_perception.world.labels import world_dataset_config

CAR, PERSON, POLE, BOX_ANOMALY, TRAILER = 10, 30, 80, 206, 200
RED, BLUE, GREEN, YELLOW = (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 0)


def _frame(seq: str, fid: str, rng: np.random.Generator, with_ood: bool) -> Frame:
    h, w = 64, 128
    img = rng.integers(0, 40, (h, w, 3), dtype=np.uint8)
    sem = np.full((h, w), 40, np.uint16)  # road
    inst = np.zeros((h, w), np.uint16)
    img[10:30, 20:50], sem[10:30, 20:50], inst[10:30, 20:50] = RED, CAR, 5  # 600 px car
    img[5:45, 100:105], sem[5:45, 100:105] = GREEN, POLE  # 200 px pole, no instance id
    sem[60:63, 0:3], inst[60:63, 0:3] = PERSON, 2  # 9 px person: below min_pixels
    if with_ood:
        img[30:50, 60:80], sem[30:50, 60:80], inst[30:50, 60:80] = BLUE, BOX_ANOMALY, 1001  # 400 px "box" (far)
        img[45:60, 85:100], sem[45:60, 85:100], inst[45:60, 85:100] = YELLOW, TRAILER, 1002  # 225 px trailer (near)
    calib = Calibration(np.array([[50.0, 0, 64], [0, 50, 32], [0, 0, 1]]), w, h)
    return Frame(seq, fid, img, np.zeros((1, 4), np.float32), None, sem, calib, pixel_instances=inst)


@pytest.fixture
def world(tmp_path):
    root = tmp_path / "world"
    rng = np.random.default_rng(0)
    writer = SemanticKittiWriter(root, world_dataset_config({"train": ["00"], "val": ["01"], "test": ["02"]}))
    writer.write_config()
    for seq, ood in (("00", False), ("01", False), ("02", True)):
        frames = [_frame(seq, f"{i:06d}", rng, ood) for i in range(2)]
        writer.write_sequence_meta(seq, frames[0].calib)
        for f in frames:
            writer.write_frame(f)
    return root


def test_world_crops_cut_things_stuff_components_and_anomalies(world):
    train = world_crops(world, "train", size=32, min_pixels=50)
    assert sorted(train.names.tolist()) == ["car", "car", "pole", "pole"]  # the 9-px person is dropped
    car = train.subset(train.names == "car")
    assert car.labels.tolist() == [0, 0] and car.kinds.tolist() == ["id", "id"]
    # the car's 30x20 box grown by 15% of 30 per side -> 39 px square centred on it; its centre is red
    assert tuple(car.images[0, 16, 16]) == RED
    assert train.subset(train.names == "pole").labels.tolist() == [6, 6]  # "pole" is class 6 of DEFAULT_CLASSES
    test = world_crops(world, "test", size=32, min_pixels=50)
    ood = test.subset(test.is_ood)
    assert sorted(zip(ood.names.tolist(), ood.kinds.tolist(), strict=True)) == [("box", "far")] * 2 + [("trailer", "near")] * 2
    assert (ood.labels == OOD_LABEL).all()
    assert tuple(ood.subset(ood.names == "box").images[0, 16, 16]) == BLUE
    with pytest.raises(ValueError, match="not in"):
        world_crops(world, "train", class_names=("car", "unicorn"))
    # restrict: drop a class, renumber the rest, keep OOD crops
    only_pole = test.restrict(("pole",))
    assert sorted(only_pole.names.tolist()) == ["box", "box", "pole", "pole", "trailer", "trailer"]
    assert sorted(only_pole.labels.tolist()) == [OOD_LABEL] * 4 + [0, 0] and only_pole.class_names == ("pole",)


def test_square_box_grows_and_fits_the_image():
    # side round(30 * 1.3) = 39 around the centre (35, 20): corner (15.5, 0.5) rounds half to even
    assert square_box(20, 10, 50, 30, 128, 64, 0.15) == (16, 0, 55, 39)
    assert square_box(0, 0, 10, 10, 100, 100, 0.5) == (0, 0, 20, 20)  # shifted inside at the corner
    assert square_box(0, 0, 90, 10, 100, 40, 0.0) == (25, 0, 65, 40)  # side capped at the image height


def test_real_crops_from_a_directory(tmp_path):
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"p{i}.png"), np.full((50, 80, 3), 60 * i, np.uint8))
    r = real_crops(tmp_path, per_image=3, size=16, seed=1)
    assert len(r) == 6 and r.images.shape == (6, 16, 16, 3) and (r.kinds == "real").all() and r.is_ood.all()
    assert r.names.tolist() == ["real:p0"] * 3 + ["real:p1"] * 3
    with pytest.raises(FileNotFoundError):
        real_crops(tmp_path / "none")
    merged = CropSet.concat([r, r])
    assert len(merged) == 12


def test_train_crops_cli_and_region_classifier(world, tmp_path, capsys):
    ck = tmp_path / "crops.pt"
    rc = main(["train", "crops", "--data", str(world), "--method", "mofe", "--backbone", "tiny", "--size", "32",
               "--epochs", "2", "--real-images", "none", "--classes", "car,pole", "--out", str(ck)])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["method"] == "mofe" and {"synthetic", "near", "far"} <= set(res)
    assert 0.0 <= res["synthetic"]["auroc"] <= 1.0
    clf = CropClassifier(ck)
    assert clf.class_names == ["car", "pole"] and clf.size == 32
    frame = _frame("02", "000000", np.random.default_rng(5), True)
    regions = [Region(has_2d=True, x_min=20, y_min=10, width=30, height=20),  # the car
               Region(has_2d=False), Region(has_2d=True, x_min=0, y_min=0, width=3, height=3)]
    out = clf.classify(frame.image, regions)
    assert out[1] is None and out[2] is None and out[0] is not None
    assert out[0].label in clf.class_names and np.isfinite(out[0].score)
    phrases = clf.annotate(frame.image, regions)
    assert len(phrases) == 1 and regions[0].extra["crop"]["label"] == out[0].label
    # classes without training crops are named in one error line
    assert main(["train", "crops", "--data", str(world), "--backbone", "tiny", "--size", "32", "--epochs", "1",
                 "--real-images", "none"]) != 0
    assert "classes without training crops: ['bicycle'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not a crop checkpoint"):
        torch.save({"kind": "other"}, tmp_path / "x.pt")
        CropClassifier(tmp_path / "x.pt")


def test_cma_training_and_neglabel_evaluation_on_tiny_encoders(world):
    torch.manual_seed(0)
    classes = ("car", "pole")
    train = world_crops(world, "train", size=32, min_pixels=50, class_names=classes)
    test = world_crops(world, "test", size=32, min_pixels=50, class_names=classes)
    enc = DualEncoder(TinyImageEncoder(16), TinyTextEncoder(256, 16), HashTokenizer(256, 6), embed_dim=8)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    train_cma(enc, train.images, train.labels, classes, epochs=2, batch_size=4, lr=1e-2)
    assert any(not torch.equal(before[k], v) for k, v in enc.state_dict().items())
    res = evaluate_neglabel(enc, test, ["tree", "dog", "house"])
    assert res["n_id"] == 4 and {"synthetic", "near", "far"} <= set(res)
    assert 0.0 <= res["synthetic"]["auroc"] <= 1.0 and 0.0 <= res["id_accuracy"] <= 1.0


def test_fusion_pipeline_classifies_region_crops_when_a_crop_model_is_set(world, tmp_path, capsys):
    """Issue 16 item 4: with ``crop_model`` set, each reported region's crop is classified and the
    result is in ``Region.extra["crop"]`` and the alert's description; off by default."""
    from test_pipeline import RednessBackend

    from ood_perception.pipeline import FusionConfig, FusionFrame, FusionPipeline

    ck = tmp_path / "crops.pt"
    assert main(["train", "crops", "--data", str(world), "--method", "baseline", "--backbone", "tiny", "--size", "32",
                 "--epochs", "1", "--real-images", "none", "--classes", "car,pole", "--out", str(ck)]) == 0
    capsys.readouterr()
    image = np.full((64, 96, 3), 120, np.uint8)
    image[16:48, 30:70] = (230, 20, 20)  # what RednessBackend flags: one region
    backend = RednessBackend()
    plain = FusionPipeline(backend, FusionConfig(decision="pixels")).process(FusionFrame(1.0, image=image))
    assert plain.regions and "crops:" not in plain.decision.description and "crop" not in plain.regions[0].extra
    with_crops = FusionPipeline(backend, FusionConfig(decision="pixels", crop_model=str(ck)))
    res = with_crops.process(FusionFrame(1.0, image=image))
    assert res.regions and "crops: region 1:" in res.decision.description
    crop = res.regions[0].extra["crop"]
    assert crop["label"] in ("car", "pole") and np.isfinite(crop["score"])
    with pytest.raises(FileNotFoundError, match="crop model not found"):
        FusionPipeline(backend, FusionConfig(crop_model=str(tmp_path / "missing.pt")))
