"""SIT-FER (Ding et al., arXiv 2503.18463): semantic, instance and text probabilities fused into pseudo-labels,
as in the released PatrickStarL/SIT-FER `main.py` (docs/concepts/methods.md#sit-fer).

Model (`build_model` wraps any timm backbone): f = L2norm(backbone(x)) (D-d), logits = W dropout(f); fixed text
anchors T (C x D, unit rows); a memory bank B (N_labeled x D) of labeled features with their labels. With
`model.head="normalized"` the head is the released one (`models/backbone.py`: pooled features -> Dropout ->
L2-normalise -> Linear): f = L2norm(dropout(backbone(x))), logits = W f, and that f (after dropout, in training)
is the feature of the text scores, the bank and the pseudo-labels.
- text scores       s_text = f T^T / tau_t            (cosine logits; the code has no temperature: tau_t = 1)
- instance scores   s_ins_c = max(0, max_{j: y_j = c} <f, B_j>) / tau_i   (per-class max cosine; empty
                    slots and classes give 0, as the code's zero-started accumulator)
Training step (views: weak + strong of each unlabeled image, weak of each labeled one):
- the labeled features overwrite their bank slots (detached, at their labeled-pool position) first;
- L_s = CE(W f(x), y);  L_t = CE(f(x) T^T / tau_t, y)  (labeled data co-supervised by the text anchors);
- pseudo-label distribution on the weak view, no gradient; `fusion="logits"` (code): softmax of the
  weighted sum of scores, 0.6 logits + 0.4 s_text during the warm-up (the first 15 of 80 epochs,
  `warmup_frac` 0.1875), then 0.3 logits + 0.2 s_text + 0.5 s_ins; `fusion="probs"` (the paper's
  p^ = mean of the three probabilities): the weighted mean of softmax(logits), softmax(s_text),
  softmax(s_ins) with `fusion_weights` (set [1, 1, 1] and temperatures 0.1 for the paper recipe);
- y^ = argmax p^, mask = max p^ > 0.75 (fixed); L_u = mean over the masked samples of CE(f(strong u), y^),
  0 when none passes;
- L = 0.4 L_s + 0.4 L_t + 0.2 L_u.
Evaluation (`eval_head="fused"`, the code's): p = 0.3 softmax(logits) + 0.2 softmax(s_text) + 0.5
softmax(s_ins) with the labeled bank; the model returns log p. `eval_head="classifier"` returns W f.

Text anchors (`text_encoder`), all offline:
- "random" (default): i.i.d. random unit vectors, seeded by `text_seed` (or, when null, by the run's
  initialisation seed). Near-orthogonal (|cos| about 0.1 at D = 512), so NOT the released code's anchors, which
  are far from orthogonal (below); kept as the default so existing results stand.
- "random_transformer": the released code's anchors (`main.py`, `TextEncoder`): a randomly initialised,
  never-trained text transformer (token embedding over a 7-word vocabulary, `nn.Transformer(512, 8, 3)` of which
  only the 3-layer post-norm encoder runs, with its closing LayerNorm, then another LayerNorm and a 512 x 512
  linear projection) in eval mode without gradient. The code's tokenizer keeps only vocabulary words, so each
  prompt "This is a face image of {emotion}" is the emotion's id followed by 76 padding ids 0 (0 is also
  "surprise"); the anchor is the projected output at the first position, L2-normalised. Far from orthogonal: at
  C = 7, pairwise cosines 0.64-0.80 (mean 0.70-0.76 per seed) and a best text-logit margin of about 0.5, against
  about 1.05 for "random". Built with the CPU generator seeded by `text_seed` (when null, a seed drawn from the
  run's generator; the record says which), in the code's construction order, so a seed gives the parameters the
  code gets right after `torch.manual_seed(seed)`. A class word outside the code's vocabulary (Contempt) gets a
  new id after the code's seven.
- "clip": a CLIP text tower from a local directory: a transformers `CLIPModel` (config.json) or an
  open_clip model (open_clip_config.json + weights), the encoder the paper points to (ViT-B/32, 512-d).
- "sentence-transformers": a SentenceTransformer from a local directory (e.g. all-MiniLM-L6-v2, 384-d).
Embeddings of another width than D are projected: `text_projection="fixed"` (a seeded Gaussian map, then
L2-normalised) or "learned" (a linear map trained through L_t). The record's `method_info` says which
encoder, width, projection and prompts were used. Prompts: `prompt` with one word per canonical class
(`class_words`; defaults are the code's words in FERBench's label order) or explicit `class_prompts`.

Deviations from the released code (besides the defaults above: "random" anchors, and the feature normalised
before dropout unless `model.head="normalized"`): one joint forward over labeled and unlabeled images unless
`train.forward="separate"` (BatchNorm sees them together, as for the other methods); the bank stores each
labeled image at its labeled-pool position with label -1 while empty (the code's zero-filled labels also
contribute 0); the harness evaluates the final checkpoint (with the EMA model when the run keeps one, so the
bank evaluated is the EMA of the student's: run with `train.ema_decay=0` for the code's no-EMA setting); the
code's split hack (57 images of one class) is not reproduced.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import FERBenchError
from bench.method import (
    Batch,
    Method,
    MethodArgs,
    ModelOutput,
    NonNegative,
    Positive,
    Probability,
    SetupInfo,
    StepContext,
    StepOutput,
    TorchSeed,
    arg,
    joint_forward,
    unwrap_model,
)
from bench.registry import register_method

#: the code's prompt words, in FERBench's canonical order (Neutral, Happy, Sad, Surprise, Fear, Disgust,
#: Anger, Contempt); the code says "angry" for Anger.
CLASS_WORDS = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "angry", "contempt")
TEXT_ENCODERS = ("random", "random_transformer", "clip", "sentence-transformers")
#: the released code's vocabulary in its order (`main.py` `vocab`); id 0 doubles as the padding id
RELEASED_VOCAB = ("surprise", "fear", "disgust", "happy", "sad", "angry", "neutral")
RELEASED_CONTEXT = 77  # the code's tokenizer pads every prompt to 77 ids


def _require(module: str, package: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise FERBenchError(f"method 'sitfer': {what} needs the Python package {package!r}, which is not "
                            f"installed (pip install {package})")


def encode_prompts(encoder: str, path: str, prompts: list[str]) -> Tensor:
    """Unit text embeddings (C, E) of `prompts` from a local model directory; never touches a network."""
    d = Path(path)
    if encoder == "sentence-transformers":
        _require("sentence_transformers", "sentence-transformers", "text_encoder='sentence-transformers'")
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(d), device="cpu", local_files_only=True)
        emb = torch.as_tensor(st.encode(prompts, normalize_embeddings=True, convert_to_numpy=True))
        return F.normalize(emb.float(), dim=-1)
    if (d / "open_clip_config.json").is_file():
        _require("open_clip", "open_clip_torch", "an open_clip text encoder")
        import open_clip

        model = open_clip.create_model(f"local-dir:{d}", device="cpu")
        tokenizer = open_clip.get_tokenizer(f"local-dir:{d}")
        with torch.no_grad():
            emb = model.eval().encode_text(tokenizer(prompts))
        return F.normalize(emb.float(), dim=-1)
    if (d / "config.json").is_file():
        _require("transformers", "transformers", "a transformers CLIP text encoder")
        from transformers import AutoTokenizer, CLIPModel

        model = CLIPModel.from_pretrained(str(d), local_files_only=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
        tokens = tokenizer(prompts, padding=True, return_tensors="pt")
        with torch.no_grad():
            emb = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        if not isinstance(emb, Tensor):  # some transformers versions return a model output
            emb = emb.text_embeds if getattr(emb, "text_embeds", None) is not None else emb.pooler_output
        return F.normalize(emb.float(), dim=-1)
    raise FERBenchError(f"method 'sitfer': text_encoder_path {d}: no config.json (transformers CLIP) or "
                        "open_clip_config.json (open_clip) in it")


def tokenize_vocabulary_words(prompts: list[str], vocab: list[str], context: int = RELEASED_CONTEXT) -> Tensor:
    """(P, context) ids as the released tokenizer gives them: each prompt's lower-cased, space-split words that are
    in `vocab` (others dropped), in order, then zeros."""
    index = {w: i for i, w in enumerate(vocab)}
    ids = torch.zeros(len(prompts), context, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        kept = [index[w] for w in prompt.lower().split() if w in index]
        if not kept:
            raise FERBenchError(f"method 'sitfer': prompt {prompt!r} has no word of the text vocabulary {vocab}")
        if len(kept) > context:
            raise FERBenchError(f"method 'sitfer': prompt {prompt!r} has more than {context} vocabulary words")
        ids[row, : len(kept)] = torch.tensor(kept)
    return ids


class RandomTextTransformer(nn.Module):
    """The released code's never-trained text encoder, with its structure and construction order (`main.py`
    `TextEncoder`): token embedding, `nn.Transformer(d_model, nhead, num_layers)` (only its encoder runs; the
    decoder is built so the parameters drawn after it are the same), final LayerNorm, linear projection. The
    code's positional embedding is all zeros and never trained, so it is left out (adding it changes nothing)."""

    def __init__(self, vocab_size: int, d_model: int = 512, nhead: int = 8, num_layers: int = 3) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        with warnings.catch_warnings():  # torch's note that a sequence-first encoder has no fast path
            warnings.simplefilter("ignore", UserWarning)
            self.encoder = nn.Transformer(d_model, nhead, num_layers).encoder
        self.ln_final = nn.LayerNorm(d_model)
        self.text_projection = nn.Linear(d_model, d_model)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.token_embedding(tokens).transpose(0, 1)  # sequence-first, as nn.Transformer's default
        x = self.ln_final(self.encoder(x).transpose(0, 1))
        return self.text_projection(x[:, 0])  # the first position: the (only) class word


def random_transformer_anchors(prompts: list[str], vocab: list[str], seed: int) -> Tensor:
    """Unit anchors (C, 512) of `prompts` from a `RandomTextTransformer` built from CPU generator seed `seed`,
    encoded one prompt at a time in eval mode without gradient, as the released code does."""
    with torch.random.fork_rng(devices=[]):  # the run's CPU random stream is left as it was
        torch.random.default_generator.manual_seed(seed)
        encoder = RandomTextTransformer(len(vocab)).eval()
    tokens = tokenize_vocabulary_words(prompts, vocab)
    with torch.no_grad():
        out = torch.cat([encoder(t[None]) for t in tokens])
    return F.normalize(out, dim=-1)


class SITFERModel(nn.Module):
    """FERModel + L2-normalised feature, text anchors and the labeled-feature memory bank (buffers, so they
    are checkpointed, EMA'd and saved with the final weights). The feature follows the base model's head:
    normalised after its dropout with `head="normalized"` (the released order), before it otherwise."""

    def __init__(self, base: nn.Module, text_embeddings: Tensor, *, projection: str, num_labeled: int,
                 normalize_classifier_input: bool, eval_head: str, eval_weights: tuple[float, float, float],
                 text_temperature: float, instance_temperature: float, generator: torch.Generator | None) -> None:
        super().__init__()
        self.base = base
        self.num_features = dim = int(base.num_features)
        self.normalize_classifier_input = normalize_classifier_input
        self.normalize_after_dropout = base.head_type == "normalized"
        self.eval_head = eval_head
        self.eval_weights = eval_weights
        self.tau_t, self.tau_i = text_temperature, instance_temperature
        emb = text_embeddings.float()
        self.text_proj: nn.Module | None = None
        if projection == "learned" and emb.shape[1] != dim:
            self.text_proj = nn.Linear(emb.shape[1], dim, bias=False)
        elif emb.shape[1] != dim:  # fixed random projection: keeps the prompts' geometry (Johnson-Lindenstrauss)
            emb = emb @ torch.randn(emb.shape[1], dim, generator=generator)
        self.register_buffer("text_embeddings", F.normalize(emb, dim=-1))
        self.register_buffer("bank", torch.zeros(num_labeled, dim))
        self.register_buffer("bank_labels", torch.full((num_labeled,), -1, dtype=torch.long))

    def anchors(self) -> Tensor:
        t = self.text_embeddings
        return F.normalize(self.text_proj(t), dim=-1) if self.text_proj is not None else t

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pooled = self.base.pool(self.base.forward_features(x))
        if self.normalize_after_dropout:  # released: Dropout -> L2-normalise -> Linear, one feature for all uses
            out = self.base.classify(pooled)
            return out.logits, out.features
        f = F.normalize(pooled, dim=-1)  # normalised before the head's dropout
        logits = self.base.get_classifier()(self.base.head_input(f if self.normalize_classifier_input else pooled))
        return logits, f

    def text_scores(self, f: Tensor) -> Tensor:
        return f.float() @ self.anchors().T / self.tau_t

    @torch.no_grad()
    def instance_scores(self, f: Tensor, num_classes: int) -> Tensor:
        sims = f.float() @ self.bank.T  # (n, bank)
        members = self.bank_labels[None, :] == torch.arange(num_classes, device=sims.device)[:, None]  # (C, bank)
        best = sims[:, None, :].masked_fill(~members[None], float("-inf")).amax(dim=2)  # -inf for an empty class
        return best.clamp(min=0) / self.tau_i

    @torch.no_grad()
    def update_bank(self, f: Tensor, labels: Tensor, positions: Tensor) -> None:
        self.bank[positions] = f.detach().float()
        self.bank_labels[positions] = labels

    def fused_probs(self, logits: Tensor, f: Tensor) -> Tensor:
        w = self.eval_weights
        parts = (logits.float().softmax(-1), self.text_scores(f).softmax(-1),
                 self.instance_scores(f, logits.shape[1]).softmax(-1))
        return sum(wk * p for wk, p in zip(w, parts)) / sum(w)

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | ModelOutput:
        logits, f = self.encode(x)
        if not self.training and self.eval_head == "fused":
            logits = self.fused_probs(logits, f).clamp_min(1e-12).log()
        return ModelOutput(logits, f, logits.new_zeros(())) if return_features else logits


@dataclass
class SITFERArgs(MethodArgs):
    threshold: Probability = arg(0.75, "fixed confidence threshold of the fused pseudo-labels (main.py)")
    lambda_s: NonNegative = arg(0.4, "weight of the labeled CE (main.py)")
    lambda_t: NonNegative = arg(0.4, "weight of the text co-supervision (main.py)")
    lambda_u: NonNegative = arg(0.2, "weight of the unlabeled CE (main.py)")
    warmup_frac: Probability = arg(0.1875, "no instance scores for the first 15 of 80 epochs (main.py)")
    fusion: Literal["logits", "probs"] = arg("logits", "'logits': the code's weighted logits; 'probs': the paper")
    fusion_weights: tuple[NonNegative, NonNegative, NonNegative] = arg(
        (0.3, 0.2, 0.5), "semantic, text, instance weights after the warm-up (main.py)")
    warmup_weights: tuple[NonNegative, NonNegative] = arg((0.6, 0.4), "semantic, text weights in the warm-up")
    text_temperature: Positive = arg(1.0, "the code has none (1)")
    instance_temperature: Positive = arg(1.0, "the code has none (1)")
    eval_head: Literal["fused", "classifier"] = arg("fused", "the code evaluates the fused probabilities")
    normalize_classifier_input: bool = arg(True, "the classifier sees the L2-normalised feature")
    text_encoder: Literal[TEXT_ENCODERS] = arg(
        "random", "'random_transformer' is the released code's never-trained encoder (FERBench's default: random)")
    text_encoder_path: str | None = arg(None, "a local model folder (clip, sentence-transformers)")
    text_projection: Literal["fixed", "learned"] = arg("fixed", "embeddings of another width: a seeded map, or learned")
    text_seed: TorchSeed | None = arg(None, "seed of the anchors; null: drawn from the run's generator")
    prompt: str = arg("This is a face image of {}", "the code's prompt")
    class_words: list[str] | None = arg(None, "null: the code's words, in FERBench's class order")
    class_prompts: list[str] | None = arg(None, "explicit prompts instead of `prompt` and `class_words`")


@register_method("sitfer")
class SITFER(Method):
    views = ("weak", "strong")
    Args = SITFERArgs
    reference = ("Ding et al. 2025; PatrickStarL/SIT-FER main.py (text anchors from a never-trained transformer: "
                 "text_encoder='random_transformer'; fusion 0.6/0.4 then 0.3/0.2/0.5 after epoch 15 of 80, tau 0.75, "
                 "0.4/0.4/0.2, fused eval head)")
    # the memory bank and instance term on from iteration 3, masks open at tiny settings
    check_settings = {"method_args.warmup_frac": 0.25, "method_args.threshold": 0.3}

    def __init__(self, num_classes: int, **arguments: Any) -> None:
        super().__init__(num_classes, **arguments)
        a = self.args
        encoder = a.text_encoder
        self.prompts = self._prompts(num_classes)
        self.text_vocab: list[str] = []
        if encoder == "random_transformer":  # the code's seven words, then any other class word
            words = dict.fromkeys(w.lower() for w in self._words(num_classes))
            self.text_vocab = list(RELEASED_VOCAB) + [w for w in words if w not in RELEASED_VOCAB]
            tokenize_vocabulary_words(self.prompts, self.text_vocab)  # a prompt without a vocabulary word fails now
        if encoder not in ("random", "random_transformer"):
            path = a.text_encoder_path
            if not path or not Path(path).is_dir():
                raise FERBenchError(f"method 'sitfer': text_encoder={encoder!r} loads from a local directory only; "
                                    f"text_encoder_path={path!r} is not a directory")
            if encoder == "sentence-transformers":
                _require("sentence_transformers", "sentence-transformers", "text_encoder='sentence-transformers'")
        self.num_labeled = 0
        self._info: dict[str, Any] = {}

    def _words(self, num_classes: int) -> list[str]:
        a = self.args
        return list(a.class_words) if a.class_words is not None else list(CLASS_WORDS[:num_classes])

    def _prompts(self, num_classes: int) -> list[str]:
        a = self.args
        if a.class_prompts is not None:
            prompts = [str(p) for p in a.class_prompts]
        else:
            words = self._words(num_classes)
            if len(words) != num_classes:
                raise FERBenchError(f"method 'sitfer': class_words has {len(words)} words for {num_classes} classes")
            if "{}" not in a.prompt:
                raise FERBenchError(f"method 'sitfer': prompt {a.prompt!r} needs a '{{}}' for the class word")
            prompts = [a.prompt.format(w) for w in words]
        if len(prompts) != num_classes:
            raise FERBenchError(f"method 'sitfer': class_prompts has {len(prompts)} prompts for {num_classes} classes")
        return prompts

    def setup(self, info: SetupInfo) -> None:
        self.num_labeled = info.num_labeled

    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def build_model(self, model: nn.Module) -> nn.Module:
        a = self.args
        dim = int(model.num_features)
        if model.head_type == "normalized" and not a.normalize_classifier_input:
            raise FERBenchError("method 'sitfer': normalize_classifier_input=false contradicts model.head="
                                "'normalized' (whose classifier sees the L2-normalised feature)")
        gen = torch.Generator().manual_seed(a.text_seed) if a.text_seed is not None else None
        extra: dict[str, Any] = {}
        if a.text_encoder == "random":
            emb = F.normalize(torch.randn(self.num_classes, dim, generator=gen), dim=-1)
        elif a.text_encoder == "random_transformer":
            # null text_seed: one draw from the run's generator, recorded so the anchors can be rebuilt
            seed = a.text_seed if a.text_seed is not None else int(torch.randint(0, 2**31 - 1, ()))
            emb = random_transformer_anchors(self.prompts, self.text_vocab, seed)
            extra = {"text_seed": seed, "text_vocabulary": self.text_vocab}
        else:
            try:
                emb = encode_prompts(a.text_encoder, a.text_encoder_path, self.prompts)
            except FERBenchError:
                raise
            except Exception as e:  # a broken or foreign model folder: say which and why, in one line
                raise FERBenchError(f"method 'sitfer': could not load {a.text_encoder} text encoder from "
                                    f"{a.text_encoder_path}: {type(e).__name__}: {e}") from e
        head = SITFERModel(model, emb, projection=a.text_projection, num_labeled=max(self.num_labeled, 1),
                           normalize_classifier_input=a.normalize_classifier_input, eval_head=a.eval_head,
                           eval_weights=a.fusion_weights, text_temperature=a.text_temperature,
                           instance_temperature=a.instance_temperature, generator=gen)
        projected = emb.shape[1] != dim
        self._info = {
            "text_encoder": a.text_encoder,
            "text_encoder_path": a.text_encoder_path,
            "text_dim": int(emb.shape[1]),
            "image_feature_dim": dim,
            "text_projection": (a.text_projection if projected else "none"),
            "prompts": self.prompts if a.text_encoder != "random" else None,
            "feature": ("L2-normalised after dropout (released head)" if head.normalize_after_dropout
                        else "L2-normalised before dropout"),
            **extra,
            "text_anchors_sha256": hashlib.sha256(head.text_embeddings.numpy().tobytes()).hexdigest()[:16],
        }
        return head

    def pseudo_distribution(self, head: SITFERModel, logits_u: Tensor, f_u: Tensor, with_instance: bool) -> Tensor:
        """p^ on the weak view (no gradient): the fused semantic, text and (after warm-up) instance scores."""
        a = self.args
        with torch.no_grad():
            scores = [logits_u.detach().float(), head.text_scores(f_u.detach())]
            weights = list(a.warmup_weights)
            if with_instance:
                scores.append(head.instance_scores(f_u.detach(), self.num_classes))
                weights = list(a.fusion_weights)
            if a.fusion == "logits":
                return sum(w * s for w, s in zip(weights, scores)).softmax(-1)
            return sum(w * s.softmax(-1) for w, s in zip(weights, scores)) / sum(weights)

    def consistency_loss(self, logits_s: Tensor, probs: Tensor) -> tuple[Tensor, Tensor]:
        """(L_u, mask): CE on the strong view against y^, averaged over the samples with max p^ > threshold."""
        max_p, pseudo = probs.max(dim=-1)
        mask = max_p > self.args.threshold
        ce = F.cross_entropy(logits_s.float(), pseudo, reduction="none")  # the mean over the masked-in samples,
        return (ce * mask).sum() / mask.sum().clamp(min=1), mask  # 0 with a graph when none: no host read

    def training_step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        a = self.args
        head = unwrap_model(model)
        x, y, pos = batch.labeled["weak"], batch.labeled["y"], batch.labeled["pos"]
        logits_x, logits_u, logits_s, f_x, f_u, _ = joint_forward(model, x, batch.unlabeled["weak"],
                                                                 batch.unlabeled["strong"], return_features=True)
        # every process's labeled rows, so every replica writes the same bank; before scoring, as the code
        head.update_bank(ctx.gather(f_x.detach().float()), ctx.gather(y), ctx.gather(pos))
        loss_s = F.cross_entropy(logits_x, y)
        loss_t = F.cross_entropy(head.text_scores(f_x), y)
        with_instance = ctx.step >= a.warmup_frac * ctx.total_steps
        probs = self.pseudo_distribution(head, logits_u, f_u, with_instance)
        loss_u, mask = self.consistency_loss(logits_s, probs)
        loss = a.lambda_s * loss_s + a.lambda_t * loss_t + a.lambda_u * loss_u
        return StepOutput(loss, {"loss_x": loss_s.detach(), "loss_t": loss_t.detach(), "loss_u": loss_u.detach(),
                                 "mask_rate": mask.float().mean().detach(), "instance_on": float(with_instance),
                                 "bank_filled": (head.bank_labels >= 0).float().mean().detach()})
