"""The committed default model (docs/model.md): model.json with provenance and matching sha256s,
ONNX Runtime vs torch parity, and detection of a synthetic-world anomaly it has never seen.

The frames are rendered here with the world API (:mod:`ood_perception.world`) from a seed that is
not the seed of the model's training data, so the street, traffic and anomaly are new to it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ood_perception import runtime
from ood_perception.models.spec import SPEC_NAME, sha256_file

torch.set_num_threads(1)

#: World seed of the test frames (the default model's data uses `synth --seed 0`; its anomalies,
#: animal, trailer and overturned car, are not among the types the model was exposed to).
FRAME_SEED = 20261123
#: Lower bound on the pixel AUROC of the fused score map (anomaly vs ID pixels) on the test frame:
#: measured 0.980 for the committed model (day; animal, trailer and overturned car in view; 0.930 for the previous one).
MIN_ANOMALY_AUROC = 0.85
#: Lower bound on the share of ID pixels of that frame given their true class: measured 0.943.
MIN_ID_ACCURACY = 0.80


@pytest.fixture(scope="module")
def default_dir():
    d = runtime.default_model_dir()
    if not (d / SPEC_NAME).is_file():
        pytest.fail(f"the default model is missing from {d}; rebuild it with `make default-model`")
    return d


@pytest.fixture(scope="module")
def world_frames():
    """One day-time test-split frame with an anomaly episode in view, and one clean frame."""
    from ood_perception.world import SequenceRenderer, WorldConfig, plan_dataset

    plan = plan_dataset(WorldConfig(), sequences=1, frames=12, seed=FRAME_SEED, split="test", weathers=["day"])
    seq = plan.sequences[0]
    assert seq.episodes, "the test plan must contain an anomaly episode"
    renderer = SequenceRenderer(seq, plan.config)
    anomaly = renderer.render(seq.episodes[0].start)
    clean = renderer.render(next(i for i in range(seq.frames) if not seq.has_anomaly(i)))
    return {"anomaly": anomaly, "clean": clean}


def _inputs(frame, spec):
    from ood_perception.data import prepare_inputs

    h, w = spec.image_hw
    image, lidar, _ = prepare_inputs(frame.image, frame.points, frame.calib, (h, w), spec.mean, spec.std)
    return {"image": image[None], "lidar": lidar[None]}


def test_default_model_json_and_size(default_dir):
    spec = runtime.load_spec(default_dir)
    assert spec.kind == "segmentation" and spec.threshold is not None
    for ref in spec.files.values():
        assert sha256_file(default_dir / ref.path) == ref.sha256
    total = sum((default_dir / r.path).stat().st_size for r in spec.files.values())
    assert total < 25 * 2**20  # ~22.5 MiB: ONNX + torch weights (each with the 2048-cell bank of maxlogit_knn), calibration frames, object bank
    prov = spec.provenance
    assert "experiments.frozen_model" in prov["train"]["command"] and "seed" in prov["train"]
    assert prov["checkpoint"]["sha256"] and "metrics" in prov and prov["evaluation"]["test"]["num_frames"] > 0
    assert spec.calibration["tpr"] == 0.95 and spec.calibration["n_pixels"] > 1000


def test_default_model_is_trained_on_the_world_and_evaluated_on_its_test_split(default_dir):
    from ood_perception.world.labels import world_dataset_config

    spec = runtime.load_spec(default_dir)
    prov = spec.provenance
    # the label space is the synthetic world's (not a toy one)
    assert list(spec.class_names) == list(world_dataset_config().class_names)
    assert spec.num_classes == len(spec.class_names) == len(spec.colors)
    # data provenance: rendered by `ood-perception synth` with a recorded seed; calibrated on val drives
    data = prov["data"]
    assert "synth" in data["command"] and isinstance(data["seed"], int)
    assert spec.calibration["split"] == "val"
    # evaluated on another world (other seed) showing none of the anomaly types it was exposed to
    world = prov["evaluation"]["world"]
    assert "synth" in world and f"--seed {data['seed']} " not in world + " "
    assert spec.outlier_types and "world_oe_eval.yaml" in world and "world_oe_expose.yaml" in data["command"]
    # the training used Feature Mixing with the paper's segmentation values, and outlier exposure
    train_cfg = prov["train"]["config"]
    syn = train_cfg["synthesis"]
    assert (syn["method"], syn["n"], syn["gamma1"]) == ("fm", 10, 3.0)
    assert train_cfg["outlier_exposure"]["enabled"]
    # metrics on the held-out test split of the exported scorer, as written by `ood-perception evaluate`
    test = prov["evaluation"]["test"]
    assert prov["evaluation"]["split"] == "test" and test["num_frames"] > 0
    assert test["outlier_types_excluded"] == spec.outlier_types
    ood = test["ood"]["pixel"][spec.score_name]
    assert 0.5 < ood["auroc"] <= 1.0 and 0.0 <= ood["fpr95"] <= 1.0
    assert 0.0 < test["segmentation"]["pixel"]["fused"]["miou"] <= 1.0


def test_default_model_parity_on_world_frames(default_dir, world_frames):
    spec = runtime.load_spec(default_dir)
    ort_b = runtime.load(default_dir, intra_op_threads=1)
    torch_b = runtime.load(default_dir, backend="torch")
    for frame in world_frames.values():
        x = _inputs(frame, spec)
        a, b = ort_b.infer(x), torch_b.infer(x)
        for name in a:
            if "score" in name or name == "embedding":  # float maps
                np.testing.assert_allclose(a[name], b[name], atol=1e-4, rtol=0, err_msg=name)
            else:  # class maps identical except at exact ties (none expected on real frames)
                assert np.mean(a[name] != b[name]) <= 1e-4, name
        # the model is trained: its fused prediction is not constant on a real frame
        assert len(np.unique(a["class_map"])) >= 2


def test_output_subsets_equal_the_full_graph(default_dir, world_frames):
    """infer(outputs=...) runs a pruned graph under ONNX Runtime (the fused maps alone skip both
    unimodal heads): same values as the full graph; torch computes all and returns the subset."""
    from ood_perception.models.errors import InferenceInputError

    spec = runtime.load_spec(default_dir)
    ort_b = runtime.load(default_dir, intra_op_threads=1)
    torch_b = runtime.load(default_dir, backend="torch")
    x = _inputs(world_frames["anomaly"], spec)
    full = ort_b.infer(x)
    for subset in (["score_map", "class_map"], ["camera_score_map", "camera_class_map"], ["lidar_score_map"]):
        got = ort_b.infer(x, outputs=subset)
        assert list(got) == subset
        for name in subset:
            np.testing.assert_array_equal(got[name], full[name], err_msg=name)
        assert list(torch_b.infer(x, outputs=subset)) == subset
    assert len(ort_b._subsets) == 3  # one pruned session per subset, reused
    ort_b.infer(x, outputs=["class_map", "score_map"])
    assert len(ort_b._subsets) == 3
    with pytest.raises(InferenceInputError, match="no output"):
        ort_b.infer(x, outputs=["logits"])


def test_default_model_detects_world_anomaly(default_dir, world_frames):
    from sklearn.metrics import roc_auc_score

    from ood_perception.data import resize_labels
    from ood_perception.world.labels import world_dataset_config

    spec = json.loads((default_dir / SPEC_NAME).read_text())
    for ref in spec["files"].values():  # the committed files are the ones model.json describes
        assert sha256_file(default_dir / ref["path"]) == ref["sha256"], ref["path"]
    backend = runtime.load(default_dir, intra_op_threads=1)  # verifies the sha256 itself, too
    dc = world_dataset_config()
    frame = world_frames["anomaly"]
    labels = resize_labels(frame.pixel_labels, backend.spec.image_hw)
    ood = dc.ood_mask(labels)
    id_ = (dc.to_train_ids(labels) != 255) & ~ood
    assert ood.sum() >= 20 and id_.sum() > 1000, "the rendered frame must show the anomaly at the input size"
    out = backend.infer(_inputs(frame, backend.spec))
    score = out["score_map"][0]
    assert score.shape == labels.shape and np.isfinite(score).all()
    auroc = roc_auc_score(np.r_[np.ones(ood.sum()), np.zeros(id_.sum())], np.r_[score[ood], score[id_]])
    assert auroc >= MIN_ANOMALY_AUROC, f"anomaly pixel AUROC {auroc:.3f} < {MIN_ANOMALY_AUROC}"
    # the ID class map is useful on ID pixels: most of them are classified correctly
    train_ids = dc.to_train_ids(labels)
    assert np.mean(out["class_map"][0][id_] == train_ids[id_]) >= MIN_ID_ACCURACY
