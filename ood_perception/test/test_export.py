"""Export: one ONNX graph with the scorer inside, model.json, atomic writes, calibration, CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from runtime_helpers import H, W, tiny_checkpoint, tiny_dataset, tiny_inputs

from ood_perception import runtime
from ood_perception.models.errors import ModelCorruptError
from ood_perception.models.spec import SEGMENTATION_OUTPUTS, load_spec, sha256_file
from ood_perception.trainer.export import (
    calibrate_on_batches,
    export_model,
    export_segmentation,
    export_segmentation_from_data,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("exp")
    ckpt = tiny_checkpoint(d / "ckpt.pt")
    spec = export_segmentation(ckpt, d / "model")
    return ckpt, d / "model", spec


def test_graph_is_checker_clean_with_declared_io(exported):
    ckpt, model_dir, spec = exported
    proto = onnx.load(str(model_dir / "model.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    ins = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert ins == {"image": ["batch", 3, H, W], "lidar": ["batch", 6, H, W]}
    outs = {o.name: o.type.tensor_type.elem_type for o in proto.graph.output}
    assert list(outs) == list(SEGMENTATION_OUTPUTS)
    for name, elem in outs.items():
        assert elem == (onnx.TensorProto.INT64 if "class" in name else onnx.TensorProto.FLOAT), name


def test_model_json_fields_and_provenance(exported):
    ckpt, model_dir, spec = exported
    data = json.loads((model_dir / "model.json").read_text())
    assert data["format_version"] == 1 and data["kind"] == "segmentation"
    assert data["files"]["onnx"]["sha256"] == sha256_file(model_dir / "model.onnx")
    assert data["files"]["torch"]["sha256"] == sha256_file(model_dir / "model.pt")
    assert data["class_names"] == ["road", "car", "building", "vegetation"] and len(data["colors"]) == 4
    assert data["input_size"] == [H, W] and data["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert data["score"]["name"] == "maxlogit" and data["threshold"] is None
    prov = data["provenance"]
    assert prov["checkpoint"]["sha256"] == sha256_file(ckpt)
    assert prov["train"]["seed"] == 7 and "train segmentation" in prov["train"]["command"]
    assert prov["metrics"] == {"miou": 0.5} and "torch" in prov["versions"]
    assert not [p for p in model_dir.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_dynamic_batch_and_scores_equal_independent_maxlogit(exported):
    ckpt, model_dir, _ = exported
    from ood_perception.models import load_checkpoint

    x = tiny_inputs(batch=3)
    out = runtime.load(model_dir, intra_op_threads=1).infer(x)
    model, _ = load_checkpoint(ckpt)
    with torch.no_grad():
        ref = model(torch.from_numpy(x["image"]), torch.from_numpy(x["lidar"]))
    # independent: MaxLogit is minus the max logit; classes are the argmax
    for prefix, key in (("", "logits"), ("camera_", "camera_logits"), ("lidar_", "lidar_logits")):
        logits = ref[key].numpy()
        np.testing.assert_allclose(out[f"{prefix}score_map"], -logits.max(1), atol=1e-4)
        top2 = np.sort(logits, axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 1e-4
        np.testing.assert_array_equal(out[f"{prefix}class_map"][clear], logits.argmax(1)[clear])
    assert out["class_map"].dtype == np.int64 and out["score_map"].dtype == np.float32
    assert out["score_map"].shape == (3, H, W)


def test_calibration_threshold_is_95pct_quantile_of_id_pixels():
    torch.manual_seed(0)

    class Fake(torch.nn.Module):  # score map = image channel 0
        def forward(self, image, lidar):
            return image[:, 0].argmax(0), image[:, 0]

    rng = np.random.default_rng(0)
    batches, id_scores = [], []
    for _ in range(3):
        img = torch.from_numpy(rng.normal(size=(2, 3, 8, 8)).astype(np.float32))
        mask = torch.from_numpy(rng.random((2, 8, 8)) < 0.6)
        batches.append((img, torch.zeros(2, 6, 8, 8), mask))
        id_scores.append(img[:, 0].numpy()[mask.numpy()])
    s = np.sort(np.concatenate(id_scores))
    expect = s[int(np.ceil(0.95 * s.size)) - 1]  # smallest t with >= 95% of ID scores <= t
    res = calibrate_on_batches(Fake(), batches, tpr=0.95)
    assert res["threshold"] == pytest.approx(float(expect)) and res["n_pixels"] == s.size
    assert np.mean(s <= res["threshold"]) >= 0.95 and np.mean(s < res["threshold"]) < 0.95


def test_export_from_dataset_calibrates_on_val_id_pixels(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "c.pt")
    data = tiny_dataset(tmp_path / "data")
    spec = export_segmentation_from_data(ckpt, tmp_path / "m", calib_data=data, n_stored_inputs=2)
    assert spec.calibration["split"] == "val" and spec.calibration["n_frames"] == 3
    # independent: run the exported graph on the val frames, keep labelled non-OOD pixels
    from ood_perception.data import SemanticKittiReader, prepare_inputs, resize_labels

    backend = runtime.load(tmp_path / "m", intra_op_threads=1)
    reader = SemanticKittiReader(data, "val")
    scores = []
    for f in reader:
        image, lidar, _ = prepare_inputs(f.image, f.points, f.calib, (H, W), spec.mean, spec.std)
        lab = resize_labels(f.pixel_labels, (H, W))
        sm = backend.infer({"image": image[None], "lidar": lidar[None]})["score_map"][0]
        scores.append(sm[np.isin(lab, [40, 10, 50, 70])])
    s = np.sort(np.concatenate(scores))
    assert spec.calibration["n_pixels"] == s.size
    assert spec.threshold == pytest.approx(float(s[int(np.ceil(0.95 * s.size)) - 1]), abs=1e-4)
    assert "calib_inputs" in spec.files and (tmp_path / "m" / "calib_inputs.npz").is_file()


def test_fitted_feature_scorer_exports_and_matches_torch(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "c.pt")
    data = tiny_dataset(tmp_path / "data", frames_per_split=2)
    spec = export_segmentation_from_data(ckpt, tmp_path / "m", calib_data=data, score="mahalanobis")
    assert spec.score_name == "mahalanobis" and spec.score["unimodal"] == "maxlogit"
    x = tiny_inputs(batch=1)
    a = runtime.load(tmp_path / "m", intra_op_threads=1).infer(x)
    b = runtime.load(tmp_path / "m", backend="torch").infer(x)
    np.testing.assert_allclose(a["score_map"], b["score_map"], rtol=1e-4, atol=1e-3)
    assert np.ptp(a["score_map"]) > 0


def test_failed_export_leaves_existing_model_untouched(exported, tmp_path):
    _, model_dir, _ = exported
    target = tmp_path / "m"
    import shutil

    shutil.copytree(model_dir, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    class Bad(torch.nn.Module):
        def forward(self, image, lidar):
            return (image.sum(1),)

    with pytest.raises(ValueError, match="outputs"):
        export_model(Bad(), {"image": torch.zeros(1, 3, 4, 4), "lidar": torch.zeros(1, 6, 4, 4)},
                     ["a", "b"], target, kind="segmentation", meta={"class_names": ["a", "b"], "score": {}})

    with pytest.raises(ValueError, match="dropped"):  # lidar unused -> not in the graph
        export_model(Bad(), {"image": torch.zeros(1, 3, 4, 4), "lidar": torch.zeros(1, 6, 4, 4)},
                     ["a"], target, kind="segmentation", meta={"class_names": ["a", "b"], "score": {}})

    class NoClassMap(torch.nn.Module):  # exports fine but is not a valid segmentation model
        def forward(self, image, lidar):
            return (image.sum(1) + lidar.sum(1),)

    with pytest.raises(runtime.ModelMismatchError, match="lacks outputs"):
        export_model(NoClassMap(), {"image": torch.zeros(1, 3, 4, 4), "lidar": torch.zeros(1, 6, 4, 4)},
                     ["score_map"], target, kind="segmentation", meta={"class_names": ["a", "b"], "score": {}})
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _cli(argv):
    """Parse ``ood-perception export ...`` with the command's own parser and run its handler."""
    import argparse

    from ood_perception.commands import export as cmd

    parser = argparse.ArgumentParser(prog="ood-perception")
    cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_export_and_refuses_overwrite(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "c.pt")
    assert _cli(["export", str(ckpt), "--out", str(tmp_path / "m")]) == 0
    assert "kind=segmentation" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--force"):
        _cli(["export", str(ckpt), "--out", str(tmp_path / "m")])
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        _cli(["export", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "n")])
    assert _cli(["export", str(ckpt), "--out", str(tmp_path / "m"), "--force", "--score", "energy",
                 "--score-param", "temperature=2.0"]) == 0
    spec = runtime.load_spec(tmp_path / "m")
    assert spec.score_name == "energy" and spec.score["params"] == {"temperature": 2.0}


def test_recognition_export_round_trip(tmp_path):
    from ood_perception.models.recognition import build_recognition_model
    from ood_perception.trainer.export import export_recognition

    torch.manual_seed(0)
    cfg = {"num_classes": 3, "embed_dim": 16, "width": 4}
    model = build_recognition_model(cfg).eval()
    torch.save({"task": "recognition", "model_config": cfg, "state_dict": model.state_dict(),
                "class_names": ["walk", "run", "wave"], "clip_len": 4, "size": 16,
                "flow_params": {"winsize": 9}}, tmp_path / "r.pt")
    rng = np.random.default_rng(0)
    v = rng.normal(size=(10, 3, 4, 16, 16)).astype(np.float32)
    f = rng.normal(size=(10, 2, 3, 16, 16)).astype(np.float32)  # flow has T-1 steps
    spec = export_recognition(tmp_path / "r.pt", tmp_path / "m", calib_clips=(v, f))
    assert spec.kind == "recognition" and spec.input_names == ["video", "flow"]
    assert spec.input("flow").shape == ("batch", 2, 3, 16, 16) and spec.input_size == [16, 16]
    assert spec.extra["clip_len"] == 4 and spec.extra["flow_params"] == {"winsize": 9}
    assert spec.extra["flow_scale"] == 4.0 and spec.mean == spec.std == [0.5, 0.5, 0.5]
    assert spec.score["name"] == "msp" and spec.score["unimodal"] == "msp"  # logit-only joint scorer reused
    out = runtime.load(tmp_path / "m", intra_op_threads=1).infer({"video": v[:3], "flow": f[:3]})
    with torch.no_grad():
        ref = model(torch.from_numpy(v[:3]), torch.from_numpy(f[:3]))
    p = torch.softmax(ref["logits"], 1).numpy()
    np.testing.assert_allclose(out["score"], 1.0 - p.max(1), atol=1e-5)  # MSP score: 1 - max probability
    np.testing.assert_allclose(out["confidence"], p.max(1), atol=1e-5)
    np.testing.assert_array_equal(out["class"], p.argmax(1))
    for m in ("video", "flow"):  # expert heads: their own argmax and MSP
        pm = torch.softmax(ref[f"{m}_logits"], 1).numpy()
        np.testing.assert_array_equal(out[f"{m}_class"], pm.argmax(1))
        np.testing.assert_allclose(out[f"{m}_score"], 1.0 - pm.max(1), atol=1e-5)
    torch_out = runtime.load(tmp_path / "m", backend="torch").infer({"video": v[:3], "flow": f[:3]})
    for name in ("confidence", "score", "video_score", "flow_score"):
        np.testing.assert_allclose(torch_out[name], out[name], atol=1e-4)
    all_scores = np.sort(1.0 - torch.softmax(model(torch.from_numpy(v), torch.from_numpy(f))["logits"], 1)
                         .max(1).values.detach().numpy())
    assert spec.threshold == pytest.approx(float(all_scores[int(np.ceil(0.95 * 10)) - 1]), abs=1e-5)
    with pytest.raises(runtime.InferenceInputError, match="flow"):  # T frames of flow instead of T-1
        runtime.load(tmp_path / "m", intra_op_threads=1).infer({"video": v[:1], "flow": np.zeros((1, 2, 4, 16, 16), np.float32)})
    with pytest.raises(ValueError, match="calibration clips"):
        export_recognition(tmp_path / "r.pt", tmp_path / "m2", calib_clips=(v, v[:, :2]))
    with pytest.raises(ValueError, match="logit-only"):
        export_recognition(tmp_path / "r.pt", tmp_path / "m2", unimodal_score="vim")
    # a feature scorer on the joint head: experts fall back to maxlogit
    with pytest.raises(ValueError, match="needs fitting"):
        export_recognition(tmp_path / "r.pt", tmp_path / "m3", score="react")
    spec2 = export_recognition(tmp_path / "r.pt", tmp_path / "m3", score="react", fit_clips=(v, f, np.arange(10) % 3))
    assert spec2.score["unimodal"] == "maxlogit" and spec2.threshold is None
    out2 = runtime.load(tmp_path / "m3", backend="torch").infer({"video": v[:3], "flow": f[:3]})
    np.testing.assert_allclose(out2["video_score"], -ref["video_logits"].max(1).values.numpy(), atol=1e-5)


def test_outlier_types_of_the_checkpoint_reach_model_json(exported, tmp_path):
    """model.json lists the anomaly types the training data labelled (issue 17: evaluations leave them
    out); a checkpoint from before the record gives no key (unknown), the loader reads both."""
    ckpt_path, model_dir, _ = exported
    assert "outlier_types" not in json.loads((model_dir / "model.json").read_text())
    assert load_spec(model_dir).outlier_types is None
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["outlier_types"] = ["stroller", "trailer"]
    torch.save(ckpt, tmp_path / "seen.pt")
    export_segmentation(tmp_path / "seen.pt", tmp_path / "model")
    assert json.loads((tmp_path / "model" / "model.json").read_text())["outlier_types"] == ["stroller", "trailer"]
    assert load_spec(tmp_path / "model").outlier_types == ["stroller", "trailer"]
    data = json.loads((tmp_path / "model" / "model.json").read_text())
    data["outlier_types"] = "trailer"
    (tmp_path / "model" / "model.json").write_text(json.dumps(data))
    with pytest.raises(ModelCorruptError, match="outlier_types"):
        load_spec(tmp_path / "model")
