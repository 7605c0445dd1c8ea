"""SIT-FER: the three probabilities and their fusion, the memory bank, the masked loss, the fused eval head and
the text encoders (random anchors; tiny local sentence-transformers / CLIP models), worked out by hand."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from conftest import IdentityBackbone, require
from torch import nn

from bench.engine.model import FERModel
from bench.errors import FERBenchError
from bench.method import Batch, SetupInfo, StepContext
from bench.registry import create_method
from methods.sitfer import RELEASED_VOCAB, RandomTextTransformer, SITFERModel, tokenize_vocabulary_words

E, L = math.exp, math.log


def _close(t: torch.Tensor, rows: list[list[float]]) -> bool:
    return torch.allclose(t.float(), torch.tensor(rows), atol=1e-6)


def _softmax(v: list[float]) -> list[float]:
    s = sum(E(x) for x in v)
    return [E(x) / s for x in v]


def _head(scale: float = 1.0) -> SITFERModel:
    """D = 2, C = 3: W = scale * [[1, 0], [0, 1], [0, 0]], anchors (1,0), (0,1), (-1,0); 3 bank slots."""
    base = FERModel(IdentityBackbone(2), 3)
    with torch.no_grad():
        base.classifier.weight.copy_(scale * torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        base.classifier.bias.zero_()
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    return SITFERModel(base, anchors, projection="fixed", num_labeled=3, normalize_classifier_input=True,
                       eval_head="fused", eval_weights=(0.3, 0.2, 0.5), text_temperature=1.0, instance_temperature=1.0,
                       generator=None)


def test_text_and_instance_scores_and_bank_update() -> None:
    head = _head()
    f = torch.tensor([[0.6, 0.8], [-1.0, 0.0]])
    assert _close(head.text_scores(f), [[0.6, 0.8, -0.6], [-1.0, 0.0, 1.0]])
    assert head.instance_scores(f, 3).tolist() == [[0, 0, 0], [0, 0, 0]]  # empty bank: the accumulator's 0
    head.update_bank(torch.tensor([[1.0, 0.0], [0.8, 0.6]]), torch.tensor([0, 1]), torch.tensor([0, 1]))
    head.update_bank(torch.tensor([[0.0, 1.0]]), torch.tensor([1]), torch.tensor([2]))
    assert head.bank_labels.tolist() == [0, 1, 1]
    # class 0: <f, (1,0)>; class 1: max(<f, (.8,.6)>, <f, (0,1)>); class 2: no member -> 0; negatives -> 0
    assert _close(head.instance_scores(f, 3), [[0.6, 0.96, 0.0], [0.0, 0.0, 0.0]])
    head.update_bank(torch.tensor([[0.0, -1.0]]), torch.tensor([2]), torch.tensor([1]))  # a slot is overwritten
    assert head.bank_labels.tolist() == [0, 2, 1]
    assert _close(head.instance_scores(f[:1], 3), [[0.6, 0.8, 0.0]])


def _filled_head() -> SITFERModel:
    head = _head()
    head.update_bank(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]), torch.tensor([0, 1, 1]), torch.arange(3))
    return head


def test_fusion_of_semantic_text_and_instance_scores() -> None:
    head = _filled_head()
    f = torch.tensor([[0.6, 0.8]])
    logits = torch.tensor([[0.6, 0.8, 0.0]])
    code = create_method("sitfer", num_classes=3)
    # after warm-up: softmax(0.3 logits + 0.2 text + 0.5 instance) = softmax(.6, .88, -.12)
    p = code.pseudo_distribution(head, logits, f, with_instance=True)
    assert p[0].tolist() == pytest.approx(_softmax([0.6, 0.88, -0.12]), rel=1e-6)
    # warm-up: softmax(0.6 logits + 0.4 text) = softmax(.6, .8, -.24)
    p = code.pseudo_distribution(head, logits, f, with_instance=False)
    assert p[0].tolist() == pytest.approx(_softmax([0.6, 0.8, -0.24]), rel=1e-6)
    # the paper's form: the mean of the three probabilities
    paper = create_method("sitfer", num_classes=3, args={"fusion": "probs", "fusion_weights": [1, 1, 1]})
    p = paper.pseudo_distribution(head, logits, f, with_instance=True)
    parts = [_softmax([0.6, 0.8, 0.0]), _softmax([0.6, 0.8, -0.6]), _softmax([0.6, 0.96, 0.0])]
    assert p[0].tolist() == pytest.approx([sum(c) / 3 for c in zip(*parts)], rel=1e-6)


def test_masked_consistency_loss_averages_over_selected_samples_only() -> None:
    sit = create_method("sitfer", num_classes=3)
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.75, 0.2, 0.05], [0.1, 0.1, 0.8]])  # .75 is not > .75
    z = torch.tensor([[L(2), 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 0.0, L(6)]])
    loss, mask = sit.consistency_loss(z, probs)
    assert mask.tolist() == [True, False, True]
    assert loss.item() == pytest.approx((L(4 / 2) + L(8 / 6)) / 2, rel=1e-6)
    loss, mask = sit.consistency_loss(z, probs * 0.5)
    assert not mask.any() and loss.item() == 0.0


def test_training_step_by_hand() -> None:
    sit = create_method("sitfer", num_classes=3, args={"warmup_frac": 0.5})
    head = _head(scale=20.0).train()
    batch = Batch({"weak": torch.tensor([[2.0, 0.0]]), "y": torch.tensor([0]), "pos": torch.tensor([2])},
                  {"weak": torch.tensor([[0.0, 3.0]]), "strong": torch.tensor([[0.6, 0.8]]), "idx": torch.tensor([0])})
    out = sit.training_step(head, batch, StepContext(step=5, total_steps=10, num_classes=3))
    assert head.bank[2].tolist() == [1.0, 0.0] and head.bank_labels.tolist() == [-1, -1, 0]
    loss_s = L(1 + 2 * E(-20))  # logits (20, 0, 0), y = 0
    loss_t = -L(E(1) / (E(1) + E(0) + E(-1)))  # text scores (1, 0, -1)
    # weak u: f = (0, 1), logits (0, 20, 0), text (0, 1, 0), instance (0, 0, 0) -> softmax(0, 6.2, 0)
    assert _softmax([0.0, 6.2, 0.0])[1] > 0.75
    loss_u = L(1 + E(-4) + E(-16))  # strong: logits (12, 16, 0) against y^ = 1
    assert out.logs["mask_rate"] == 1.0 and out.logs["instance_on"] == 1.0
    assert out.loss.item() == pytest.approx(0.4 * loss_s + 0.4 * loss_t + 0.2 * loss_u, rel=1e-5)


def test_fused_eval_head() -> None:
    head = _filled_head().eval()
    out = head(torch.tensor([[0.6, 0.8]]))
    parts = [_softmax([0.6, 0.8, 0.0]), _softmax([0.6, 0.8, -0.6]), _softmax([0.6, 0.96, 0.0])]
    fused = [0.3 * a + 0.2 * b + 0.5 * c for a, b, c in zip(*parts)]
    assert out.exp()[0].tolist() == pytest.approx(fused, rel=1e-6)
    head.eval_head = "classifier"
    assert head(torch.tensor([[0.6, 0.8]]))[0].tolist() == pytest.approx([0.6, 0.8, 0.0])
    assert head.train()(torch.tensor([[0.6, 0.8]]))[0].tolist() == pytest.approx([0.6, 0.8, 0.0])


def _built(args: dict, dim: int = 6, classes: int = 3) -> tuple:
    sit = create_method("sitfer", num_classes=classes, args=args)
    sit.setup(SetupInfo(num_classes=classes, num_labeled=5, num_unlabeled=10, total_steps=10))
    return sit, sit.build_model(FERModel(IdentityBackbone(dim), classes))


def test_random_anchors_are_seeded_unit_vectors() -> None:
    _, a = _built({"text_seed": 3})
    sit, b = _built({"text_seed": 3})
    _, c = _built({"text_seed": 4})
    assert a.anchors().shape == (3, 6) and torch.allclose(a.anchors().norm(dim=1), torch.ones(3))
    assert torch.equal(a.anchors(), b.anchors()) and not torch.equal(a.anchors(), c.anchors())
    assert b.bank.shape == (5, 6)
    info = sit.info()
    assert (info["text_encoder"], info["text_dim"], info["text_projection"]) == ("random", 6, "none")


def _best_margin(anchors: torch.Tensor) -> float:
    """The smallest, over classes c, of the best text-logit margin a unit feature can reach for c:
    max_{|f| = 1} min_{k != c} f.(t_c - t_k), the distance from 0 to the convex hull of the t_c - t_k (found exactly:
    the nearest point of the hull is the nearest point of the affine hull of one subset, with weights >= 0)."""
    margins = []
    for c in range(len(anchors)):
        d = (anchors[c] - torch.cat([anchors[:c], anchors[c + 1:]])).double()
        best = math.inf
        for r in range(1, len(d) + 1):
            for subset in itertools.combinations(range(len(d)), r):
                rows = d[list(subset)]
                lam = torch.linalg.solve(rows @ rows.T, torch.ones(r, dtype=torch.float64))
                lam = lam / lam.sum()
                if bool((lam >= -1e-12).all()):
                    best = min(best, float((lam @ rows).norm()))
        margins.append(best)
    return min(margins)


def _cosines(anchors: torch.Tensor) -> torch.Tensor:
    return (anchors @ anchors.T)[~torch.eye(len(anchors), dtype=torch.bool)]


def test_best_margin_by_hand() -> None:
    # orthonormal anchors: f = (t_c - mean of the others) / norm reaches sqrt(1 + 1/(C-1)) against every k
    assert _best_margin(torch.eye(3)) == pytest.approx(math.sqrt(1.5), rel=1e-9)
    assert _best_margin(torch.eye(7)) == pytest.approx(math.sqrt(7 / 6), rel=1e-9)
    # two anchors at cosine rho: |t_0 - t_1| = sqrt(2 - 2 rho)
    rho = 0.6
    assert _best_margin(torch.tensor([[1.0, 0.0], [rho, 0.8]])) == pytest.approx(math.sqrt(2 - 2 * rho), rel=1e-6)


def test_released_tokenizer_keeps_only_vocabulary_words() -> None:
    vocab = list(RELEASED_VOCAB)
    ids = tokenize_vocabulary_words(["This is a face image of happy", "This is a face image of Surprise"], vocab)
    assert ids.shape == (2, 77)
    assert ids[0, 0].item() == 3 and ids[0, 1:].abs().sum().item() == 0  # "happy" is id 3, then padding 0
    assert ids[1].abs().sum().item() == 0  # "surprise" is id 0: the same as the padding
    with pytest.raises(FERBenchError, match="has no word of the text vocabulary"):
        tokenize_vocabulary_words(["a smiling face"], vocab)


def _transformer_anchors(seed: int, classes: int = 7, dim: int = 512) -> tuple:
    sit = create_method("sitfer", num_classes=classes, args={"text_encoder": "random_transformer", "text_seed": seed})
    sit.setup(SetupInfo(num_classes=classes, num_labeled=5, num_unlabeled=10, total_steps=10))
    base = FERModel(IdentityBackbone(dim), classes)
    state = torch.random.get_rng_state()
    head = sit.build_model(base)
    assert torch.equal(torch.random.get_rng_state(), state)  # the run's generator is left alone
    return sit, head


def test_random_transformer_anchors_are_the_released_codes() -> None:
    """Structure by hand: (C, 512) unit rows before any projection, one per class word; each is the projected
    output at the first position of its word's id followed by padding, from the parameters drawn right after
    torch.manual_seed(seed) (so a seed gives the same anchors every time, and another seed others)."""
    sit, head = _transformer_anchors(3)
    anchors = head.anchors()
    assert anchors.shape == (7, 512) and torch.allclose(anchors.norm(dim=1), torch.ones(7), atol=1e-6)
    info = sit.info()
    assert (info["text_encoder"], info["text_dim"], info["text_projection"], info["text_seed"]) == (
        "random_transformer", 512, "none", 3)
    assert info["text_vocabulary"] == list(RELEASED_VOCAB)
    assert info["prompts"][0] == "This is a face image of neutral"
    torch.manual_seed(3)
    encoder = RandomTextTransformer(7).eval()
    ids = [RELEASED_VOCAB.index(w) for w in ("neutral", "happy", "sad", "surprise", "fear", "disgust", "angry")]
    with torch.no_grad():  # FERBench's class order, the code's ids
        x = encoder.token_embedding(torch.tensor([[i] + [0] * 76 for i in ids])).transpose(0, 1)
        first = encoder.text_projection(encoder.ln_final(encoder.encoder(x)[0]))
    assert torch.allclose(anchors, nn.functional.normalize(first, dim=-1), atol=1e-5)
    _, other = _transformer_anchors(4)
    assert not torch.allclose(other.anchors(), anchors, atol=1e-3)
    # 8 classes: Contempt is not in the code's vocabulary and gets id 7; a narrower image feature is projected
    sit8, head8 = _transformer_anchors(3, classes=8, dim=6)
    assert sit8.info()["text_vocabulary"] == [*RELEASED_VOCAB, "contempt"]
    assert head8.text_embeddings.shape == (8, 6) and sit8.info()["text_dim"] == 512


def test_released_anchors_are_far_from_orthogonal_and_iid_ones_are_not() -> None:
    """Measured over seeds 0-9: pairwise cosines 0.64-0.80 (per-seed mean 0.70-0.76), best margin 0.47-0.54;
    i.i.d. unit vectors at D = 512: |cos| <= 0.13, best margin 1.04-1.06."""
    for seed in (0, 1, 2):
        anchors = _transformer_anchors(seed)[1].anchors().double()
        cos = _cosines(anchors)
        assert 0.6 < cos.min() and cos.max() < 0.85 and 0.68 < cos.mean() < 0.8
        assert 0.44 < _best_margin(anchors) < 0.6
        iid = _built({"text_seed": seed}, dim=512, classes=7)[1].anchors().double()
        assert _cosines(iid).abs().max() < 0.16 and _best_margin(iid) > 1.0


def test_normalized_head_normalises_after_dropout() -> None:
    """model.head='normalized': the feature of text scores, bank and classifier is L2norm(dropout(x)), as the
    released ResNet_18; otherwise it is L2norm(x), whatever dropout does to the classifier's input."""
    x = torch.tensor([[3.0, 4.0]]).repeat(64, 1)
    allowed = torch.tensor([[0.6, 0.8], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])  # each coordinate kept (x2) or not
    for head_kind in ("normalized", "linear"):
        base = FERModel(IdentityBackbone(2), 3, drop_rate=0.5, head=head_kind)
        with torch.no_grad():
            base.classifier.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
            base.classifier.bias.zero_()
        sit = create_method("sitfer", num_classes=3, args={"text_seed": 0})
        sit.setup(SetupInfo(num_classes=3, num_labeled=5, num_unlabeled=10, total_steps=10))
        head = sit.build_model(base).train()
        torch.manual_seed(0)
        logits, f, _ = head(x, return_features=True)
        if head_kind == "normalized":
            assert sit.info()["feature"].startswith("L2-normalised after dropout")
            assert ((f[:, None] - allowed[None]).abs().amax(-1) < 1e-6).any(-1).all()  # every row is one of them
            assert (f[:, 0] == 0).any() and (f[:, 1] == 0).any()  # dropout reached the feature
            assert torch.allclose(logits, f @ base.classifier.weight.T)  # the classifier sees that same feature
        else:
            assert torch.allclose(f, torch.tensor([[0.6, 0.8]]).expand(64, 2))  # before dropout: never changed
            assert not torch.allclose(logits, f @ base.classifier.weight.T)  # the classifier sees drop(f)
        head.eval()
        logits, f = head.encode(x[:1])
        assert torch.allclose(f, torch.tensor([[0.6, 0.8]]))  # no dropout in eval: both orders agree
    with pytest.raises(FERBenchError, match="normalize_classifier_input=false contradicts model.head='normalized'"):
        create_method("sitfer", num_classes=3, args={"normalize_classifier_input": False}).build_model(
            FERModel(IdentityBackbone(2), 3, head="normalized"))


def test_bad_text_encoder_arguments_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(FERBenchError, match="text_encoder='bert': expected one of 'random', 'random_transformer'"):
        create_method("sitfer", num_classes=7, args={"text_encoder": "bert"})
    with pytest.raises(FERBenchError, match="loads from a local directory only; text_encoder_path=.*missing"):
        create_method("sitfer", num_classes=7,
                      args={"text_encoder": "clip", "text_encoder_path": str(tmp_path / "missing")})
    with pytest.raises(FERBenchError, match=r"no config.json \(transformers CLIP\) or open_clip_config.json"):
        sit = create_method("sitfer", num_classes=3, args={"text_encoder": "clip", "text_encoder_path": str(tmp_path)})
        sit.build_model(FERModel(IdentityBackbone(6), 3))
    with pytest.raises(FERBenchError, match="class_words has 2 words for 3 classes"):
        create_method("sitfer", num_classes=3, args={"class_words": ["a", "b"]})
    with pytest.raises(FERBenchError, match="fusion='max'"):
        create_method("sitfer", num_classes=3, args={"fusion": "max"})


def _tiny_bert_dir(path: Path) -> list[str]:
    transformers = require("transformers", "transformers not installed (pip install '.[text]')")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "this", "is", "a", "face", "image", "of",
             "neutral", "happy", "sad", "smiling"]
    path.mkdir()
    (path / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = transformers.BertTokenizer(str(path / "vocab.txt"))
    tokenizer.save_pretrained(str(path))
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(words), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16, max_position_embeddings=32)
    transformers.BertModel(config).save_pretrained(str(path))
    return words


def test_sentence_transformers_encoder_from_a_local_directory(tmp_path: Path) -> None:
    st = require("sentence_transformers", "sentence-transformers not installed (pip install '.[text]')")
    _tiny_bert_dir(tmp_path / "st")
    args = {"text_encoder": "sentence-transformers", "text_encoder_path": str(tmp_path / "st"), "text_seed": 0}
    sit, head = _built(args)
    prompts = ["This is a face image of neutral", "This is a face image of happy", "This is a face image of sad"]
    assert sit.prompts == prompts
    direct = torch.as_tensor(st.SentenceTransformer(str(tmp_path / "st"), device="cpu").encode(
        prompts, normalize_embeddings=True))
    projection = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))  # the seeded fixed projection
    expected = nn.functional.normalize(direct @ projection, dim=-1)
    assert torch.allclose(head.anchors(), expected, atol=1e-5)
    info = sit.info()
    assert (info["text_encoder"], info["text_dim"], info["text_projection"]) == ("sentence-transformers", 8, "fixed")
    assert info["prompts"] == prompts
    _, learned = _built({**args, "text_projection": "learned"})
    assert learned.text_proj is not None and learned.anchors().requires_grad


def test_transformers_clip_encoder_from_a_local_directory(tmp_path: Path) -> None:
    transformers = require("transformers", "transformers not installed (pip install '.[text]')")
    words = _tiny_bert_dir(tmp_path / "clip")
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config={"vocab_size": len(words), "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 32,
                     "bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0},  # [CLS], [SEP], [PAD]: pools at [SEP]
        vision_config={"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 16},
        projection_dim=6)
    transformers.CLIPModel(config).save_pretrained(str(tmp_path / "clip"))
    sit, head = _built({"text_encoder": "clip", "text_encoder_path": str(tmp_path / "clip")})
    assert sit.info()["text_dim"] == 6 and sit.info()["text_projection"] == "none"  # CLIP width = image width
    anchors = head.anchors()
    assert torch.allclose(anchors.norm(dim=1), torch.ones(3)) and not torch.allclose(anchors[0], anchors[1])


def test_open_clip_encoder_from_a_local_directory(tmp_path: Path) -> None:
    open_clip = require("open_clip", "open_clip_torch not installed (pip install open_clip_torch)")
    import json

    cfg = {"embed_dim": 6, "vision_cfg": {"image_size": 32, "layers": 1, "width": 8, "patch_size": 16, "head_width": 4},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 8, "heads": 2, "layers": 1}}
    d = tmp_path / "oc"
    d.mkdir()
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    torch.manual_seed(0)
    model = open_clip.CLIP(**cfg)
    torch.save(model.state_dict(), d / "open_clip_pytorch_model.bin")
    sit, head = _built({"text_encoder": "clip", "text_encoder_path": str(d)})
    tokens = open_clip.get_tokenizer(f"local-dir:{d}")(sit.prompts)
    with torch.no_grad():
        expected = nn.functional.normalize(model.eval().encode_text(tokens), dim=-1)
    assert torch.allclose(head.anchors(), expected, atol=1e-5)
    assert sit.info()["text_dim"] == 6
