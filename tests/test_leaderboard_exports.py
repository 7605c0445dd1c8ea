"""Leaderboards from records with per-test-image predictions: intervals over seeds and test images for every metric
(resampling image groups when the predictions name them), paired Δ with Holm and the MDD, comparisons with the best,
per-class recall, mean confusion matrices, LaTeX and CSV exports, the figures; and real runs writing the predictions
their records reference."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_overrides
from test_leaderboard import make_record, section

from bench.cli import main
from bench.results.aggregate import build_tables, parse_run
from bench.results.leaderboard import render_leaderboards
from bench.results.record import read_predictions
from bench.results.uncertainty import crossed, crossed_summary, holm, holm_levels, metric_influence

N_TEST = 300
TARGETS = np.arange(N_TEST) % 3  # three classes, 100 images each
IDS_SHA = hashlib.sha256(b"the same test images").hexdigest()
SKILL = {"supervised": 0.55, "fixmatch": 0.75, "flexmatch": 0.73}  # P(correct) per method


def _predicted_record(method: str, seed: int, budget: float = 0.05, with_predictions: bool = True, groups=None):
    """A record whose metrics come from simulated predictions (hard images are hard for every method), as
    `bench.metrics` computes them: MCA the mean recall, macro-F1 the mean of 2 TP / (support + predicted)."""
    rng = np.random.default_rng(1000 * seed + len(method))
    hard = np.random.default_rng(99).random(N_TEST)  # the same image difficulty for every run
    correct = rng.random(N_TEST) * 0.6 + hard * 0.4 < SKILL[method] + 0.02 * seed
    preds = np.where(correct, TARGETS, (TARGETS + 1 + (rng.random(N_TEST) < 0.5)) % 3)
    cm = np.zeros((3, 3), dtype=int)
    np.add.at(cm, (TARGETS, preds), 1)
    recall = [float(cm[c, c] / cm[c].sum()) for c in range(3)]
    f1 = [float(2 * cm[c, c] / (cm[c].sum() + cm[:, c].sum())) for c in range(3)]
    rec = make_record(method, seed, float(correct.mean()), budget=budget)
    rec["class_names"] = ["Neutral", "Happy", "Sad"]
    rec["metrics"]["final"].update(per_class_recall=recall, confusion_matrix=cm.tolist(),
                                   mean_class_accuracy=float(np.mean(recall)), macro_f1=float(np.mean(f1)))
    rec["metrics"]["n_test"] = N_TEST
    if with_predictions:
        rec["predictions"] = {"file": "x", "sha256": "y", "n": N_TEST, "test_ids_sha256": IDS_SHA}
    rows = [TARGETS, preds] + ([groups] if groups is not None else [])
    return rec, np.stack(rows) if with_predictions else None


def _records(budgets=(0.05,), methods=tuple(SKILL), seeds=(0, 1, 2), missing=(), groups=None):
    recs, preds = [], {}
    for b in budgets:
        for m in methods:
            for s in seeds:
                rec, p = _predicted_record(m, s, b, (m, s) not in missing, groups)
                recs.append(rec)
                if p is not None:
                    preds[rec["run_id"]] = p
    return recs, preds


def _correct(recs, preds, method):
    return np.stack([preds[r["run_id"]][0] == preds[r["run_id"]][1] for r in sorted(recs, key=lambda r: r["seed"])
                     if r["method"] == method]).astype(float)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("lbx")
    recs, preds = _records()
    paths = render_leaderboards(recs, out, predictions=preds, formats=("md", "tex", "csv"))
    return out, paths, recs, preds


def _predictions(recs, preds, method):
    return np.stack([preds[r["run_id"]][1] for r in sorted(recs, key=lambda r: r["seed"]) if r["method"] == method])


def test_every_metric_carries_the_interval_over_seeds_and_test_images(rendered):
    out, paths, recs, preds = rendered
    assert [p.name for p in paths] == ["synthfer.csv", "synthfer.md", "synthfer.png", "synthfer.tex",
                                       "synthfer_confusion_fraction_5pct.png"]
    text = (out / "synthfer.md").read_text(encoding="utf-8")
    for key, label in (("accuracy", "top-1 accuracy"), ("mean_class_accuracy", "mean class accuracy"),
                       ("macro_f1", "macro-F1")):
        header, rows, _ = section(text, f"{label} (%), final checkpoint, mean ± 95% CI over seeds and test images "
                                        "(300 test images)")
        assert header == ["Method", "5%"]
        for m in SKILL:
            c = crossed(*metric_influence(key, TARGETS, _predictions(recs, preds, m)))
            cell = f"{round(c.mean * 100, 1):.1f} ± {round(c.ci95 * 100, 1):.1f} (n=3)"
            assert rows[m][0].strip("*").removesuffix(" †") == cell, (key, m)
    assert "‡" not in text  # every run kept its predictions
    # what the intervals cover is said under each table and at the top
    assert text.count("Each interval covers the expected value for a new seed on new test images from the population "
                      "these 300 test images sample.") == 3
    assert "Assumed: seeds are independent runs; test images are independent draws" in text
    # Δ paired over seeds and images, with raw and Holm-adjusted p-values over the 2 comparisons
    _, rows, _ = section(text, "Δ accuracy vs `supervised` (paired over shared seeds + test images")
    d = crossed_summary(_correct(recs, preds, "fixmatch") - _correct(recs, preds, "supervised"))
    assert rows["fixmatch"][0].startswith(f"+{round(d.mean * 100, 1):.1f} ± {round(d.ci95 * 100, 1):.1f} (n=3) ")
    assert rows["fixmatch"][0].endswith(f" MDD={round(d.mdd() * 100, 1):.1f}")
    assert "over the 2 comparisons of this table" in text


def test_comparisons_with_the_best_pair_every_entry_over_seeds_and_images(rendered):
    out, _, recs, preds = rendered
    text = (out / "synthfer.md").read_text(encoding="utf-8")
    _, rows, _ = section(text, "top-1 accuracy")
    acc = {m: _correct(recs, preds, m) for m in SKILL}
    ms = list(SKILL)
    pairs = [(a, b, crossed_summary(acc[a] - acc[b])) for i, a in enumerate(ms) for b in ms[i + 1:]]
    adjusted = holm([c.p_value for *_, c in pairs])
    below = {(b if c.mean > 0 else a) for (a, b, c), adj in zip(pairs, adjusted, strict=True) if adj < 0.05}
    best = max(ms, key=lambda m: acc[m].mean())
    assert best == "fixmatch" and rows["fixmatch"][0].startswith("**")
    for m in ms:
        if m != best:
            assert rows[m][0].endswith(" †") == (m not in below), (m, below)
    assert "supervised" in below and "flexmatch" not in below  # 20 points below; 2 points below, 3 seeds
    assert "Holm-adjusted over the 3 pairwise comparisons of this table" in text


def test_groups_of_images_are_resampled_when_the_predictions_name_them(tmp_path):
    groups = np.arange(N_TEST) // 5  # subjects of 5 images
    recs, preds = _records(groups=groups)
    render_leaderboards(recs, tmp_path, predictions=preds, formats=("md", "csv"))
    text = (tmp_path / "synthfer.md").read_text(encoding="utf-8")
    _, rows, _ = section(text, "top-1 accuracy")
    c = crossed_summary(_correct(recs, preds, "fixmatch"), groups)
    assert c.n_groups == 60 and c.grouped
    assert rows["fixmatch"][0] == f"**{round(c.mean * 100, 1):.1f} ± {round(c.ci95 * 100, 1):.1f} (n=3)**"
    assert "images are resampled in their 60 groups (subject or video)" in text
    with open(tmp_path / "synthfer.csv", newline="", encoding="utf-8") as f:
        assert {r["image_groups"] for r in csv.DictReader(f)} == {"60"}
    # a predictions array with the wrong shape is refused, naming the run
    bad = dict(preds)
    first = recs[0]["run_id"]
    bad[first] = np.zeros((4, N_TEST), dtype=int)
    from bench.errors import FERBenchError

    with pytest.raises(FERBenchError, match=f"run {first}: its predictions have shape"):
        render_leaderboards(recs, tmp_path / "bad", predictions=bad)
    assert not (tmp_path / "bad").exists()


def test_per_class_recall_and_mean_confusion_matrix(rendered):
    out, _, recs, preds = rendered
    text = (out / "synthfer.md").read_text(encoding="utf-8")
    header, rows, _ = section(text, "per-class recall (%) at 5%, mean over seeds")
    assert header == ["Method", "Neutral", "Happy", "Sad", "n"]
    mine = [r for r in recs if r["method"] == "fixmatch"]
    expect = np.mean([r["metrics"]["final"]["per_class_recall"] for r in mine], axis=0)
    assert rows["fixmatch"] == [f"{round(v * 100, 1):.1f}" for v in expect] + ["3"]
    cell = build_tables([parse_run(r, i, preds[r["run_id"]]) for i, r in enumerate(recs)],
                        "supervised")["synthfer"][0].cell("fixmatch", 0.05)
    mats = [np.asarray(r["metrics"]["final"]["confusion_matrix"], float) for r in mine]
    hand = sum(m / m.sum(axis=1, keepdims=True) for m in mats) / 3
    np.testing.assert_allclose(cell.confusion, hand)
    np.testing.assert_allclose(np.diag(cell.confusion), expect)  # recall = the diagonal, row-normalised
    assert "[5%](synthfer_confusion_fraction_5pct.png)" in text


def test_csv_round_trips_with_the_numbers_of_the_markdown(rendered):
    import pandas as pd

    out, _, _, _ = rendered
    text = (out / "synthfer.md").read_text(encoding="utf-8")
    _, acc, _ = section(text, "top-1 accuracy")
    _, delta, _ = section(text, "Δ accuracy")
    with open(out / "synthfer.csv", newline="", encoding="utf-8") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    frame = pd.read_csv(out / "synthfer.csv")
    assert list(frame["method"]) == ["supervised", "fixmatch", "flexmatch"] and (frame["n"] == 3).all()
    _, mca, _ = section(text, "mean class accuracy")
    for m, r in rows.items():
        shown = re.match(r"\**([\d.]+) ± ([\d.]+)", acc[m][0]).groups()
        assert (f"{float(r['accuracy']):.1f}", f"{float(r['accuracy_ci95_combined']):.1f}") == shown
        shown = re.match(r"\**([\d.]+) ± ([\d.]+)", mca[m][0]).groups()
        assert (f"{float(r['mean_class_accuracy']):.1f}", f"{float(r['mean_class_accuracy_ci95_combined']):.1f}") \
            == shown
        assert float(frame.loc[frame.method == m, "accuracy"].iloc[0]) == float(r["accuracy"])
        assert float(r["accuracy_ci95_seeds"]) > 0 and r["seeds"] == "0 1 2" and r["n_test"] == "300"
        assert r["image_groups"] == "" and r["macro_f1_ci95_combined"] != ""
        mark = "best" if acc[m][0].startswith("**") else "not distinguishable" if acc[m][0].endswith("†") else "below"
        assert r["vs_best"] == mark
    for m in ("fixmatch", "flexmatch"):
        r = rows[m]
        assert delta[m][0].startswith(f"+{float(r['delta']):.1f} ± {float(r['delta_ci95']):.1f} (n=3)")
        assert delta[m][0].endswith(f"MDD={float(r['delta_mdd80']):.1f}")
        assert r["delta_vs"] == "supervised" and r["delta_over"] == "seeds + test images"
        assert float(r["p_holm"]) >= float(r["p_value"])
        assert f"Holm={float(r['p_holm']):.3f}" in delta[m][0] or float(r["p_holm"]) < 0.001
        # the interval at Holm's level excludes 0 exactly when Holm's verdict is significant
        assert (float(r["delta_ci_holm"]) < abs(float(r["delta"]))) == (float(r["p_holm"]) < 0.05)
        assert float(r["delta_holm_level"]) in (0.025, 0.05) and float(r["delta_sd_seed"]) > 0
    assert rows["supervised"]["delta"] == "" and int(rows["fixmatch"]["best"]) == 1


def _tex_structure(tex: str) -> list[tuple[int, list[str]]]:
    """(columns declared, rows) of every tabular; asserts balanced braces and matched environments."""
    body = re.sub(r"\\[{}%&$#_]", "", tex)
    body = "\n".join(line.split("%", 1)[0] for line in body.splitlines())
    depth = 0
    for ch in body:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    envs = re.findall(r"\\(begin|end)\{(\w+)\}", body)
    stack = []
    for kind, name in envs:
        if kind == "begin":
            stack.append(name)
        else:
            assert stack.pop() == name
    assert not stack
    tables = []
    for spec, inner in re.findall(r"\\begin\{tabular\}\{([lc]+)\}(.*?)\\end\{tabular\}", body, re.S):
        rows = [ln for ln in inner.splitlines() if ln.strip().endswith(r"\\")]
        tables.append((len(spec), rows))
    return tables


@pytest.mark.subprocess
def test_latex_is_a_balanced_booktabs_tabular_with_bold_and_daggers(rendered, tmp_path):
    out, _, _, _ = rendered
    tex = (out / "synthfer.tex").read_text(encoding="utf-8")
    tables = _tex_structure(tex)
    assert len(tables) == 2  # accuracy, then Δ
    for columns, rows in tables:
        assert rows and all(row.count(" & ") + 1 == columns for row in rows)
    assert tables[0][0] == 2 and r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert tex.count(r"\textbf{") >= 1 and tex.isascii()
    labels = re.findall(r"\\label\{([^}]*)\}", tex)
    assert len(labels) == 2 and re.fullmatch(r"tab:synthfer-fraction-[0-9a-f]{6}", labels[0])
    assert labels[1] == labels[0] + "-delta"
    # another sweep's board of the same dataset and protocol (other runs) gets other labels: no clash in a paper
    recs, preds = _records(methods=("supervised", "fixmatch"))
    render_leaderboards(recs, tmp_path / "other", predictions=preds, formats=("tex",))
    other = re.findall(r"\\label\{([^}]*)\}", (tmp_path / "other" / "synthfer.tex").read_text(encoding="utf-8"))
    assert len(other) == 2 and not set(other) & set(labels)
    assert "minimum detectable difference" in tex and "not distinguishable from the best at 95" in tex
    assert "tied" not in tex
    if shutil.which("pdflatex"):  # CI has no TeX installation; where one is, the file must also compile
        doc = tmp_path / "doc.tex"
        shutil.copy(out / "synthfer.tex", tmp_path / "synthfer.tex")
        doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}"
                       "\\input{synthfer.tex}\\end{document}\n")
        res = subprocess.run(["pdflatex", "-interaction=nonstopmode", "doc.tex"], cwd=tmp_path, capture_output=True,
                             timeout=120)
        assert res.returncode == 0, res.stdout[-2000:]


def test_the_forest_plot_draws_the_tables_holm_adjusted_inference(monkeypatch, tmp_path):
    import bench.results.leaderboard as lb

    recs, preds = _records()
    seen = {}
    real = lb.plot_single_budget
    monkeypatch.setattr(lb, "plot_single_budget", lambda dataset, panels, path, *a, **k: seen.update(panels=panels)
                        or real(dataset, panels, path, *a, **k))
    render_leaderboards(recs, tmp_path, predictions=preds)
    (protocol, _, baseline, deltas, family), = seen["panels"]
    assert (protocol, baseline, family) == ("fraction", "supervised", 2)
    acc = {m: _correct(recs, preds, m) for m in SKILL}
    ests = {m: crossed_summary(acc[m] - acc["supervised"]) for m in ("fixmatch", "flexmatch")}
    ps = [ests[m].p_value for m in ests]
    for (m, e), adjusted, level in zip(ests.items(), holm(ps), holm_levels(ps), strict=True):
        mean, half = deltas[(m, 0.05)]
        assert mean == pytest.approx(e.mean) and half == pytest.approx(e.half_width(level))
        assert (abs(mean) > half) == (adjusted < 0.05)
        assert half >= e.ci95  # never narrower than the unadjusted interval


def test_same_records_give_byte_identical_files_in_every_format(rendered, tmp_path):
    out, paths, recs, preds = rendered
    again = render_leaderboards(list(reversed(recs)), tmp_path, predictions=preds, formats=("md", "tex", "csv"))
    assert [p.name for p in again] == [p.name for p in paths]
    assert all(p.read_bytes() == (out / p.name).read_bytes() for p in again)


def test_a_run_without_predictions_falls_back_to_the_seed_interval_and_says_so(tmp_path):
    recs, preds = _records(missing={("flexmatch", 1)})
    render_leaderboards(recs, tmp_path, predictions=preds, formats=("md", "tex"))
    text = (tmp_path / "synthfer.md").read_text(encoding="utf-8")
    for label in ("top-1 accuracy", "mean class accuracy", "macro-F1"):  # every metric falls back, and says so
        _, rows, _ = section(text, label)
        assert "‡" in rows["flexmatch"][0] and "‡" not in rows["fixmatch"][0]
    # the fallback's estimand differs from the other cells', and the legend says which is which
    assert text.count("‡: seed-only t-CI (a run of the cell has no per-image predictions, or they were made on other "
                      "test images): it covers the expected value for a new seed on these same 300 test images"
                      ", not on new test images.") == 3
    assert "falls back to the seed-only t-CI (‡)" in text
    assert r"$^\ddagger$" in (tmp_path / "synthfer.tex").read_text(encoding="utf-8")
    _, delta, _ = section(text, "Δ accuracy")
    assert "Δ accuracy vs `supervised` (paired over shared seeds + test images or seeds," in text
    assert "over seeds only (a side without per-image predictions), the expected value for a new seed on these " \
        "same 300 test images" in text
    assert delta["flexmatch"][0].startswith("+") and delta["fixmatch"][0].startswith("+")
    render_leaderboards(recs, tmp_path / "seeds", predictions=preds, interval="seeds")
    seeds = (tmp_path / "seeds" / "synthfer.md").read_text(encoding="utf-8")
    assert "mean ± 95% t-CI over seeds (300 test images)\n" in seeds and "‡" not in seeds


def test_predictions_that_are_not_the_runs_are_refused(tmp_path):
    from bench.errors import FERBenchError

    recs, preds = _records()
    first = recs[0]["run_id"]
    preds[first] = preds[first].copy()
    preds[first][1] = (preds[first][0] + 1) % 3  # every prediction wrong
    with pytest.raises(FERBenchError, match=f"run {first}: its predictions give accuracy 0.000000"):
        render_leaderboards(recs, tmp_path, predictions=preds)
    assert not list(tmp_path.iterdir())


def test_real_runs_write_predictions_and_the_cli_renders_all_formats(shared_cache: Path, tmp_path: Path,
                                                                     capsys) -> None:
    out = tmp_path / "out"
    for method in ("supervised", "fixmatch"):
        for seed in (0, 1):
            assert main(["run", "--quiet", *tiny_overrides(shared_cache, out, method=method, seed=seed,
                                                           **{"train.iterations": 4})]) == 0
    records = sorted((out / "records").glob("*.json"))
    assert len(records) == 4
    for path in records:
        rec = json.loads(path.read_text())
        ref = rec["predictions"]
        file = path.with_name(ref["file"])
        assert file.name.startswith(rec["run_id"]) and hashlib.sha256(file.read_bytes()).hexdigest() == ref["sha256"]
        array = read_predictions(path, rec)
        assert array.shape == (2, 140) == (2, ref["n"]) and rec["metrics"]["n_test"] == 140
        assert float((array[0] == array[1]).mean()) == pytest.approx(rec["metrics"]["final"]["accuracy"])
    capsys.readouterr()
    assert main(["leaderboard", str(out / "records"), "-o", str(tmp_path / "lb"), "--format", "md,tex,csv"]) == 0
    assert {p.name for p in (tmp_path / "lb").iterdir()} >= {"synthfer.md", "synthfer.tex", "synthfer.csv",
                                                             "synthfer.png"}
    text = (tmp_path / "lb" / "synthfer.md").read_text(encoding="utf-8")
    assert "mean ± 95% CI over seeds and test images" in text
    assert "per-image predictions kept by 4 of 4 runs" in text
    assert main(["leaderboard", str(out / "records"), "-o", str(tmp_path / "lb"), "--format", "md,pdf"]) == 2
    assert "leaderboard formats md,pdf: expected some of md, tex, csv" in capsys.readouterr().err
