"""MoFE, Dynamic-beta Mixup, the CMA loss, the dual encoder and NegLabel (issue 16)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ood_perception.losses import cma_loss
from ood_perception.models.dual_encoder import (
    DualEncoder,
    HashTokenizer,
    TinyImageEncoder,
    TinyTextEncoder,
    load_open_clip,
    open_clip_layout,
)
from ood_perception.models.mofe import (
    MoFE,
    SplitBackbone,
    class_partition,
    load_dinov2,
    mofe_losses,
    tiny_cnn_backbone,
    vit_backbone,
)
from ood_perception.scoring.feature_based import KNN
from ood_perception.scoring.neglabel import NegLabel
from ood_perception.synthesis.dynamic_beta import DynamicBetaMixup, class_accuracy, feature_norm_regulariser


# -- class partition ----------------------------------------------------------------------------
def test_partition_follows_groups_and_kmeans_moves_a_misgrouped_class():
    protos = np.array([[1.0, 0.0], [0.95, 0.1], [0.0, 1.0], [0.1, 0.95], [0.97, 0.05]])
    groups = ["a", "a", "b", "b", "b"]  # class 4 is grouped with b but its prototype sits with a
    part = class_partition(protos, groups)
    assert part.tolist() == [0, 0, 1, 1, 0]
    assert class_partition(protos, groups, num_experts=1).tolist() == [0] * 5
    with pytest.raises(ValueError, match="num_experts"):
        class_partition(protos, groups, num_experts=6)


# -- a separable toy set ------------------------------------------------------------------------
def _toy(n_per_class: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """4 classes of 16x16 images: red / green / blue / white blobs on noise."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]])
    xs, ys = [], []
    for c, col in enumerate(colours):
        x = 0.2 * torch.rand(n_per_class, 3, 16, 16, generator=g)
        x[:, :, 4:12, 4:12] += 0.8 * col.view(1, 3, 1, 1)
        xs.append(x.clamp(0, 1))
        ys.append(torch.full((n_per_class,), c))
    return torch.cat(xs), torch.cat(ys)


def test_router_sends_samples_to_their_clusters_expert_after_training():
    torch.manual_seed(0)
    x, y = _toy()
    model = MoFE(tiny_cnn_backbone(16), [0, 0, 1, 1])  # red+green -> expert 0, blue+white -> expert 1
    trunk = model.trunk(x)
    assert (model.route(trunk).argmax(1) == model.partition[y]).float().mean() < 1.0  # not by construction
    opt = torch.optim.Adam([{"params": model.experts.parameters()}, {"params": model.heads.parameters()},
                            {"params": model.router.parameters(), "lr": 0.1}], lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        parts = mofe_losses(model, trunk, y, gen)
        opt.zero_grad()
        (parts["router"] + parts["experts"]).backward()
        opt.step()
    model.eval()
    xt, yt = _toy(seed=1)
    out = model.forward(xt)
    assert torch.equal(out.expert, model.partition[yt])
    assert (out.class_logits.argmax(1) == yt).float().mean() >= 0.9
    # classes of the other expert are -inf in the routed sample's class logits
    assert torch.isinf(out.class_logits[yt == 0][:, 2:]).all()


def test_expert_losses_use_one_negative_per_positive():
    x, y = _toy(4)
    y = torch.tensor([0] * 4 + [1] * 4 + [2] * 4 + [3] * 4)
    model = MoFE(tiny_cnn_backbone(8), [0, 1, 1, 1])  # expert 0: 4 positives vs 12 others
    seen = []
    model.experts[0].register_forward_hook(lambda m, i, o: seen.append(("e0", i[0].shape[0])))
    model.experts[1].register_forward_hook(lambda m, i, o: seen.append(("e1", i[0].shape[0])))
    mofe_losses(model, model.trunk(x), y)
    # expert 0: 4 positives + 4 of the 12 negatives; expert 1: 12 positives + all 4 negatives
    assert seen == [("e0", 8), ("e1", 16)]
    tgt = model.expert_targets(1, torch.tensor([0, 1, 2, 3]))
    assert tgt.tolist() == [3, 0, 1, 2]  # class 0 is "other" (index 3) for expert 1


def test_knn_score_is_the_routed_experts_bank_distance():
    x, y = _toy(12)
    model = MoFE(tiny_cnn_backbone(8), [0, 0, 1, 1]).eval()
    trunk = model.trunk(x)
    model.fit_knn(trunk, y, k=3)
    xt, _ = _toy(3, seed=5)
    tt = model.trunk(xt)
    score, out = model.score_trunk_output(tt)
    for i in range(xt.shape[0]):
        e = int(out.expert[i])
        bank = torch.cat([model.expert_features(e, trunk[j:j + 1]) for j in range(len(y)) if model.partition[y[j]] == e])
        ref = KNN(k=3).fit(features=bank).score_flat(None, out.features[i:i + 1])
        assert score[i].item() == pytest.approx(float(ref), abs=1e-6)


def test_experts_start_as_copies_of_the_pretrained_block():
    bb = tiny_cnn_backbone(8).eval()
    model = MoFE(bb, [0, 1, 1]).eval()
    x, _ = _toy(2)
    ref = bb(x)
    for k in range(2):
        assert torch.allclose(model.expert_features(k, model.trunk(x)), ref)
    assert all(not p.requires_grad for p in bb.parameters())
    assert all(p.requires_grad for p in model.experts.parameters())


def _tiny_vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)


def test_vit_split_reproduces_the_vit_and_trains_a_router():
    vit = _tiny_vit().eval()
    bb = vit_backbone(vit)
    x, y = _toy(6)
    # trunk + last block + [CLS] equals the ViT's own encoder output token 0
    with torch.no_grad():
        ref = vit.encoder(torch.cat([vit.class_token.expand(x.shape[0], -1, -1), vit._process_input(bb.normalise(x))], 1))[:, 0]
        assert torch.allclose(bb(x), ref, atol=1e-5)
    model = MoFE(bb, [0, 0, 1, 1])
    trunk = model.trunk(x)
    assert trunk.shape == (x.shape[0], 5, 16)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(40):
        parts = mofe_losses(model, trunk, y)
        opt.zero_grad()
        (parts["router"] + parts["experts"]).backward()
        opt.step()
    model.eval()
    assert (model.forward_trunk_output(trunk).expert == model.partition[y]).float().mean() >= 0.9


def test_dinov2_loads_from_a_local_hub_checkout(tmp_path):
    # a stand-in checkout: hubconf.py returning a timm-layout ViT (blocks / norm / cls_token)
    (tmp_path / "hubconf.py").write_text(
        "import torch\nfrom torch import nn\n"
        "class V(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.embed_dim = 8\n"
        "        self.patch_embed = nn.Sequential(nn.Conv2d(3, 8, 4, 4), nn.Flatten(2))\n"
        "        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))\n"
        "        self.blocks = nn.ModuleList([nn.Identity(), nn.Linear(8, 8)]); self.norm = nn.LayerNorm(8)\n"
        "    def prepare_tokens_with_masks(self, x):\n"
        "        t = self.patch_embed(x).transpose(1, 2)\n"
        "        return torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], 1)\n"
        "def dinov2_vits14(pretrained=False):\n    return V()\n")
    hub = torch.hub.load(str(tmp_path), "dinov2_vits14", source="local", pretrained=False)
    torch.save(hub.state_dict(), tmp_path / "w.pt")
    bb = load_dinov2(tmp_path, weights=tmp_path / "w.pt")
    assert isinstance(bb, SplitBackbone) and bb.kind == "vit"
    assert bb(torch.rand(2, 3, 8, 8)).shape == (2, 8)
    with pytest.raises(FileNotFoundError, match="hubconf"):
        load_dinov2(tmp_path / "nowhere")


# -- Dynamic-beta Mixup -------------------------------------------------------------------------
def test_dynamic_beta_follows_the_class_accuracy_rule():
    from scipy import stats

    dbm = DynamicBetaMixup(3, w=0.8)
    assert dbm.s.tolist() == [1.0, 1.0, 1.0]  # accuracies start at 0
    dbm.update([0.5, 1.0, float("nan")])
    assert dbm.s.tolist() == pytest.approx([0.6, 0.2, 1.0])  # s = 1 - w * acc; NaN keeps the old value
    dbm.update([float("nan"), 1.0, 0.25])
    assert dbm.s.tolist() == pytest.approx([0.6, 0.2, 0.8])
    gen = torch.Generator().manual_seed(0)
    for c, s in enumerate((0.6, 0.2, 0.8)):
        lam = dbm.sample_lambda(torch.full((4000,), c), gen).numpy()
        assert lam.min() >= 0.5 and lam.max() <= 1.0
        # folded Beta(s, s): P(lambda <= x) = 2 * I_x(s, s) - 1 on [0.5, 1]
        folded_cdf = lambda v, s=s: 2 * stats.beta.cdf(v, s, s) - 1  # noqa: E731
        assert stats.kstest(lam, folded_cdf).pvalue > 0.001
    # a better-learned class (smaller s) puts more mass near 1
    lam_hi = dbm.sample_lambda(torch.full((4000,), 1), gen)
    lam_lo = dbm.sample_lambda(torch.full((4000,), 2), gen)
    assert (lam_hi > 0.95).float().mean() > (lam_lo > 0.95).float().mean() + 0.1
    with pytest.raises(ValueError):
        dbm.update([0.5, 2.0, 0.0])


def test_dynamic_beta_mix_and_regulariser_formulas():
    dbm = DynamicBetaMixup(2)
    x = torch.arange(12, dtype=torch.float32).view(4, 3)
    y = torch.tensor([0, 1, 0, 1])
    gen = torch.Generator().manual_seed(3)
    xm, ya, yb, lam = dbm.mix(x, y, gen)
    perm = torch.randperm(4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(ya, y) and torch.equal(yb, y[perm])
    assert torch.allclose(xm, lam[:, None] * x + (1 - lam[:, None]) * x[perm])
    f = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    assert float(feature_norm_regulariser(f, 0.1)) == pytest.approx(0.1 * (5.0 + 1.0) / 2)
    acc = class_accuracy(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 0, 0]), 3)
    assert acc[0].item() == pytest.approx(1 / 3) and acc[1].item() == 1.0 and math.isnan(acc[2].item())


# -- CMA loss and NegLabel ----------------------------------------------------------------------
def test_cma_loss_equals_its_formula_on_a_hand_computed_batch():
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    scale = 2.0
    out = cma_loss(v, t, scale, align_weight=0.5)
    # logits = 2 * v t^T = [[2, 1.2], [0, 1.6]]
    lse = lambda a, b: math.log(math.exp(a) + math.exp(b))  # noqa: E731
    row = [lse(2, 1.2) - 2, lse(0, 1.6) - 1.6]
    col = [lse(2, 0) - 2, lse(1.2, 1.6) - 1.6]
    clip = (sum(row) / 2 + sum(col) / 2) / 2
    align = -((lse(2, 1.2) + lse(0, 1.6)) / 2 + (lse(2, 0) + lse(1.2, 1.6)) / 2) / 2
    assert float(out["clip"]) == pytest.approx(clip, abs=1e-6)
    assert float(out["align"]) == pytest.approx(align, abs=1e-6)
    assert float(out["total"]) == pytest.approx(clip + 0.5 * align, abs=1e-6)
    with pytest.raises(ValueError):
        cma_loss(v, t[:1], scale)


def test_neglabel_equals_its_formula_on_a_hand_computed_batch():
    s = NegLabel(temperature=0.5, id_text_embeddings=[[1.0, 0.0], [0.0, 2.0]], neg_text_embeddings=[[-1.0, 0.0]])
    v = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    # cosines: row 0 -> id (1, 0), neg -1; row 1 -> id (0, 1), neg 0; / tau = 0.5
    e = math.exp
    s0 = (e(2) + e(0)) / (e(2) + e(0) + e(-2))
    s1 = (e(0) + e(2)) / (e(0) + e(2) + e(0))
    got = s.score_flat(None, v).flatten().tolist()
    assert got == pytest.approx([1 - s0, 1 - s1], abs=1e-6)


def test_dual_encoder_cma_step_lowers_the_loss_and_builds_neglabel():
    torch.manual_seed(0)
    tok = HashTokenizer(256, 6)
    enc = DualEncoder(TinyImageEncoder(16), TinyTextEncoder(256, 16), tok, embed_dim=8)
    x, y = _toy(4)
    names = ["red", "green", "blue", "white"]
    texts = [f"a photo of a {names[int(c)]} square" for c in y]
    iv, tv, sc = enc(x, texts)
    assert torch.allclose(iv.norm(dim=1), torch.ones(len(y))) and torch.allclose(tv.norm(dim=1), torch.ones(len(y)))
    opt = torch.optim.Adam(enc.parameters(), lr=1e-2)
    first = float(cma_loss(iv, tv, sc)["total"])
    for _ in range(30):
        loss = cma_loss(*enc(x, texts))["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(cma_loss(*enc(x, texts))["total"]) < first
    scorer = enc.neglabel(names, ["car", "tree", "dog"])
    assert scorer.id_text.shape == (4, 8) and scorer.neg_text.shape == (3, 8)
    scores = scorer.score_flat(None, enc.encode_image(x))
    assert scores.shape[0] == len(y) and bool(((scores >= 0) & (scores <= 1)).all())


def test_open_clip_layout_checks_keys(tmp_path):
    sd = {"token_embedding.weight": torch.zeros(10, 4), "positional_embedding": torch.zeros(7, 4),
          "text_projection": torch.zeros(4, 3), "logit_scale": torch.tensor(4.6), "ln_final.weight": torch.ones(4),
          "visual.proj": torch.zeros(5, 3)}
    info = open_clip_layout(sd)
    assert (info["embed_dim"], info["vocab_size"], info["context_length"]) == (3, 10, 7)
    with pytest.raises(ValueError, match="open_clip"):
        open_clip_layout({"visual.proj": torch.zeros(1)})
    with pytest.raises(FileNotFoundError):
        load_open_clip(tmp_path / "missing.pt")
