"""ONNX export parity of every scorer: torch.onnx.export (TorchScript exporter, opset 17) with
dynamic batch/height/width, then ONNX Runtime output == torch output within 1e-5."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

from ood_perception.scoring import available_scorers, get_scorer

ort = pytest.importorskip("onnxruntime")

torch.set_num_threads(1)

C, D = 6, 16


class ScoreHead(torch.nn.Module):
    """Tiny module taking (logits, features) maps and returning the score map, as `export` wraps it."""

    def __init__(self, scorer: torch.nn.Module) -> None:
        super().__init__()
        self.scorer = scorer

    def forward(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.scorer(logits, features)


def _problem() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, C, size=600)
    centres = rng.uniform(0, 2, size=(C, D))
    feats = np.maximum(centres[labels] + 0.3 * rng.normal(size=(600, D)), 0).astype(np.float32)
    w = rng.normal(size=(C, D)).astype(np.float32)
    b = rng.normal(size=C).astype(np.float32)
    return {"features": feats, "labels": labels, "weight": w, "bias": b, "neg": rng.normal(size=(11, D))}


def _maps(
    p: dict[str, np.ndarray], seed: int, shape: tuple[int, int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    bsz, h, w = shape
    f = np.maximum(np.random.default_rng(seed).uniform(-0.5, 2.5, size=(bsz, D, h, w)), 0).astype(np.float32)
    lg = np.einsum("bdhw,cd->bchw", f, p["weight"]) + p["bias"][None, :, None, None]
    return torch.from_numpy(lg.astype(np.float32)), torch.from_numpy(f)


def export_and_run(
    scorer: torch.nn.Module,
    example: tuple[torch.Tensor, torch.Tensor],
    run_on: tuple[torch.Tensor, torch.Tensor],
) -> np.ndarray:
    buf = io.BytesIO()
    spatial = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer / deprecation chatter of the TorchScript exporter
        torch.onnx.export(
            ScoreHead(scorer).eval(),
            example,
            buf,
            dynamo=False,
            opset_version=17,
            input_names=["logits", "features"],
            output_names=["score"],
            dynamic_axes={
                "logits": spatial,
                "features": spatial,
                "score": {0: "batch", 1: "height", 2: "width"},
            },
        )
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    feeds = {k: v.numpy() for k, v in zip(("logits", "features"), run_on, strict=True) if k in names}
    assert feeds, "exported graph has no inputs"
    return sess.run(None, feeds)[0]


@pytest.mark.parametrize(
    ("name", "params"),
    [(n, {}) for n in available_scorers()] + [("gen", {"m": 3}), ("energy", {"temperature": 2.5})],
)
def test_onnx_export_matches_torch(name: str, params: dict) -> None:
    p = _problem()
    scorer = get_scorer(name, **params)
    extra = {"neg_text_embeddings": p["neg"]} if name == "neglabel" else {}
    if name == "maxlogit_knn":  # fitted on ID logits as well as features
        extra = {"logits": torch.as_tensor(p["features"]) @ torch.as_tensor(p["weight"]).T + torch.as_tensor(p["bias"])}
    scorer.fit(
        features=p["features"],
        labels=p["labels"],
        classifier_weight=p["weight"],
        classifier_bias=p["bias"],
        **extra,
    ).eval()
    example = _maps(p, 1, (1, 4, 6))
    run_on = _maps(p, 2, (2, 5, 3))  # other batch and spatial sizes than traced
    got = export_and_run(scorer, example, run_on)
    with torch.no_grad():
        ref = scorer(*run_on).numpy()
    assert got.shape == ref.shape == (2, 5, 3)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
