"""Outlier synthesis cost: Feature Mixing vs NP-Mix on the same feature batch, and FM's share of a
training step (paper, arXiv 2505.16985: FM 0.013-0.058 s per batch, 10x-370x faster than NP-Mix).

Both methods get the same pre-fusion features ``Fc``, ``Fl`` (and, for NP-Mix, the same labels
at the feature resolution and full per-class queues, i.e. its steady state); calls alternate so
load changes on a shared machine hit both alike. Times are synthesis only (the fused-head pass on
the outliers is the same for both). The training-step share times one full optimiser step of the
results table's model with FM against FM's synthesis call in that step.

usage: python bench/synthesis.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line, markdown_table, time_call, time_interleaved, write_results  # noqa: E402


def _batch(b: int, d: int, h: int, w: int, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    fc = torch.randn(b, d, h, w, generator=g)
    fl = torch.randn(b, d, h, w, generator=g)
    labels = torch.randint(0, k, (b, h, w), generator=g)
    labels[:, : h // 8] = 255  # some unlabelled pixels, as in real data
    return fc, fl, labels


def main(argv: list[str] | None = None) -> int:
    from ood_perception.synthesis import NPMix, feature_mixing, npmix_outlier_map

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeat = 5 if args.quick else 15
    k = 10
    # (name, batch, channels per modality, feature h, w): the results table's set-up (64x128 input,
    # stride 4) and the paper-scale one (ResNet-34 set-up at 256x512 input, 64 channels each).
    shapes = [("table (B=4, 32+32 ch, 16x32)", 4, 32, 16, 32), ("paper-scale (B=8, 64+64 ch, 64x128)", 8, 64, 64, 128)]
    rows, results = [], []
    for name, b, d, h, w in shapes:
        fc, fl, labels = _batch(b, d, h, w, k)
        fused = torch.cat([fc, fl], 1)
        gen = torch.Generator().manual_seed(1)
        fns = {"fm": lambda fc=fc, fl=fl, gen=gen: feature_mixing(fc, fl, n=10, generator=gen)}
        for anchors in (256, 4096):
            q = NPMix(k, 2 * d, queue_size=256, k=3, seed=0)
            emb = fused.permute(0, 2, 3, 1).reshape(-1, 2 * d)
            q.update(emb, labels.reshape(-1))  # full queues: NP-Mix's steady state
            for _ in range(3):
                q.update(emb[torch.randperm(emb.shape[0], generator=gen)], labels.reshape(-1))

            def npm(q=q, anchors=anchors, fused=fused, labels=labels, gen=gen):
                return npmix_outlier_map(fused, labels, q, num_anchors=anchors, generator=gen)

            fns[f"npmix_{anchors}"] = npm
        t = time_interleaved(fns, repeat=repeat, warmup=1)
        fm = t["fm"]["median"]
        entry = {"shape": name, "batch": b, "channels_per_modality": d, "feature_hw": [h, w],
                 "fm_s": fm, "npmix_256_s": t["npmix_256"]["median"], "npmix_4096_s": t["npmix_4096"]["median"],
                 "ratio_npmix256_over_fm": t["npmix_256"]["median"] / fm,
                 "ratio_npmix4096_over_fm": t["npmix_4096"]["median"] / fm, "timings": t}
        results.append(entry)
        rows.append([name, fm, entry["npmix_256_s"], entry["ratio_npmix256_over_fm"], entry["npmix_4096_s"],
                     entry["ratio_npmix4096_over_fm"]])

    # FM's share of one training step of the table's model (seg_table.TABLE_MODEL at TABLE_SIZE, batch 4)
    from ood_perception.experiments.seg_table import TABLE_MODEL, TABLE_SIZE
    from ood_perception.models import build_model
    from ood_perception.trainer.seg_train import SegTrainModule
    from ood_perception.trainer.segmentation import load_config

    cfg = load_config(None, {"model": TABLE_MODEL, "synthesis": {"method": "fm"}})
    model = build_model(dict(cfg["model"], num_classes=k))
    mod = SegTrainModule(model, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    hh, ww = TABLE_SIZE
    g = torch.Generator().manual_seed(2)
    image, lidar = torch.randn(4, 3, hh, ww, generator=g), torch.rand(4, 6, hh, ww, generator=g)
    target = torch.randint(0, k, (4, hh, ww), generator=g)
    with torch.no_grad():
        fc_t, fl_t = model.encode(image, lidar)

    def step():
        loss, _ = mod(image, lidar, target, g)
        opt.zero_grad()
        loss.backward()
        opt.step()

    st = time_call(step, repeat=max(3, repeat // 3), warmup=1)
    fm_t = time_call(lambda: feature_mixing(fc_t, fl_t, n=10, generator=g), repeat=repeat, warmup=1)
    share = {"train_step_s": st["median"], "fm_in_step_s": fm_t["median"], "fm_share": fm_t["median"] / st["median"],
             "model": TABLE_MODEL, "input_size": list(TABLE_SIZE), "batch": 4}
    data = {"threads": args.threads, "feature_mixing_n": 10, "npmix": {"queue_size": 256, "k": 3, "alpha": 10.0},
            "classes": k, "synthesis": results, "train_step": share,
            "paper": "FM 0.013-0.058 s/batch; 10x (detection) to 370x (segmentation) faster than NP-Mix"}
    md = ["# Outlier synthesis cost: Feature Mixing vs NP-Mix", "", machine_line(), "",
          f"torch threads: {args.threads}; medians of {repeat} interleaved calls; same features for both.", "",
          markdown_table(["feature batch", "FM s", "NP-Mix (256 anchors) s", "ratio", "NP-Mix (4096 anchors) s", "ratio"], rows),
          "", f"FM share of a training step (table model, {hh}x{ww}, batch 4): "
          f"{100 * share['fm_share']:.3f}% ({share['fm_in_step_s'] * 1e3:.3f} ms of {share['train_step_s'] * 1e3:.0f} ms).",
          "", "Paper: " + data["paper"] + "."]
    j, m = write_results("synthesis", data, "\n".join(md))
    print("\n".join(md))
    print(f"wrote {j} and {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
