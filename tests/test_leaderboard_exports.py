"""Leaderboards from records with per-test-image predictions: intervals over seeds and test images, paired Δ with
Holm, per-class recall, mean confusion matrices, LaTeX and CSV exports, the single-budget plot; and real runs
writing the predictions their records reference."""

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
from bench.results.uncertainty import crossed_summary

N_TEST = 300
TARGETS = np.arange(N_TEST) % 3  # three classes, 100 images each
IDS_SHA = hashlib.sha256(b"the same test images").hexdigest()
SKILL = {"supervised": 0.55, "fixmatch": 0.75, "flexmatch": 0.73}  # P(correct) per method


def _predicted_record(method: str, seed: int, budget: float = 0.05, with_predictions: bool = True):
    """A record whose metrics come from simulated predictions (hard images are hard for every method)."""
    rng = np.random.default_rng(1000 * seed + len(method))
    hard = np.random.default_rng(99).random(N_TEST)  # the same image difficulty for every run
    correct = rng.random(N_TEST) * 0.6 + hard * 0.4 < SKILL[method] + 0.02 * seed
    preds = np.where(correct, TARGETS, (TARGETS + 1 + (rng.random(N_TEST) < 0.5)) % 3)
    cm = np.zeros((3, 3), dtype=int)
    np.add.at(cm, (TARGETS, preds), 1)
    recall = [float(cm[c, c] / cm[c].sum()) for c in range(3)]
    rec = make_record(method, seed, float(correct.mean()), budget=budget)
    rec["class_names"] = ["Neutral", "Happy", "Sad"]
    rec["metrics"]["final"].update(per_class_recall=recall, confusion_matrix=cm.tolist())
    if with_predictions:
        rec["predictions"] = {"file": "x", "sha256": "y", "n": N_TEST, "test_ids_sha256": IDS_SHA}
    return rec, np.stack([TARGETS, preds]) if with_predictions else None


def _records(budgets=(0.05,), methods=tuple(SKILL), seeds=(0, 1, 2), missing=()):
    recs, preds = [], {}
    for b in budgets:
        for m in methods:
            for s in seeds:
                rec, p = _predicted_record(m, s, b, (m, s) not in missing)
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


def test_accuracy_cells_carry_the_interval_over_seeds_and_test_images(rendered):
    out, paths, recs, preds = rendered
    assert [p.name for p in paths] == ["synthfer.csv", "synthfer.md", "synthfer.png", "synthfer.tex",
                                       "synthfer_confusion_fraction_5pct.png"]
    text = (out / "synthfer.md").read_text(encoding="utf-8")
    header, rows, _ = section(text, "top-1 accuracy (%), final checkpoint, mean ± 95% CI over seeds and test images")
    assert header == ["Method", "5%"]
    for m in SKILL:
        c = crossed_summary(_correct(recs, preds, m))
        cell = f"{round(c.mean * 100, 1):.1f} ± {round(c.ci95 * 100, 1):.1f} (n=3)"
        assert rows[m][0].strip("*").removesuffix(" †") == cell
    assert "‡" not in text  # every run kept its predictions
    # the other metrics keep the seed-only interval, and say so
    assert "mean class accuracy (%), final checkpoint, mean ± 95% t-CI over seeds" in text
    # Δ paired over seeds and images, with raw and Holm-adjusted p-values over the 2 comparisons
    _, rows, _ = section(text, "Δ accuracy vs `supervised` (paired over shared seeds + test images")
    d = crossed_summary(_correct(recs, preds, "fixmatch") - _correct(recs, preds, "supervised"))
    assert rows["fixmatch"][0].startswith(f"+{round(d.mean * 100, 1):.1f} ± {round(d.ci95 * 100, 1):.1f} (n=3) ")
    assert "over the 2 comparisons of this table" in text


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
    for m, r in rows.items():
        shown = re.match(r"\**([\d.]+) ± ([\d.]+)", acc[m][0]).groups()
        assert (f"{float(r['accuracy']):.1f}", f"{float(r['accuracy_ci95_combined']):.1f}") == shown
        assert float(frame.loc[frame.method == m, "accuracy"].iloc[0]) == float(r["accuracy"])
        assert float(r["accuracy_ci95_seeds"]) > 0 and r["seeds"] == "0 1 2"
    for m in ("fixmatch", "flexmatch"):
        r = rows[m]
        assert delta[m][0].startswith(f"+{float(r['delta']):.1f} ± {float(r['delta_ci95']):.1f} (n=3)")
        assert r["delta_vs"] == "supervised" and r["delta_over"] == "seeds + test images"
        assert float(r["p_holm"]) >= float(r["p_value"])
        assert f"Holm={float(r['p_holm']):.3f}" in delta[m][0] or float(r["p_holm"]) < 0.001
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


def test_latex_is_a_balanced_booktabs_tabular_with_bold_and_daggers(rendered, tmp_path):
    out, _, _, _ = rendered
    tex = (out / "synthfer.tex").read_text(encoding="utf-8")
    tables = _tex_structure(tex)
    assert len(tables) == 2  # accuracy, then Δ
    for columns, rows in tables:
        assert rows and all(row.count(" & ") + 1 == columns for row in rows)
    assert tables[0][0] == 2 and r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert tex.count(r"\textbf{") >= 1 and r"\label{tab:synthfer-fraction}" in tex
    if shutil.which("pdflatex"):  # CI has no TeX installation; where one is, the file must also compile
        doc = tmp_path / "doc.tex"
        shutil.copy(out / "synthfer.tex", tmp_path / "synthfer.tex")
        doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}"
                       "\\input{synthfer.tex}\\end{document}\n")
        res = subprocess.run(["pdflatex", "-interaction=nonstopmode", "doc.tex"], cwd=tmp_path, capture_output=True,
                             timeout=120)
        assert res.returncode == 0, res.stdout[-2000:]


def test_same_records_give_byte_identical_files_in_every_format(rendered, tmp_path):
    out, paths, recs, preds = rendered
    again = render_leaderboards(list(reversed(recs)), tmp_path, predictions=preds, formats=("md", "tex", "csv"))
    assert [p.name for p in again] == [p.name for p in paths]
    assert all(p.read_bytes() == (out / p.name).read_bytes() for p in again)


def test_a_run_without_predictions_falls_back_to_the_seed_interval_and_says_so(tmp_path):
    recs, preds = _records(missing={("flexmatch", 1)})
    render_leaderboards(recs, tmp_path, predictions=preds, formats=("md", "tex"))
    text = (tmp_path / "synthfer.md").read_text(encoding="utf-8")
    _, rows, _ = section(text, "top-1 accuracy")
    assert "‡" in rows["flexmatch"][0] and "‡" not in rows["fixmatch"][0]
    assert "‡: seed-only t-CI" in text
    assert r"$^\ddagger$" in (tmp_path / "synthfer.tex").read_text(encoding="utf-8")
    _, delta, _ = section(text, "Δ accuracy")
    assert "Δ accuracy vs `supervised` (paired over shared seeds + test images or seeds," in text
    assert delta["flexmatch"][0].startswith("+") and delta["fixmatch"][0].startswith("+")
    render_leaderboards(recs, tmp_path / "seeds", predictions=preds, interval="seeds")
    assert "mean ± 95% t-CI over seeds\n" in (tmp_path / "seeds" / "synthfer.md").read_text(encoding="utf-8")


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
