"""The object bank: pooled embeddings, the k-th-neighbour distance in appearance + size, its [0, 1]
scale, the file, and the pipeline/command that use it (``pipeline.object_bank``, issue 17)."""

from __future__ import annotations

import numpy as np
import pytest

from ood_perception.pipeline.object_bank import GEOMETRY_FEATURES, ObjectBank, pool_embedding


def test_pool_embedding_averages_the_distinct_cells_hit():
    emb = np.arange(2 * 2 * 4, dtype=np.float32).reshape(2, 2, 4)  # C=2, grid 2x4 over an 8x4 image
    # pixels (u, v): (0, 0) and (1, 1) fall in cell (0, 0); (7, 3) in cell (1, 3): two distinct cells
    got = pool_embedding(emb, np.array([0, 1, 7]), np.array([0, 1, 3]), width=8, height=4)
    assert got == pytest.approx([(emb[0, 0, 0] + emb[0, 1, 3]) / 2, (emb[1, 0, 0] + emb[1, 1, 3]) / 2])
    assert pool_embedding(emb, np.array([], int), np.array([], int), 8, 4).tolist() == [0.0, 0.0]


def _bank(k: int = 2, weight: float = 1.0) -> ObjectBank:
    app = np.array([[1, 0], [0, 1], [1, 1], [2, 0]], np.float32)
    geo = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [3, 3, 3, 3], [3, 3, 3, 3]], np.float32)
    return ObjectBank.fit(app, geo, geometry_weight=weight, k=k, info={"what": "test"})


def test_distance_is_the_kth_neighbour_in_appearance_and_size():
    bank = _bank(k=2, weight=0.0)  # appearance only
    q = np.array([[1.0, 0.0]])
    # normalised bank rows: (1,0) (0,1) (.707,.707) (1,0); squared distances 0, 2, 0.586, 0 -> 2nd nearest 0
    assert bank.distance(q, np.ones((1, 4)))[0] == pytest.approx(0.0, abs=1e-6)
    bank = _bank(k=3, weight=0.0)
    assert bank.distance(q, np.ones((1, 4)))[0] == pytest.approx(2 - 2 * np.sqrt(0.5), abs=1e-5)
    # with size: the bank's geometry has mean 2 and std 1 per feature; a query of size 1 is 0 away from
    # rows 0-1 and 2 * 2 = 4 per feature (squared) from rows 2-3
    bank = _bank(k=2, weight=1.0)
    d = bank.distance(q, np.ones((1, 4)))[0]
    assert d == pytest.approx(2.0)  # row 0: 0; row 1: appearance 2 + size 0; rows 2-3: >= 16
    assert bank.geometry_mean == pytest.approx([2, 2, 2, 2]) and bank.geometry_std == pytest.approx([1, 1, 1, 1])
    big = bank.distance(q, np.full((1, 4), 9.0))[0]
    assert big > 100  # an object of a size no training object had is far whatever it looks like


def test_score_is_the_share_of_reference_objects_nearer():
    bank = _bank(k=1, weight=0.0)
    ref = np.array([[1, 0], [1, 0.2], [1, 0.5], [0.2, 1]], np.float32)
    bank.with_reference(ref, np.ones((4, 4)))
    assert np.all(np.diff(bank.reference) >= 0) and bank.reference.size == 4
    s = bank.score(np.array([[1, 0], [-1, -1]], np.float32), np.ones((2, 4)))
    assert s[0] == pytest.approx(0.25)  # distance 0: only the identical reference object is not farther
    assert s[1] == pytest.approx(1.0)   # farther than every reference object
    assert np.all((s >= 0) & (s <= 1))


def test_bytes_round_trip_and_bad_files_fail_in_one_line():
    bank = _bank().with_reference(np.eye(2, dtype=np.float32), np.ones((2, 4)))
    back = ObjectBank.from_bytes(bank.to_bytes())
    q = np.array([[0.3, 0.9], [1, 0.1]], np.float32)
    g = np.array([[1, 2, 1, 1], [3, 3, 2, 3]], np.float32)
    assert back.score(q, g) == pytest.approx(bank.score(q, g))
    assert back.distance(q, g) == pytest.approx(bank.distance(q, g), abs=2e-3)  # float16 appearance
    assert back.info == {"what": "test"} and back.k == bank.k
    with pytest.raises(ValueError, match="not a readable object bank") as e:
        ObjectBank.from_bytes(b"not an npz", "x/object_bank.npz")
    assert "\n" not in str(e.value) and "x/object_bank.npz" in str(e.value)
    data = bank.to_bytes()
    for bad in (data[: len(data) // 2], data[:40] + bytes(b ^ 0xFF for b in data[40:200]) + data[200:]):
        with pytest.raises(ValueError, match="not a readable object bank"):  # truncated, damaged
            ObjectBank.from_bytes(bad)
    with pytest.raises(ValueError, match="k must be in 1..4"):
        ObjectBank.fit(np.eye(4), np.ones((4, len(GEOMETRY_FEATURES))), k=5)
    with pytest.raises(ValueError, match="no reference"):
        _bank().score(np.eye(2), np.ones((2, 4)))


def _world(root, seed: int, split: str, anomaly_rate: float, sequences: int = 1, frames: int = 3):
    from ood_perception.world.config import WorldConfig
    from ood_perception.world.synth import generate_dataset

    cfg = WorldConfig()
    cfg.anomalies.rate = anomaly_rate
    generate_dataset(root, sequences=sequences, frames=frames, seed=seed, config=cfg, split=split, progress=False)
    return root


def test_object_bank_command_writes_a_verified_bank_the_pipeline_scores_with(tmp_path, capsys):
    import json
    import shutil

    from ood_perception import runtime
    from ood_perception.cli import main
    from ood_perception.models.errors import ModelCorruptError
    from ood_perception.pipeline import FusionConfig, FusionFrame, FusionPipeline
    from ood_perception.replay.dataset import replay_dataset

    model = tmp_path / "model"
    shutil.copytree(runtime.default_model_dir(), model, ignore=shutil.ignore_patterns("object_bank.npz"))
    spec = json.loads((model / "model.json").read_text())
    spec["files"].pop("object_bank", None)
    (model / "model.json").write_text(json.dumps(spec))
    train = _world(tmp_path / "train", 8193, "train", 0.0, frames=4)
    val = _world(tmp_path / "val", 8194, "val", 0.0)
    # a model without a bank: the term is off and the pipeline says so
    p = FusionPipeline(runtime.load(model), FusionConfig())
    assert p.object_bank is None and any("no object bank" in w for w in p.decision_warnings)

    assert main(["object-bank", str(model), "--train", str(train), "--reference", str(val), "--every", "1",
                 "--bank-size", "50", "--k", "2"]) == 0
    out = capsys.readouterr().out
    assert "object bank:" in out and "wrote" in out
    after = json.loads((model / "model.json").read_text())
    assert after["files"]["object_bank"]["path"] == "object_bank.npz"
    assert after["provenance"]["object_bank"]["train_counts"]["candidates"] > 0
    backend = runtime.load(model)
    p = FusionPipeline(backend, FusionConfig(decision="objects"))
    assert p.object_bank is not None and p.object_bank.k == 2 and len(p.object_bank.appearance) <= 50
    assert not any("no object bank" in w for w in p.decision_warnings)
    # the copied calibration was made with the packaged model's bank, not this one: said
    assert any("calibrated with another object bank" in w for w in p.decision_warnings)
    extras = [(ob.drivable, ob.extra) for _, r in replay_dataset(p, val) for ob in r.objects]
    assert extras and all(0.0 <= e <= 1.0 for _, e in extras)
    assert all(e == 0.0 for d, e in extras if d == 0)  # only candidates that can score are looked up
    assert any(e > 0 for d, e in extras if d > 0)
    # a LiDAR-only frame has no appearance: the term and its weight are left out of its region scores
    frame0 = next(iter(replay_dataset(FusionPipeline(backend, FusionConfig(decision="objects")), val)))[0]
    p = FusionPipeline(backend, FusionConfig(decision="objects", scene_shift_fraction=1.0))  # judged, not a shift
    r = p.process(FusionFrame(stamp=1.0, image=None, points=frame0.points, calib=frame0.calib))
    assert r.objects and all(ob.extra == 0.0 for ob in r.objects)
    floor = p.config.objects.location_floor  # the location weighs f + (1 - f) x drivable
    s = p.config.objects.support_points  # and by n / (n + s) for n points
    assert all(ob.score == pytest.approx((floor + (1 - floor) * ob.drivable) * (ob.unknown + ob.ood) / 2
                                         * ob.num_points / (ob.num_points + s)) for ob in r.objects)
    # calibrate's frames cache remembers the bank: a rebuilt bank is not scored with old region scores
    cache = tmp_path / "frames.pkl"
    assert main(["calibrate", str(model), "--data", str(val), "--windows", "1", "--frames-cache", str(cache)]) == 0
    assert main(["object-bank", str(model), "--train", str(train), "--reference", str(val), "--every", "1",
                 "--bank-size", "50", "--k", "1"]) == 0
    assert main(["calibrate", str(model), "--data", str(val), "--windows", "1", "--frames-cache", str(cache)]) != 0
    assert "another object bank" in capsys.readouterr().err
    # the reference must not be the bank's own training drives
    assert main(["object-bank", str(model), "--train", str(train), "--reference", str(train)]) != 0
    assert "in the bank's training split" in capsys.readouterr().err
    # a bank of another width (another model) is refused when the pipeline is built, not on a frame
    import numpy as np_

    from ood_perception.models.spec import sha256_bytes
    small = ObjectBank.fit(np_.eye(3, 100, dtype=np_.float32), np_.ones((3, 4)), k=1).with_reference(
        np_.eye(1, 100, dtype=np_.float32), np_.ones((1, 4)))
    (model / "object_bank.npz").write_bytes(small.to_bytes())
    spec = json.loads((model / "model.json").read_text())
    spec["files"]["object_bank"]["sha256"] = sha256_bytes(small.to_bytes())
    (model / "model.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="100-d embeddings, the model's 'embedding' output has 472"):
        FusionPipeline(runtime.load(model), FusionConfig(decision="objects"))
    data = (model / "object_bank.npz").read_bytes()
    # the bank is a model file: a replaced one is refused like a replaced ONNX file
    (model / "object_bank.npz").write_bytes(data[:-10] + b"0123456789")
    with pytest.raises(ModelCorruptError, match="sha256"):
        FusionPipeline(runtime.load(model), FusionConfig(decision="objects"))
    # bad arguments: one line, nothing written
    assert main(["object-bank", str(model), "--train", str(tmp_path / "none"), "--reference", str(val)]) != 0
    assert "no dataset.yaml" in capsys.readouterr().err


def test_object_bank_set_overrides_the_params_file_and_refuses_unknown_names(tmp_path, capsys):
    """``--set NAME=VALUE`` overrides --params (the Makefile pins the candidates the shipped bank was
    built from); a misspelt or malformed one is refused in one line before any work."""
    from ood_perception.cli import main
    from ood_perception.commands.object_bank import parse_overrides

    assert parse_overrides(["object.min_points=20", "object.low_height=0", "decision=objects"]) == {
        "object.min_points": 20, "object.low_height": 0, "decision": "objects"}
    with pytest.raises(ValueError, match="did you mean object.min_points"):
        parse_overrides(["object.min_point=20"])
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_overrides(["object.min_points"])
    train = _world(tmp_path / "train", 8193, "train", 0.0, frames=2)
    assert main(["object-bank", "default", "--train", str(tmp_path / "nothere"), "--reference", str(train),
                 "--set", "object.min_pints=20"]) != 0  # said before the missing dataset
    err = capsys.readouterr().err.strip()
    assert "object.min_pints" in err and "did you mean object.min_points" in err and "\n" not in err
    # applied: with candidates of >= 100000 points there is none to build a bank from
    assert main(["object-bank", "default", "--train", str(train), "--reference", str(train), "--dry-run",
                 "--set", "object.min_points=100000"]) != 0
    assert "no object candidate found" in capsys.readouterr().err
