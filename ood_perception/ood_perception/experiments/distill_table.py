"""Distillation ablation on the synthetic action clips -> ``docs/results/distillation.md``.

Per seed: train the recognition network (experts + joint head, :mod:`ood_perception.trainer.recognition`),
cache the frozen embeddings, then retrain only the joint head under each row's recipe and score
the ID test split against the near-OOD and far-OOD splits with every scorer.

Rows (all retrain a re-initialised joint head with the same schedule, so only the loss differs):

* ``Vanilla``: CE only; ``Ensemble``: mean of the Vanilla joint head's and both experts' logits
  (a linear head on the joint embedding, ``W = (W_joint + [W_video, 0] + [0, W_flow]) / 3``, so
  every scorer applies; the paper averages probabilities, which differs for MSP);
* ``Uniform KD`` (w = 1/2), ``Best KD`` (lowest-CE expert), ``Ours`` (w = softmax(-CE)) with
  alpha = beta = 0.5, and ``Ours (0.2/0.8)`` (the code's alpha/beta);
* ``TCKD only`` (alpha 0.5, beta 0), ``NCKD only`` (alpha 0, beta 0.5);
* ``FM`` (CE + Feature Mixing entropy on the cached embeddings) and ``FM + Ours``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from ood_perception.atomic import atomic_write_text
from ood_perception.data.clips import stack_video_streams
from ood_perception.experiments.stats import MIN_PAIRED_SEEDS, paired
from ood_perception.metrics import ood_metrics
from ood_perception.trainer.recognition import (
    RecognitionTrainConfig,
    embed_arrays,
    load_splits,
    train_recognition,
)
from ood_perception.world.clips import ensure_clip_dataset

#: Scorers of the table (those of the distillation paper, plus HIMPLoS).
SCORERS: tuple[str, ...] = ("msp", "maxlogit", "energy", "gen", "react", "ash", "vim", "himplos")
_TITLES = {"msp": "MSP", "maxlogit": "MaxLogit", "energy": "Energy", "gen": "GEN", "react": "ReAct",
           "ash": "ASH", "vim": "VIM", "himplos": "HIMPLoS"}
#: Real street / film footage Debian's opencv-doc ships: the real far-OOD split (``real_ood``) when present.
REAL_VIDEOS: tuple[str, ...] = tuple(f"/usr/share/doc/opencv-doc/examples/data/{n}" for n in ("vtest.avi", "Megamind.avi", "tree.avi"))


def row_configs(base) -> dict[str, Any]:
    """Row name -> :class:`~ood_perception.trainer.distill.DistillConfig` (None for Ensemble)."""
    return {
        "Vanilla": replace(base, alpha=0.0, beta=0.0),
        "Ensemble": None,
        "Uniform KD": replace(base, teacher="uniform"),
        "Best KD": replace(base, teacher="best"),
        "Ours": replace(base, teacher="weighted"),
        "Ours (0.2/0.8)": replace(base, alpha=0.2, beta=0.8),
        "TCKD only": replace(base, alpha=base.alpha, beta=0.0),
        "NCKD only": replace(base, alpha=0.0, beta=base.beta),
        "FM": replace(base, alpha=0.0, beta=0.0, feature_mixing=True),
        "FM + Ours": replace(base, feature_mixing=True),
    }


def score_head(weight, bias, feats: dict[str, np.ndarray], train_labels: np.ndarray,
               scorers=SCORERS) -> dict[str, dict[str, np.ndarray]]:
    """Scores of each scorer on each split for a linear head ``(weight [K, F], bias [K])``."""
    import torch  # lazy: torch is heavy to import and only this path needs it

    from ood_perception.scoring import (  # lazy: torch is heavy to import and only this path needs it
        get_scorer,
    )

    w = torch.as_tensor(weight, dtype=torch.float32)
    b = torch.as_tensor(bias, dtype=torch.float32)
    f = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in feats.items()}
    logits = {k: v @ w.T + b for k, v in f.items()}
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in scorers:
        sc = get_scorer(name)
        if sc.requires_fit:
            sc.fit(logits=logits["train"], features=f["train"], labels=torch.as_tensor(train_labels),
                   classifier_weight=w, classifier_bias=b)
        with torch.no_grad():
            out[name] = {k: sc(logits[k], f[k]).numpy() for k in f if k != "train"}
    out["_pred"] = {k: logits[k].argmax(1).numpy() for k in f if k != "train"}
    return out


def _metrics(scores: dict[str, dict[str, np.ndarray]], test_labels: np.ndarray, ood_splits) -> dict[str, Any]:

    res: dict[str, Any] = {"id_acc": float(np.mean(scores["_pred"]["test"] == test_labels))}
    for name, per in scores.items():
        if name.startswith("_"):
            continue
        for split in ood_splits:
            s = np.concatenate([per["test"], per[split]])
            y = np.r_[np.zeros(len(per["test"])), np.ones(len(per[split]))]
            m = ood_metrics(s, y)
            res[f"{split}/{name}"] = {"fpr95": m["fpr95"], "auroc": m["auroc"]}
    return res


def run_seed(splits: dict, class_names: list[str], seed: int, train_cfg, base_cfg, scorers=SCORERS,
             log=print) -> dict[str, Any]:
    """Everything of one seed: expert training, then every row; returns per-row metrics."""
    import torch  # lazy: torch is heavy to import and only this path needs it

    from ood_perception.models.recognition import (  # lazy: torch is heavy to import and only this path needs it
        RecognitionConfig,
        build_recognition_model,
    )
    from ood_perception.trainer.distill import (  # lazy: torch is heavy to import and only this path needs it
        distill_recognition_head,
    )

    t0 = time.time()
    torch.manual_seed(seed)
    model = build_recognition_model(RecognitionConfig(len(class_names)))
    train_recognition(model, *splits["train"], replace(train_cfg, seed=seed), progress=False)
    t_train = time.time() - t0
    emb = {k: embed_arrays(model, v[0], v[1]) for k, v in splits.items()}
    feats = {k: np.concatenate(z, 1) for k, z in emb.items()}
    y_train, y_test = splits["train"][2], splits["test"][2]
    ood_splits = [k for k in splits if k not in ("train", "test")]
    with torch.no_grad():
        exp_acc = {m: float((getattr(model, f"{m}_head")(torch.from_numpy(emb["test"][i])).argmax(1).numpy() == y_test).mean())
                   for i, m in enumerate(("video", "flow"))}
    log(f"seed {seed}: experts trained in {t_train:.0f}s, test acc video {exp_acc['video']:.3f} flow {exp_acc['flow']:.3f}")
    init = {k: v.clone() for k, v in model.joint_head.state_dict().items()}
    rows: dict[str, Any] = {}
    vanilla_wb = None
    for row, cfg in row_configs(base_cfg).items():
        if cfg is None:  # Ensemble of the Vanilla joint head and the two experts
            wj, bj = vanilla_wb
            d = emb["train"][0].shape[1]
            wv, bv = model.video_head.weight.detach(), model.video_head.bias.detach()
            wf, bf = model.flow_head.weight.detach(), model.flow_head.bias.detach()
            w = (wj + torch.cat([wv, torch.zeros_like(wf)], 1) + torch.cat([torch.zeros_like(wv), wf], 1)) / 3
            b = (bj + bv + bf) / 3
            assert w.shape[1] == 2 * d
            hist = []
        else:
            model.joint_head.load_state_dict(init)
            hist = distill_recognition_head(model, emb["train"][0], emb["train"][1], y_train, replace(cfg, seed=seed))
            w, b = model.joint_head.weight.detach().clone(), model.joint_head.bias.detach().clone()
            if row == "Vanilla":
                vanilla_wb = (w, b)
        rows[row] = _metrics(score_head(w, b, feats, y_train, scorers), y_test, ood_splits)
        if hist:
            rows[row]["teacher_w_video"] = float(np.mean([h.get("w_video", np.nan) for h in hist]))
    return {"seed": seed, "expert_acc": exp_acc, "train_seconds": t_train, "rows": rows,
            "seconds": time.time() - t0}


def _fmt(vals: list[float], pct: bool = True) -> str:
    a = np.asarray(vals, float) * (100 if pct else 1)
    return f"{a.mean():.1f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.1f}"


def rewrite_report(json_path: str | os.PathLike, report: str | os.PathLike | None = None) -> Path:
    """Re-render a report from the raw ``.json`` of a run (findings recomputed, numbers unchanged)."""
    raw = json.loads(Path(json_path).read_text())
    meta = dict(raw["meta"])
    meta["findings"] = findings(raw["results"])
    return write_report(raw["results"], meta, report or Path(json_path).with_suffix(".md"), raw.get("segmentation"))


def write_report(results: list[dict], meta: dict, path: str | os.PathLike, segmentation: dict | None = None) -> Path:
    """Markdown report (mean ± std over seeds) written atomically; raw numbers go to a .json beside it.

    ``segmentation``: results of :func:`ood_perception.experiments.distill_seg_table.run_seg_ablation` (with
    ``meta.command``), rendered as the segmentation section; when None, the one already in the .json
    beside ``path`` is kept (so re-running the recognition ablation does not drop it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if segmentation is None and path.with_suffix(".json").is_file():
        try:
            segmentation = json.loads(path.with_suffix(".json").read_text()).get("segmentation")
        except (OSError, ValueError):
            segmentation = None
    rows = list(results[0]["rows"])
    ood_splits = sorted({k.split("/")[0] for k in results[0]["rows"]["Vanilla"] if "/" in k})
    scorers = [s for s in SCORERS if f"{ood_splits[0]}/{s}" in results[0]["rows"]["Vanilla"]]

    def col(row, key, metric):
        return [r["rows"][row][key][metric] for r in results]

    lines = [
        "# Dark-knowledge distillation of multimodal OOD scores: ablation",
        "",
        f"Made by: `{meta['command']}`",
        "",
        f"Data: synthetic action clips (`ood_perception.world.clips`, data seed {meta['data_seed']}): "
        f"{meta['counts']}; {meta['frames']} frames of {meta['size']}x{meta['size']}, Farneback flow. "
        f"Model: video + flow 3D-CNN experts (128-d embeddings) and a linear joint head, trained "
        f"{meta['train']['epochs']} epochs per seed. Seeds {meta['seeds']} (model init, training order, "
        "distillation); cells are mean ± std (sample std) over seeds, in %. FPR95 = FPR on ID at 95% "
        "TPR on OOD (OOD positive); lower is better. AUROC higher is better.",
        "",
        f"Distillation (every row but Ensemble): the joint head is re-initialised and retrained for "
        f"{meta['distill']['epochs']} epochs with Adam lr {meta['distill']['lr']} on the frozen experts' "
        "cached embeddings (the paper retrains 10 epochs at lr 1e-4 on much larger datasets; our set "
        + (f"has {meta['counts']['train']} training clips, so we train longer from scratch: our choice). "
           if meta['distill']['epochs'] > 10 else f"has {meta['counts']['train']} training clips). ")
        +
        f"alpha = beta = {meta['distill']['alpha']} (the paper's advice for unknown OOD type); "
        "`Ours (0.2/0.8)` uses the values of the paper's code. Temperature 1. FM rows add Feature Mixing "
        f"(N = {meta['distill']['fm_channels']} of 128 channels, entropy weight {meta['distill']['fm_weight']}) "
        "on the cached embeddings while retraining the head.",
        "",
        *([f"Real far-OOD (`real_ood`, {meta['counts'].get('real_ood', 0)} clips): "
           + ", ".join(f"`{Path(v).name}`" for v in meta["real_videos"])
           + " (Debian opencv-doc), cut into clips of consecutive frames at stride 8 as the recognition node cuts "
           "a stream (`data.clips.video_stream_clips`); no choice was made on them.", ""] if meta.get("real_videos") else []),
        "Expert test accuracy (mean over seeds): video "
        + _fmt([r["expert_acc"]["video"] for r in results]) + ", flow "
        + _fmt([r["expert_acc"]["flow"] for r in results])
        + ". Mean teacher weight of the video expert (Ours): "
        + _fmt([r["rows"]["Ours"]["teacher_w_video"] for r in results], pct=False) + ".",
        "",
        ("Segmentation: see the section *Segmentation benchmark* at the end (the default model's checkpoint)."
         if segmentation else
         "Segmentation: the per-pixel distillation (`ood-perception train distill --task segmentation`) is "
         "implemented and unit-tested on a tiny FusionSegNet, but the segmentation benchmark rows were "
         "**not run** here."),
        "",
    ]
    for split in ood_splits:
        for metric, title in (("fpr95", "FPR95 (%) ↓"), ("auroc", "AUROC (%) ↑")):
            lines += [f"## {split.replace('_', '-')}: {title}", "",
                      "| row | ID acc | " + " | ".join(_TITLES.get(s, s) for s in scorers) + " |",
                      "|---|---|" + "---|" * len(scorers)]
            for row in rows:
                cells = [_fmt([r["rows"][row]["id_acc"] for r in results])]
                cells += [_fmt(col(row, f"{split}/{s}", metric)) for s in scorers]
                lines.append(f"| {row} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += paired_section(results, ood_splits, scorers)
    lines += verdicts_section(results, ood_splits, scorers)
    lines += ["## What held and what did not", ""] + meta["findings"] + [""]
    reused = meta.get("reused_seeds") or []
    lines += [f"Wall time: {meta['seconds']:.0f} s on {meta['machine']}"
              + (f" (seeds {reused} were reused from an earlier run and are not in it; per-seed compute: "
                 + (", ".join(f"seed {r['seed']} {r['seconds']:.0f} s" for r in results if "seconds" in r) or "not recorded") + ")"
                 if reused else "") + ".", ""]
    raw: dict[str, Any] = {"meta": meta, "results": results}
    if segmentation:
        from ood_perception.experiments.distill_seg_table import render_section

        lines += render_section(segmentation)
        raw["segmentation"] = segmentation
    text = "\n".join(lines)
    for target, content in ((path, text), (path.with_suffix(".json"), json.dumps(raw, indent=1))):
        atomic_write_text(target, content)
    return path


def findings(results: list[dict]) -> list[str]:
    """Plain statements comparing rows, computed from the numbers (not written by hand)."""
    out = []
    ood_splits = sorted({k.split("/")[0] for k in results[0]["rows"]["Vanilla"] if "/" in k})
    scorers = [s for s in SCORERS if f"{ood_splits[0]}/{s}" in results[0]["rows"]["Vanilla"]]

    def mean(row, split, s, m="fpr95"):
        return float(np.mean([r["rows"][row][f"{split}/{s}"][m] for r in results]))

    def compare(a, b, label):
        for split in ood_splits:
            better = [s for s in scorers if mean(a, split, s) < mean(b, split, s)]
            rel = np.mean([(mean(b, split, s) - mean(a, split, s)) / max(mean(b, split, s), 1e-9) for s in scorers])
            auc = np.mean([mean(a, split, s, "auroc") - mean(b, split, s, "auroc") for s in scorers]) * 100
            out.append(f"- {label}, {split}: lower mean FPR95 for {len(better)}/{len(scorers)} scorers "
                       f"({', '.join(better) or 'none'}); mean relative FPR95 change {-rel * 100:+.1f}%, "
                       f"mean AUROC change {auc:+.1f} points.")

    compare("Ours", "Vanilla", "Ours vs Vanilla")
    compare("Ours", "Uniform KD", "Ours vs Uniform KD")
    compare("Ours", "Best KD", "Ours vs Best KD")
    compare("Ours", "Ensemble", "Ours vs Ensemble")
    compare("FM + Ours", "FM", "FM + distillation vs FM alone")
    for split in ood_splits:
        t = np.mean([mean("TCKD only", split, s) for s in scorers])
        n = np.mean([mean("NCKD only", split, s) for s in scorers])
        out.append(f"- TCKD only vs NCKD only, {split}: mean FPR95 {t * 100:.1f}% vs {n * 100:.1f}% "
                   f"(paper: near-OOD gains mostly from TCKD, far-OOD from NCKD; "
                   f"{'TCKD' if t < n else 'NCKD'} is better here).")
    acc = {row: float(np.mean([r["rows"][row]["id_acc"] for r in results])) for row in results[0]["rows"]}
    out.append(f"- ID accuracy: Vanilla {acc['Vanilla'] * 100:.1f}%, Ours {acc['Ours'] * 100:.1f}%, "
               f"Ensemble {acc['Ensemble'] * 100:.1f}%, FM + Ours {acc['FM + Ours'] * 100:.1f}%.")
    wv = float(np.mean([r["rows"]["Ours"].get("teacher_w_video", np.nan) for r in results]))
    ev = float(np.mean([r["expert_acc"]["video"] for r in results]))
    ef = float(np.mean([r["expert_acc"]["flow"] for r in results]))
    out.append(f"- Teacher weights: the video expert's mean weight was {wv:.3f}. The weights come from the experts' "
               "CE on the *training* batch (as in the paper); when both experts fit the training set that CE is "
               "near zero for both, softmax(-CE) is near uniform and Ours can only match Uniform KD. "
               f"Expert test accuracy: video {ev * 100:.1f}%, flow {ef * 100:.1f}% "
               f"({'flow weaker, as intended' if ef < ev - 0.02 else 'flow was NOT clearly weaker than video here'}).")
    out.append(f"- Differences whose paired 95% interval includes 0 are not evidence either way ({len(results)} seeds; "
               "see the paired section above).")
    return out


def _per_seed(results: list[dict], row: str, split: str, metric: str, scorers: list[str]) -> list[float]:
    """Per seed, ``row``'s ``metric`` on ``split`` averaged over ``scorers`` (the paired sections' unit)."""
    return [float(np.mean([r["rows"][row][f"{split}/{sc}"][metric] for sc in scorers])) for r in results]


def paired_section(results: list[dict], ood_splits: list[str], scorers: list[str]) -> list[str]:
    """Markdown: every row against Vanilla, paired over seeds (:func:`ood_perception.experiments.stats.paired`),
    on the mean over scorers of AUROC and FPR95, and per scorer the count of better / worse verdicts."""
    rows = [r for r in results[0]["rows"] if r != "Vanilla"]
    seeds = [r["seed"] for r in results]
    if len(results) < MIN_PAIRED_SEEDS:
        return ["## Paired differences vs Vanilla", "",
                f"Not computed: paired intervals and verdicts need at least {MIN_PAIRED_SEEDS} seeds (this run: "
                f"{len(results)}).", ""]
    lines = ["## Paired differences vs Vanilla", "",
             f"Row − Vanilla per seed (seeds {seeds}: same experts, same clips), percentage points, mean [95% CI] "
             "with t(0.975, n−1) over seeds. *mean over scorers*: the difference of the row's and Vanilla's mean "
             f"over the {len(scorers)} scorers. *per scorer*: how many scorers' own paired intervals are above / "
             "below 0 (better / worse). Verdict: better/worse when the interval excludes 0, otherwise 'no clear "
             "diff.'.", ""]
    for split in ood_splits:
        lines += [f"### {split.replace('_', '-')}", "",
                  "| row | AUROC, mean over scorers ↑ | FPR95, mean over scorers ↓ | AUROC per scorer: better / worse | "
                  "ID accuracy |", "|---|---|---|---|---|"]
        for row in rows:
            auc = paired(_per_seed(results, row, split, "auroc", scorers), _per_seed(results, "Vanilla", split, "auroc", scorers))
            fpr = paired(_per_seed(results, row, split, "fpr95", scorers), _per_seed(results, "Vanilla", split, "fpr95", scorers))
            verdicts = [paired(_per_seed(results, row, split, "auroc", [sc]),
                               _per_seed(results, "Vanilla", split, "auroc", [sc])).verdict(True) for sc in scorers]
            acc = paired([r["rows"][row]["id_acc"] for r in results], [r["rows"]["Vanilla"]["id_acc"] for r in results])
            lines.append(f"| {row} | {auc.cell(True, 100)} | {fpr.cell(False, 100)} | {verdicts.count('better')} / "
                         f"{verdicts.count('worse')} | {acc.cell(True, 100)} |")
        lines.append("")
    return lines


#: The claims the table tests: (claim, row, reference row).
CLAIMS: tuple[tuple[str, str, str], ...] = (
    ("dark-knowledge distillation from the experts (Ours, alpha = beta = 0.5) detects OOD better than no distillation",
     "Ours", "Vanilla"),
    ("the same with the paper code's alpha 0.2 / beta 0.8", "Ours (0.2/0.8)", "Vanilla"),
    ("per-sample teacher weights (Ours) beat equal weights (Uniform KD)", "Ours", "Uniform KD"),
    ("the weighted teachers beat the single best expert as teacher (Best KD)", "Ours", "Best KD"),
    ("distilling into one head beats ensembling the experts' logits", "Ours", "Ensemble"),
    ("Feature Mixing outlier synthesis detects OOD better than none", "FM", "Vanilla"),
    ("distillation adds to Feature Mixing", "FM + Ours", "FM"),
)


def verdicts_section(results: list[dict], ood_splits: list[str], scorers: list[str]) -> list[str]:
    """Markdown: one verdict per claim of :data:`CLAIMS` and OOD split, from the paired difference of
    the mean AUROC over scorers (the primary metric; FPR95 beside it): *reproduced* when its 95%
    interval is above 0, *not reproduced* when below 0 (the opposite holds), *unresolved* otherwise."""
    if len(results) < MIN_PAIRED_SEEDS:
        return []
    ev = np.mean([r["expert_acc"]["video"] for r in results]) * 100
    ef = np.mean([r["expert_acc"]["flow"] for r in results]) * 100
    lines = ["## Verdicts", "",
             f"Per claim and OOD split, from the paired differences over {len(results)} seeds (mean over the "
             f"{len(scorers)} scorers; AUROC decides, FPR95 shown beside): **reproduced** when the AUROC interval is "
             "above 0, **not reproduced** when it is below 0, **unresolved** when it includes 0. The claims are "
             f"about competent experts: here video {ev:.1f}%, flow {ef:.1f}% ID accuracy (mean over seeds)"
             + ("." if min(ev, ef) >= 90 else "; **below the 90% this table asks for, so these verdicts carry little "
                "weight**."), "",
             "| claim | " + " | ".join(s.replace("_", "-") for s in ood_splits) + " |", "|---|" + "---|" * len(ood_splits)]
    for claim, row, ref in CLAIMS:
        if row not in results[0]["rows"] or ref not in results[0]["rows"]:
            continue
        cells = []
        for split in ood_splits:
            auc = paired(_per_seed(results, row, split, "auroc", scorers), _per_seed(results, ref, split, "auroc", scorers))
            fpr = paired(_per_seed(results, row, split, "fpr95", scorers), _per_seed(results, ref, split, "fpr95", scorers))
            cells.append(f"**{auc.claim_verdict()}**: AUROC {auc.interval(100)}, FPR95 {fpr.interval(100)}")
        lines.append(f"| {claim} ({row} vs {ref}) | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def run_ablation(data: str | os.PathLike, report: str | os.PathLike, seeds=(0, 1, 2), train_epochs: int = 12,
                 distill_epochs: int = 30, distill_lr: float = 1e-3, alpha: float = 0.5, beta: float = 0.5,
                 clips_per_class: int = 60, data_seed: int = 0, command: str = "", log=None,
                 real_videos: tuple[str, ...] | None = None, results_dir: str | os.PathLike | None = None) -> Path:
    """Generate clips if needed, run every seed, write the report; returns its path.

    ``real_videos``: video files cut into clips as the node cuts a stream (stride 8; default: those of
    :data:`REAL_VIDEOS` that exist) and scored as the ``real_ood`` split; ``()`` = none.
    ``results_dir``: each finished seed is kept there (``seed<S>-<settings hash>.json``), so an
    interrupted run resumes with the seeds it has not finished (default: ``runs/distill_table/``).
    """

    from ood_perception.trainer.distill import (  # lazy: torch is heavy to import and only this path needs it
        DistillConfig,
    )

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    t0 = time.time()
    root = ensure_clip_dataset(data, clips_per_class, data_seed)
    splits, class_names = load_splits(root, progress=False)
    videos = tuple(v for v in REAL_VIDEOS if Path(v).is_file()) if real_videos is None else tuple(real_videos)
    if videos:
        splits["real_ood"] = stack_video_streams(videos, clip_len=int(splits["train"][0].shape[2]),
                                                 size=int(splits["train"][0].shape[-1]), stride=8)
    train_cfg = RecognitionTrainConfig(epochs=train_epochs)
    base = DistillConfig(alpha=alpha, beta=beta, epochs=distill_epochs, lr=distill_lr, reinit=True)
    counts = {k: int(len(v[2])) for k, v in splits.items()}
    settings = json.dumps({"data": str(Path(root).resolve()), "counts": counts, "videos": list(videos),
                           "train": asdict(train_cfg), "distill": asdict(base)}, sort_keys=True)
    key = hashlib.sha256(settings.encode()).hexdigest()[:12]
    cache = Path(results_dir) if results_dir is not None else Path("runs") / "distill_table"
    cache.mkdir(parents=True, exist_ok=True)
    per_class = counts["train"] / max(len(class_names), 1)
    if per_class != clips_per_class:
        log(f"warning: {root} holds {per_class:g} training clips per class, not --clips-per-class {clips_per_class} "
            "(an existing clip dataset is used as it is; give an empty --data to generate)")
    results, reused = [], []
    for s in seeds:
        path = cache / f"seed{s}-{key}.json"
        if path.is_file():
            log(f"seed {s}: finished earlier ({path}), reused")
            results.append(json.loads(path.read_text()))
            reused.append(s)
            continue
        res = run_seed(splits, class_names, s, train_cfg, base, log=log)
        atomic_write_text(path, json.dumps(res))
        results.append(res)
    meta = {
        "command": command or f"run_ablation({data!r}, {report!r})",
        "data": str(root), "data_seed": data_seed,
        "counts": counts, "real_videos": list(videos), "settings_key": key, "reused_seeds": reused,
        "frames": int(splits["train"][0].shape[2]), "size": int(splits["train"][0].shape[-1]),
        "seeds": list(seeds), "train": asdict(train_cfg), "distill": asdict(base),
        "findings": findings(results), "seconds": time.time() - t0,
        "machine": f"{platform.machine()} CPU, torch threads {__import__('torch').get_num_threads()}",
    }
    return write_report(results, meta, report)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where it says something (not None / False, not already in the text)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False) or "default" in text:
            return text
        return super()._get_help_string(action)


def main(argv: list[str] | None = None) -> int:
    """``python -m ood_perception.experiments.distill_table --data DIR [--report docs/results/distillation.md]``:
    the recognition ablation (clips generated in DIR when it is empty) or, with ``--task
    segmentation CHECKPOINT``, the segmentation section (:mod:`.distill_seg_table`)."""

    import torch  # lazy: torch is heavy to import and only this path needs it

    p = argparse.ArgumentParser(prog="python -m ood_perception.experiments.distill_table", description=main.__doc__,
                                formatter_class=_HelpFormatter)
    p.add_argument("checkpoint", nargs="?", help="trained segmentation checkpoint (--task segmentation)")
    p.add_argument("--task", choices=("recognition", "segmentation"), default="recognition",
                   help="the recognition ablation, or the segmentation section of the same report")
    p.add_argument("--data", required=True, help="clip dataset (generated when empty) or segmentation dataset")
    p.add_argument("--report", default="runs/distill_table/distillation.md",
                   help="markdown report (+ .json beside it); docs/results/distillation.md updates the committed table")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help=f"training seeds (paired intervals and verdicts need >= {MIN_PAIRED_SEEDS})")
    p.add_argument("--train-epochs", type=int, default=12, help="expert training epochs per seed")
    p.add_argument("--epochs", type=int, default=30, help="head retraining epochs per row")
    p.add_argument("--lr", type=float, default=1e-3, help="head retraining Adam learning rate")
    p.add_argument("--alpha", type=float, default=0.5, help="TCKD weight (paper advice 0.5; its code 0.2)")
    p.add_argument("--beta", type=float, default=0.5, help="NCKD weight (paper advice 0.5; its code 0.8)")
    p.add_argument("--clips-per-class", type=int, default=60, help="train clips per class when generating")
    p.add_argument("--cache-dir", help="preprocessed-frame cache (segmentation)")
    p.add_argument("--real-video", action="append", default=None, metavar="FILE",
                   help="real video cut into clips for the real_ood split (repeatable; default: opencv-doc's "
                        "vtest.avi, Megamind.avi, tree.avi where installed)")
    p.add_argument("--no-real-video", action="store_true", help="no real_ood split")
    p.add_argument("--results-dir", help="finished seeds kept here; a re-run resumes (default runs/distill_table/)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, a.threads))
    if a.task == "segmentation":
        from ood_perception.experiments.distill_seg_table import main as seg_main

        if not a.checkpoint:
            p.error("--task segmentation needs CHECKPOINT")
        sargv = [a.checkpoint, "--data", a.data, "--report", a.report, "--seeds", *map(str, a.seeds),
                 "--threads", str(a.threads), "--all-rows"] + (["--cache-dir", a.cache_dir] if a.cache_dir else [])
        return seg_main(sargv)
    cmd = "python -m ood_perception.experiments.distill_table " + " ".join(sys.argv[1:] if argv is None else argv)
    path = run_ablation(a.data, a.report, tuple(a.seeds), a.train_epochs, distill_epochs=a.epochs, distill_lr=a.lr,
                        alpha=a.alpha, beta=a.beta, clips_per_class=a.clips_per_class, command=cmd,
                        real_videos=() if a.no_real_video else (tuple(a.real_video) if a.real_video else None),
                        results_dir=a.results_dir)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
