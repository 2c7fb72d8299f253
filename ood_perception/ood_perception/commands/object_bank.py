"""``ood-perception object-bank MODEL_DIR --train DATASET --reference VAL_DATASET [...]``: the object bank of a model.

Runs the fusion pipeline (object decisions, the params file's settings) over the training split of
``--train`` and keeps, from every ``--every``-th frame (the model still runs on every frame), each
LiDAR object candidate that is not an anomaly (by the ground-truth label holding most of its
points): its pooled appearance embedding (the model's ``embedding`` output) and its size. Then it
runs over the anomaly-free frames of the ``--reference`` drives (their val split when they have
one; validation drives, not the ones you report on) and records the candidates' distances to the
bank, which turn a distance into a share in [0, 1]. Writes ``MODEL_DIR/object_bank.npz`` and lists
it with its sha256 in ``MODEL_DIR/model.json``: the model directory is changed in place (atomic
rewrites; copy it first to keep the original, and 'default' changes the packaged model). The object
decisions use the bank when ``object.w_extra`` > 0; run calibrate again afterwards (the region scores
change). docs/model.md, "Object bank".

Needs a model with the ``embedding`` output (the default model's network has it) and labelled data
(SemanticKITTI layout with ``dataset.yaml``, e.g. ``ood-perception synth`` output).
"""

from __future__ import annotations

import argparse
import difflib
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ood_perception.atomic import atomic_write_bytes
from ood_perception.commands._help import PlainHelpFormatter


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``object-bank`` subcommand."""
    p = subparsers.add_parser(
        "object-bank",
        help="build the object bank (training objects' appearance and size) the object decisions compare with",
        description=__doc__,
        formatter_class=PlainHelpFormatter,
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="exported model directory ('default' = the packaged model)")
    p.add_argument("--train", required=True, metavar="DATASET", help="dataset root whose training split the model was trained on")
    p.add_argument("--split", default="train", help="split of --train to take the objects from (default %(default)s)")
    p.add_argument("--every", type=int, default=2, help="every N-th frame of --train (default %(default)s)")
    p.add_argument("--reference", nargs="+", required=True, metavar="VAL_DATASET",
                   help="validation dataset roots (their val split when they have one); the candidates of their "
                        "anomaly-free frames set the [0, 1] scale")
    p.add_argument("--params", default=None, help="fusion node params file (e.g. ood_perception/config/vehicle.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="overrides",
                   help="a fusion node parameter over --params (repeatable), e.g. object.min_points=20: the "
                        "candidates the bank is built from need not be the ones the node judges")
    p.add_argument("--k", type=int, default=5, help="the neighbour whose distance scores (default %(default)s)")
    p.add_argument("--geometry-weight", type=float, default=1.0,
                   help="weight of the z-scored size against the unit-norm appearance (default %(default)s)")
    p.add_argument("--bank-size", type=int, default=4000,
                   help="keep at most this many training objects, a seeded random subset (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset (default %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="print the figures, write nothing")
    p.set_defaults(func=handler)


def _collect(pipe: Any, root: Path, sequences: list[str] | None, every: int, anomaly_free_only: bool,
             drivable_only: bool) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Pooled embeddings and geometry of the non-anomaly candidates of ``root``'s frames; ValueError
    saying why when there is none."""
    from ood_perception.data import DatasetConfig
    from ood_perception.replay.dataset import replay_dataset

    ds = DatasetConfig.from_yaml(root / "dataset.yaml")
    ood_ids = np.asarray(sorted(ds.ood_ids), np.int64)
    app, geo = [], []
    counts = {"frames": 0, "candidates": 0, "anomaly_candidates": 0}
    for i, (frame, res) in enumerate(replay_dataset(pipe, root, sequences)):
        if i % every or not res.objects or frame.point_labels is None or res.in_view is None:
            continue
        sem = (np.asarray(frame.point_labels)[res.in_view] & 0xFFFF).astype(np.int64)
        if anomaly_free_only and frame.pixel_labels is not None and ds.ood_mask(frame.pixel_labels).any():
            continue
        counts["frames"] += 1
        for ob in res.objects:
            if ob.appearance is None or (drivable_only and not ob.drivable > 0):
                continue
            keys, cnt = np.unique(sem[ob.index], return_counts=True)
            if np.isin(keys[np.argmax(cnt)], ood_ids):
                counts["anomaly_candidates"] += 1
                continue
            app.append(ob.appearance)
            geo.append([*ob.size, ob.top])
            counts["candidates"] += 1
    if not app:
        why = ("no anomaly-free frame with an object candidate on the drivable area" if anomaly_free_only and counts["frames"] == 0
               else "no object candidate found (are its frames labelled, with LiDAR?)")
        raise ValueError(f"{root}: {why}")
    return np.stack(app), np.asarray(geo, np.float32), counts


def handler(args: argparse.Namespace) -> int:
    """Build the bank; prints its figures."""
    # lazy: the CLI imports every command module at start; the model runtime is heavy
    from ood_perception import runtime
    from ood_perception.data import DatasetConfig
    from ood_perception.models.spec import SPEC_NAME, FileRef, load_spec, sha256_bytes, write_spec
    from ood_perception.pipeline import FusionConfig, FusionPipeline
    from ood_perception.pipeline.object_bank import BANK_FILE, BANK_ROLE, ObjectBank
    from ood_perception.replay.params import node_parameters, settings_from_params

    overrides = parse_overrides(args.overrides)  # a misspelt --set is said before any data is read
    if args.every < 1:
        raise ValueError(f"--every must be >= 1, got {args.every}")
    if args.k < 1:
        raise ValueError(f"--k must be >= 1, got {args.k}")
    if args.bank_size < args.k:
        raise ValueError(f"--bank-size must be >= --k ({args.k}), got {args.bank_size}")
    if not (np.isfinite(args.geometry_weight) and args.geometry_weight >= 0):
        raise ValueError(f"--geometry-weight must be a finite number >= 0, got {args.geometry_weight}")
    model_dir = runtime.default_model_dir() if args.model_dir == "default" else Path(args.model_dir)
    spec = load_spec(model_dir)
    if spec.kind != "segmentation":
        raise ValueError(f"{model_dir}: object-bank is for segmentation models, this one is {spec.kind}")
    train, refs = Path(args.train), [Path(d) for d in args.reference]
    for r in [train, *refs]:
        if not (r / "dataset.yaml").is_file():
            raise FileNotFoundError(f"{r}: no dataset.yaml (give `ood-perception synth` output)")
    sequences = DatasetConfig.from_yaml(train / "dataset.yaml").splits.get(args.split)
    if not sequences:
        raise ValueError(f"{train}: no sequences in split {args.split!r}")
    values = node_parameters(args.params) if args.params else {}
    values.update(overrides)
    fusion: dict[str, Any] = dict(settings_from_params(values).fusion) if values else {}
    base = FusionConfig(**fusion)
    # the candidates and their evidence as the node finds them; the bank's own term is not needed
    config = FusionConfig(**{**fusion, "decision": "objects", "objects": _without_extra(base.objects)})
    backend = runtime.load(model_dir, intra_op_threads=1)
    t0 = time.perf_counter()
    pipe = FusionPipeline(backend, config, object_embeddings=True)
    app, geo, train_counts = _collect(pipe, train, list(sequences), args.every, anomaly_free_only=False, drivable_only=False)
    rng = np.random.default_rng(args.seed)
    keep = np.sort(rng.choice(len(app), size=min(args.bank_size, len(app)), replace=False))
    info = {"train": str(train), "split": args.split, "every": args.every, "train_counts": train_counts,
            "bank_size": int(keep.size), "seed": args.seed, "reference": [str(r) for r in refs], "params": args.params,
            "set": list(args.overrides),
            "model_sha256": spec.files["onnx"].sha256,
            "command": "ood-perception object-bank " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["object-bank"] else None}
    bank = ObjectBank.fit(app[keep], geo[keep], args.geometry_weight, args.k, info)
    ref_app, ref_geo, ref_counts = [], [], {"frames": 0, "candidates": 0}
    for r in refs:
        splits = DatasetConfig.from_yaml(r / "dataset.yaml").splits
        ref_seqs = list(splits.get("val") or []) or None
        if r.resolve() == train.resolve():
            taken = set(ref_seqs if ref_seqs is not None else [s for v in splits.values() for s in v]) & set(sequences)
            if taken:
                raise ValueError(f"--reference {r}: sequences {sorted(taken)} are in the bank's training split; give "
                                 "validation drives")
        try:
            a, g, c = _collect(pipe, r, ref_seqs, 1, anomaly_free_only=True, drivable_only=True)
        except ValueError as exc:
            print(f"object-bank: warning: skipped --reference {exc}", file=sys.stderr)
            continue
        ref_app.append(a)
        ref_geo.append(g)
        ref_counts = {k: ref_counts[k] + c[k] for k in ref_counts}
    if not ref_app:
        raise ValueError("no reference candidate in any --reference dataset (anomaly-free frames with objects on "
                         "the drivable area are needed)")
    if ref_counts["candidates"] < 200:
        print(f"object-bank: warning: only {ref_counts['candidates']} reference candidates: the [0, 1] scale moves in "
              f"steps of {1 / ref_counts['candidates']:.1%}; use more anomaly-free validation drives (>= 200 "
              "candidates)", file=sys.stderr)
    bank.with_reference(np.concatenate(ref_app), np.concatenate(ref_geo))
    bank.info["reference_counts"] = ref_counts
    q = np.quantile(bank.reference, [0.5, 0.95])
    print(f"object bank: {keep.size} of {train_counts['candidates']} training objects ({train_counts['frames']} frames, "
          f"{train_counts['anomaly_candidates']} anomaly candidates left out), reference {ref_counts['candidates']} objects "
          f"on the drivable area of {ref_counts['frames']} anomaly-free frames (distance median {q[0]:.3f}, p95 {q[1]:.3f}), "
          f"k {args.k}, geometry weight {args.geometry_weight:g}, {time.perf_counter() - t0:.0f} s")
    if args.dry_run:
        return 0
    data = bank.to_bytes()
    atomic_write_bytes(model_dir / BANK_FILE, data)
    spec.files[BANK_ROLE] = FileRef(BANK_FILE, sha256_bytes(data))
    # the bank file carries no time stamp (the same inputs give the same bytes); model.json does
    spec.provenance["object_bank"] = {**bank.info, "made_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_spec(model_dir / SPEC_NAME, spec)
    print(f"wrote {model_dir / BANK_FILE} ({len(data) / 1e3:,.0f} kB) and listed it in {model_dir / SPEC_NAME}")
    return 0


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["object.min_points=20", ...]`` -> ``{"object.min_points": 20}`` (values read as YAML scalars).

    Raises:
        ValueError: not NAME=VALUE, or NAME is not a fusion node parameter (one line, with the names near it).
    """
    # lazy like the handler's imports: the pipeline package pulls OpenCV in, and the CLI imports every command at start
    from ood_perception.pipeline.frame_handler import FUSION_PARAMETERS

    names = [n for n, _, _ in FUSION_PARAMETERS]
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"--set {item!r}: give NAME=VALUE, e.g. object.min_points=20")
        if name not in names:
            near = difflib.get_close_matches(name, names, n=1)
            raise ValueError(f"--set {name}: not a fusion node parameter" + (f" (did you mean {near[0]}?)" if near else ""))
        out[name] = yaml.safe_load(text)
    return out


def _without_extra(objects: Any) -> Any:
    """``objects`` with ``w_extra`` 0 (the bank being built cannot score yet); the other weights as
    given, or ``w_unknown`` 1 when they were all 0."""
    others = (objects.w_unknown, objects.w_conflict, objects.w_ood)
    return replace(objects, w_extra=0.0, w_unknown=objects.w_unknown if sum(others) > 0 else 1.0)
