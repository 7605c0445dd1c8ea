"""The SSL baselines' losses, masks, weights and state on small batches worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import InputLogits
from torch import nn

from bench.errors import FERBenchError
from bench.method import Batch, ModelOutput, SetupInfo, StepContext
from bench.registry import create_method

L = math.log


def _t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# --- FlexMatch -------------------------------------------------------------------------------------


def _flexmatch(warmup: bool, n_unlabeled: int = 10):
    fm = create_method("flexmatch", num_classes=3, args={"thresh_warmup": warmup})
    fm.setup(SetupInfo(num_classes=3, num_labeled=3, num_unlabeled=n_unlabeled, total_steps=10))
    return fm


FIRST = _t([[0.96, 0.02, 0.02], [0.97, 0.02, 0.01], [0.01, 0.97, 0.02]])


def test_flexmatch_warmup_counts_the_unused_bucket() -> None:
    fm = _flexmatch(warmup=True)
    mask = fm.mask(FIRST, torch.tensor([0, 1, 2]))
    assert mask.tolist() == [1.0, 1.0, 1.0]  # beta = 0 at first: every threshold is 0
    assert fm.selected_label.tolist() == [0, 0, 1] + [-1] * 7
    # sigma = (2, 1, 0), 7 unused: beta_c = sigma_c / max(2, 1, 0, 7)
    assert fm.classwise_acc.tolist() == pytest.approx([2 / 7, 1 / 7, 0.0])


def test_flexmatch_thresholds_without_warmup() -> None:
    fm = _flexmatch(warmup=False)
    fm.mask(FIRST, torch.tensor([0, 1, 2]))
    assert fm.classwise_acc.tolist() == pytest.approx([1.0, 0.5, 0.0])  # sigma_c / max_c sigma_c
    # Class thresholds tau * b / (2 - b): 0.95, 0.95 / 3, 0.
    second = _t([[0.90, 0.05, 0.05], [0.20, 0.50, 0.30], [0.10, 0.10, 0.80], [0.02, 0.02, 0.96]])
    mask = fm.mask(second, torch.tensor([3, 4, 5, 6]))
    assert mask.tolist() == [0.0, 1.0, 1.0, 1.0]
    assert fm.selected_label.tolist() == [0, 0, 1, -1, -1, -1, 2, -1, -1, -1]  # only 0.96 >= tau is recorded
    assert fm.classwise_acc.tolist() == pytest.approx([1.0, 0.5, 0.5])


# --- FreeMatch -------------------------------------------------------------------------------------

PROBS = _t([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])


def test_freematch_self_adaptive_thresholds_and_fairness() -> None:
    fm = create_method("freematch", num_classes=2, args={"ema_p": 0.5})
    mask = fm.mask(PROBS.float())
    # tau = .5*.5 + .5*mean(.9,.6,.8); p~ = .5*[.5,.5] + .5*[17/30, 13/30]; h = .5*[.5,.5] + .5*[2/3, 1/3]
    tau = 0.25 + 0.5 * (2.3 / 3)
    p_model = [0.25 + 0.5 * 1.7 / 3, 0.25 + 0.5 * 1.3 / 3]
    hist = [0.25 + 0.5 * 2 / 3, 0.25 + 0.5 * 1 / 3]
    assert fm.time_p.item() == pytest.approx(tau)
    assert fm.p_model.tolist() == pytest.approx(p_model)
    assert fm.label_hist.tolist() == pytest.approx(hist)
    # thresholds: class 0 -> tau; class 1 -> tau * p~1 / p~0 = 0.6333 * 0.875 = 0.5542
    assert mask.tolist() == [1.0, 0.0, 1.0]
    from methods.freematch import fairness_loss

    strong = torch.tensor([[L(3), 0.0], [5.0, 5.0], [0.0, L(4)]])  # masked-in rows: [.75, .25], [.2, .8]
    loss_f = fairness_loss(mask, strong, fm.p_model, fm.label_hist)
    target = [p_model[0] / hist[0], p_model[1] / hist[1]]
    target = [t / sum(target) for t in target]
    mean_s = [0.475, 0.525]  # hist_s = [.5, .5], so the histogram scaling cancels after normalising
    assert loss_f.item() == pytest.approx(target[0] * L(mean_s[0]) + target[1] * L(mean_s[1]), rel=1e-5)


# --- SoftMatch -------------------------------------------------------------------------------------


def test_softmatch_truncated_gaussian_weights() -> None:
    sm = create_method("softmatch", num_classes=2, args={"ema_p": 0.5})
    w = sm.weights(PROBS.float())
    p_model = [0.25 + 0.5 * 1.7 / 3, 0.25 + 0.5 * 1.3 / 3]
    aligned_max = []
    for row in PROBS.tolist():
        a = [row[0] * 0.5 / p_model[0], row[1] * 0.5 / p_model[1]]
        aligned_max.append(max(a) / sum(a))
    mean = sum(aligned_max) / 3
    var = sum((v - mean) ** 2 for v in aligned_max) / 2
    mu_t, var_t = 0.5 * 0.5 + 0.5 * mean, 0.5 * 1.0 + 0.5 * var
    assert sm.mu_t.item() == pytest.approx(mu_t, rel=1e-4) and sm.var_t.item() == pytest.approx(var_t, rel=1e-4)
    expected = [math.exp(-min(v - mu_t, 0) ** 2 / (2 * var_t / 4)) for v in aligned_max]
    assert w.tolist() == pytest.approx(expected, rel=1e-4)
    assert expected[0] == 1.0 and expected[2] == 1.0 and expected[1] < 1.0  # only the low one is down-weighted


@pytest.mark.parametrize("dist_init", ["uniform", "first_batch"])
def test_softmatch_p_model_start(dist_init: str) -> None:
    """p^_model after one and two batches: from 1/C (FERBench) or set by the first batch (USB's DistAlignEMAHook)."""
    sm = create_method("softmatch", num_classes=2, args={"ema_p": 0.5, "dist_init": dist_init})
    sm.weights(PROBS.float())  # batch mean (1.7/3, 1.3/3)
    first = [1.7 / 3, 1.3 / 3] if dist_init == "first_batch" else [0.25 + 0.5 * 1.7 / 3, 0.25 + 0.5 * 1.3 / 3]
    assert sm.p_model.tolist() == pytest.approx(first, rel=1e-6)
    sm.weights(torch.tensor([[0.5, 0.5], [0.1, 0.9]]))  # batch mean (0.3, 0.7)
    assert sm.p_model.tolist() == pytest.approx([0.5 * first[0] + 0.15, 0.5 * first[1] + 0.35], rel=1e-6)


def test_softmatch_first_batch_flag_is_checkpointed_and_old_checkpoints_load() -> None:
    sm = create_method("softmatch", num_classes=2, args={"ema_p": 0.5, "dist_init": "first_batch"})
    fresh = sm.state_dict()
    assert fresh["p_model_updated"].item() is False
    sm.weights(PROBS.float())
    state = sm.state_dict()
    assert state["p_model_updated"].item() is True
    resumed = create_method("softmatch", num_classes=2, args={"ema_p": 0.5, "dist_init": "first_batch"})
    resumed.load_state_dict(state)
    old = {k: v for k, v in state.items() if k != "p_model_updated"}  # a checkpoint from before the flag
    legacy = create_method("softmatch", num_classes=2, args={"ema_p": 0.5, "dist_init": "first_batch"})
    legacy.load_state_dict(old)
    batch = torch.tensor([[0.5, 0.5], [0.1, 0.9]])
    for m in (resumed, legacy):  # both continue the EMA instead of restarting from the batch
        m.weights(batch)
        assert m.p_model.tolist() == pytest.approx([0.5 * 1.7 / 3 + 0.15, 0.5 * 1.3 / 3 + 0.35], rel=1e-6)
    restart = create_method("softmatch", num_classes=2, args={"ema_p": 0.5, "dist_init": "first_batch"})
    restart.load_state_dict(fresh)  # saved before any update: the next batch still sets p^_model
    restart.weights(batch)
    assert restart.p_model.tolist() == pytest.approx([0.3, 0.7], rel=1e-6)
    with pytest.raises(FERBenchError, match="dist_init='ones'"):
        create_method("softmatch", num_classes=2, args={"dist_init": "ones"})


# --- MeanTeacher -----------------------------------------------------------------------------------


def test_meanteacher_ramped_consistency_with_student_gradient() -> None:
    mt = create_method("meanteacher", num_classes=2)
    assert mt.rampup(20, 100) == 0.5 and mt.rampup(60, 100) == 1.0
    x = torch.tensor([[L(3), 0.0]])  # CE(target 0) = ln(4/3)
    student_view = torch.tensor([[0.0, 0.0]], requires_grad=True)  # softmax [.5, .5]
    teacher_view = torch.tensor([[L(3), 0.0]])  # softmax [.75, .25]
    batch = Batch(labeled={"weak": x, "y": torch.tensor([0])},
                  unlabeled={"weak": teacher_view, "weak2": student_view, "idx": torch.tensor([0])})
    out = mt.training_step(InputLogits(), batch, StepContext(20, 100, 2, ema_model=InputLogits()))
    # MSE over classes: ((.5-.75)^2 + (.5-.25)^2) / 2 = 0.0625; weight 50 * 0.5
    assert out.loss.item() == pytest.approx(L(4 / 3) + 25 * 0.0625, rel=1e-6)
    out.loss.backward()
    assert student_view.grad is not None and student_view.grad.abs().sum() > 0


class _BNNet(nn.Module):
    """Linear -> BatchNorm -> ReLU -> Dropout -> Linear: a model whose output depends on BatchNorm's mode."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Dropout(p), nn.Linear(4, 2))

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor | ModelOutput:
        y = self.body(x)
        return ModelOutput(y, y, y.new_zeros(())) if return_features else y


def _bn_stats(model: nn.Module) -> list[torch.Tensor]:
    bn = model.body[1]
    return [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_frozen_batchnorm_stats_keeps_running_statistics_and_earlier_graphs() -> None:
    from bench.method import frozen_batchnorm_stats

    torch.manual_seed(0)
    net = _BNNet().train()
    x, u = torch.randn(6, 3), torch.randn(6, 3) + 2
    first = net(x).sum()  # saves the BatchNorm buffers for its backward
    after_x = _bn_stats(net)
    originals = [net.body[1].running_mean, net.body[1].running_var]
    with frozen_batchnorm_stats(net):
        second = net(u).sum()
    assert _same(_bn_stats(net), after_x) and net.body[1].running_mean is originals[0]
    assert net.body[1].running_var is originals[1]
    (first + second).backward()  # an in-place restore would break the first forward's backward
    assert net.body[0].weight.grad is not None
    ref = _BNNet().train()
    ref.load_state_dict(net.state_dict())
    with frozen_batchnorm_stats(ref):  # still normalises with the batch's statistics
        assert torch.allclose(ref(u), net(u))


def test_meanteacher_batch_teacher_is_usbs() -> None:
    """teacher_bn='batch': the teacher is the EMA model in train mode on the unlabeled batch (differs from eval
    mode), only the labeled forward moves the student's BatchNorm statistics, the EMA model's do not move, and
    the EMA model is back in eval mode."""
    import copy

    torch.manual_seed(0)
    student = _BNNet(p=0.5).train()
    with torch.no_grad():
        student.body[1].running_mean.fill_(0.3)
        student.body[1].running_var.fill_(2.0)
    ema = copy.deepcopy(student).eval()
    with torch.no_grad():
        for q in ema.parameters():
            q.add_(0.1)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    u1, u2 = torch.randn(4, 3) + 1, torch.randn(4, 3) - 1
    batch = Batch(labeled={"weak": x, "y": y}, unlabeled={"weak": u1, "weak2": u2, "idx": torch.arange(4)})
    student_before, ema_before = _bn_stats(student), _bn_stats(ema)

    # by hand, on copies, in USB's order (labeled, teacher, student) from one seed, so dropout draws the same masks
    ref_student, ref_teacher = copy.deepcopy(student), copy.deepcopy(ema).train()
    torch.manual_seed(1)
    with torch.no_grad():
        logits_x = ref_student(x)
        teacher = ref_teacher(u1)
        student_u = ref_student(u2)
    torch.manual_seed(1)
    with torch.no_grad():
        eval_teacher = copy.deepcopy(ema)(u1)
    assert not torch.allclose(teacher, eval_teacher, atol=1e-3)  # batch statistics and dropout matter here
    labeled_only = copy.deepcopy(student)
    with torch.no_grad():
        labeled_only(x)

    mt = create_method("meanteacher", num_classes=2, args={"teacher_bn": "batch"})
    torch.manual_seed(1)
    out = mt.training_step(student, batch, StepContext(20, 100, 2, ema_model=ema))
    expected = nn.functional.cross_entropy(logits_x, y) + 25 * nn.functional.mse_loss(
        student_u.softmax(-1), teacher.softmax(-1))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert _same(_bn_stats(ema), ema_before)  # (b) the EMA model's statistics did not move
    assert not _same(_bn_stats(student), student_before)  # the labeled forward moved the student's ...
    assert _same(_bn_stats(student), _bn_stats(labeled_only))  # ... and only it
    assert not ema.training and not any(m.training for m in ema.modules())  # (c) back in eval mode
    out.loss.backward()
    assert student.body[0].weight.grad is not None

    running = create_method("meanteacher", num_classes=2)  # the default: the EMA model in eval mode
    torch.manual_seed(1)
    out = running.training_step(copy.deepcopy(student), batch, StepContext(20, 100, 2, ema_model=ema))
    assert out.loss.item() != pytest.approx(expected.item(), rel=1e-3) and not ema.training


def test_meanteacher_batch_teacher_reads_nothing_on_the_host(monkeypatch) -> None:
    import copy

    torch.manual_seed(0)
    student = _BNNet(p=0.5).train()
    ema = copy.deepcopy(student).eval()
    batch = Batch(labeled={"weak": torch.randn(4, 3), "y": torch.tensor([0, 1, 0, 1])},
                  unlabeled={"weak": torch.randn(4, 3), "weak2": torch.randn(4, 3), "idx": torch.arange(4)})
    mt = create_method("meanteacher", num_classes=2, args={"teacher_bn": "batch"})
    reads: list[str] = []

    def trap(name: str):
        real = getattr(torch.Tensor, name)

        def read(t, *a, **k):
            reads.append(name)
            return real(t, *a, **k)
        return read

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, trap(name))
    mt.training_step(student, batch, StepContext(20, 100, 2, ema_model=ema))
    monkeypatch.undo()
    assert reads == []


# --- Ada-CM ----------------------------------------------------------------------------------------


def test_adacm_thresholds_from_correct_labeled_predictions() -> None:
    ac = create_method("adacm", num_classes=3)
    probs = torch.tensor([[0.96, 0.02, 0.02], [0.94, 0.03, 0.03],  # class 0, both correct: mean 0.95
                          [0.60, 0.30, 0.10],  # class 1, wrong
                          [0.05, 0.10, 0.85], [0.50, 0.10, 0.40]])  # class 2: one correct (0.85)
    labels = torch.tensor([0, 0, 1, 2, 2])
    ac.update_thresholds(probs, labels, epoch=5)
    f = 0.97 / (1 + math.exp(-5))
    assert ac.thresholds.tolist() == pytest.approx([max(0.8, f * 0.95), 0.8, max(0.8, f * 0.85)], rel=1e-6)
    ac.update_thresholds(probs, labels, epoch=1)  # 0.97 * sigmoid(1) * 0.95 < 0.8: the floor holds
    assert ac.thresholds.tolist() == pytest.approx([0.8, 0.8, 0.8])


def test_adacm_partition_and_losses() -> None:
    ac = create_method("adacm", num_classes=3, args={"temperature": 1.0})
    ac.thresholds = torch.tensor([0.9, 0.8, 0.8])
    # a: p~ = [.85, .075, .075] < T_0 = .9 (subset II); b: p~ = [.1, .85, .05] >= T_1 (subset I);
    # c: p~ = [.5, .3, .2] (subset II)
    w1 = torch.tensor([[L(.9), L(.05), L(.05)], [L(.1), L(.85), L(.05)], [L(.5), L(.3), L(.2)]])
    w2 = torch.tensor([[L(.8), L(.1), L(.1)], [L(.1), L(.85), L(.05)], [L(.5), L(.3), L(.2)]])
    strong = torch.zeros(3, 3)  # CE = ln 3 for any target
    f1 = torch.tensor([[1.0, 0.0], [0.3, 0.3], [0.0, 1.0]])
    f2 = torch.tensor([[0.6, 0.8], [0.1, 0.9], [0.8, 0.6]])
    loss_u, loss_s, mask = ac.losses(w1, w2, strong, f1, f2)
    assert mask.tolist() == [0.0, 1.0, 0.0]
    assert loss_u.item() == pytest.approx(L(3) / 3, rel=1e-6)
    # NT-Xent over [a1, c1, a2, c2] = [(1,0), (0,1), (.6,.8), (.8,.6)], tau = 1; each anchor's positive
    # is its other view, the denominators run over the three other vectors.
    z = [(1.0, 0.0), (0.0, 1.0), (0.6, 0.8), (0.8, 0.6)]
    dot = [[a[0] * b[0] + a[1] * b[1] for b in z] for a in z]
    pos = {0: 2, 1: 3, 2: 0, 3: 1}
    terms = [-(dot[i][pos[i]] - L(sum(math.exp(dot[i][k]) for k in range(4) if k != i))) for i in range(4)]
    assert loss_s.item() == pytest.approx(sum(terms) / 4, rel=1e-6)


def test_masked_nt_xent_equals_nt_xent_on_the_subset_and_is_zero_without_members() -> None:
    """Ada-CM's and LEAF's contrastive term over subset II, computed as a mask over the whole batch (no host read
    of the subset's size): the loss and gradients of NT-Xent on the subset alone."""
    from methods.adacm import nt_xent

    torch.manual_seed(0)
    z1, z2 = torch.randn(12, 8, requires_grad=True), torch.randn(12, 8, requires_grad=True)
    members = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 1], dtype=torch.bool)
    subset = nt_xent(z1[members], z2[members], 0.07)
    masked = nt_xent(z1, z2, 0.07, members=members)
    assert masked.item() == pytest.approx(subset.item(), rel=1e-6)
    for a, b in zip(torch.autograd.grad(subset, [z1, z2]), torch.autograd.grad(masked, [z1, z2]), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    none = nt_xent(z1, z2, 0.07, members=torch.zeros(12, dtype=torch.bool))
    assert none.item() == 0.0 and torch.autograd.grad(none, z1)[0].abs().max().item() == 0.0
