"""Leaderboard rendering from hand-built run records: cells, marks, layout, determinism, errors."""

import copy
import hashlib
import json
import re

import pytest

from bench.errors import FERBenchError
from bench.results.leaderboard import budget_label, render_leaderboards
from bench.results.plots import plot_run_curves
from bench.results.record import read_record_file


def manifest_sha(protocol, budget, seed):
    return hashlib.sha256(f"{protocol}{budget:g}seed{seed}".encode()).hexdigest()


def make_record(method, seed, acc, *, dataset="synthfer", protocol="fraction", budget=0.02, **extra):
    """A complete ferbench.record/1 run record; MCA, macro-F1 and best-on-test derive from `acc`."""
    run_id = f"{method}_{dataset}_{protocol}{budget:g}_s{seed}_{'0123456789'}"
    rec = {
        "schema": "ferbench.record/1",
        "run_id": run_id,
        "method": method,
        "dataset": dataset,
        "protocol": protocol,
        "budget": budget,
        "seed": seed,
        "split_seed": seed,
        "class_names": ["Neutral", "Happy"],
        "split": {"manifest_sha256": manifest_sha(protocol, budget, seed),
                  "n_labeled": 10, "n_unlabeled": 90, "per_class_labeled": [5, 5]},
        "config": {"method": {"name": method}},
        "method_hparams": {},
        "backbone": "resnet18",
        "image_size": 64,
        "world_size": 1,
        "iterations": 200,
        "global_batch": {"labeled": 16, "unlabeled": 112},
        "metrics": {
            "final": {"accuracy": acc, "mean_class_accuracy": round(acc - 0.05, 4),
                      "macro_f1": round(acc - 0.10, 4), "per_class_recall": [acc, acc],
                      "confusion_matrix": [[1, 0], [0, 1]]},
            "last5_median_accuracy": acc,
            "best_accuracy": round(acc + 0.01, 4),
            "best_step": 150,
            "n_test": 100,
        },
        "history": [{"step": 100, "accuracy": acc - 0.1, "mean_class_accuracy": acc - 0.15, "macro_f1": 0.5},
                    {"step": 200, "accuracy": acc, "mean_class_accuracy": acc - 0.05, "macro_f1": 0.6}],
        "curves": [{"step": 10, "loss": 2.0, "loss_u": 0.5, "mask_rate": 0.1},
                   {"step": 20, "loss": 1.5, "loss_u": 0.4, "mask_rate": 0.3},
                   {"step": 30, "loss": 1.1, "loss_u": 0.35, "mask_rate": 0.5, "lr": 0.03}],
        "wall_time_s": 10.0 + seed,
        "images_per_s": 100.0,
        "versions": {"ferbench": "0.1.0", "torch": "2.5.1"},
        "git_commit": "abcdef1234567890abcdef1234567890abcdef12",
        "host": {"platform": "Linux-x86_64", "cpus": 2, "device": "cpu"},
        "created_utc": f"2025-01-0{seed + 1}T00:00:00Z",
    }
    rec.update(extra)
    return rec


# method -> budget -> per-seed accuracies (seeds 0, 1, 2, ...)
ACC = {
    "supervised": {0.02: [0.60, 0.62, 0.64], 0.1: [0.70, 0.72, 0.74]},
    "fixmatch": {0.02: [0.80, 0.82, 0.84], 0.1: [0.85, 0.86, 0.87]},
    "flexmatch": {0.02: [0.79, 0.83, 0.81], 0.1: [0.75, 0.76, 0.77]},
    "meanteacher": {0.02: [0.58, 0.66, 0.62], 0.1: [0.70]},
    "pseudolabel": {0.1: [0.83, 0.87]},
}
REFERENCE = [0.90, 0.91, 0.92]


def synthfer_records():
    recs = [make_record(m, seed, acc, budget=b)
            for m, by_budget in ACC.items() for b, accs in by_budget.items() for seed, acc in enumerate(accs)]
    recs += [make_record("fullysupervised", seed, acc, budget=1.0) for seed, acc in enumerate(REFERENCE)]
    return recs


def section(text, heading_fragment):
    """The markdown table under the first heading containing `heading_fragment` -> {method: cells}."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("###") and heading_fragment in ln)
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split(" | ")])
    return rows[0], {r[0]: r[1:] for r in rows[2:]}, [r[0] for r in rows[2:]]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("lb")
    paths = render_leaderboards(synthfer_records(), out)
    return out, paths, (out / "synthfer.md").read_text(encoding="utf-8")


def test_writes_markdown_and_png_per_dataset(rendered):
    out, paths, _ = rendered
    confusions = [out / "synthfer_confusion_fraction_10pct.png", out / "synthfer_confusion_fraction_2pct.png"]
    assert paths == [out / "synthfer.md", out / "synthfer.png", *confusions]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths[1:])


def test_accuracy_table_cells_bold_and_comparisons_with_the_best(rendered):
    text = rendered[2]
    header, rows, order = section(text, "top-1 accuracy (%), final checkpoint, mean ± 95% t-CI over seeds")
    assert "### synthfer — protocol fraction — top-1 accuracy (%), final checkpoint, mean ± 95% t-CI over seeds " \
        "(100 test images)" in text
    assert header == ["Method", "2%", "10%", "all labels"]
    assert order == ["supervised", "fixmatch", "flexmatch", "meanteacher", "pseudolabel", "fullysupervised"]
    # Every pair of entries of a column is compared (paired t over shared seeds: these records keep no per-image
    # predictions), and Holm runs over the 12 pairs with a p-value (meanteacher at 10% has one seed):
    #   2%:  sup-fix -0.20 every seed: p ~ 0;  sup-flex -0.19 ± (sd 0.02): t 16.45, p 0.0037;  sup-mt mean 0: p 1;
    #        fix-flex 0.01, -0.01, 0.03: t 0.87, p 0.48;  fix-mt 0.22, 0.16, 0.22: t 10, p 0.0098;
    #        flex-mt 0.21, 0.17, 0.19: t 16.45, p 0.0037
    #   10%: sup-fix t 24.2, p 0.0017;  sup-flex t 6.93, p 0.020;  sup-pseudo (2 seeds) t 14, p 0.045;
    #        fix-flex 0.10 every seed: p ~ 0;  fix-pseudo t 0.33, p 0.80;  flex-pseudo t 6.33, p 0.10
    # Holm, ascending: 0 x 12, 0 x 11, 0.0017 x 10 = 0.017, 0.0037 x 9 = 0.033, 0.0037 x 8 (0.033), then
    # 0.0098 x 7 = 0.069 >= 0.05 stops: below the best are supervised and meanteacher at 2% (fixmatch and
    # flexmatch above them), supervised and flexmatch at 10% (fixmatch above).
    assert rows["supervised"] == ["62.0 ± 5.0 (n=3)", "72.0 ± 5.0 (n=3)", "—"]
    # best per column; half-width 4.3027 * 0.02 / sqrt(3) = 4.97 pt and 4.3027 * 0.01 / sqrt(3) = 2.48 pt
    assert rows["fixmatch"] == ["**82.0 ± 5.0 (n=3)**", "**86.0 ± 2.5 (n=3)**", "—"]
    assert rows["flexmatch"] == ["81.0 ± 5.0 (n=3) †", "76.0 ± 2.5 (n=3)", "—"]
    # one seed at 10%: it cannot be compared, so it is not shown below the best
    assert rows["meanteacher"] == ["62.0 ± 9.9 (n=3)", "70.0 (n=1) †", "—"]
    # n=2: half-width 12.706 * 0.0283 / sqrt(2) = 25.4 pt; nothing is significantly above it after Holm
    assert rows["pseudolabel"] == ["—", "85.0 ± 25.4 (n=2) †", "—"]
    # the reference row appears once, only in its own column, whatever budget it was filed under
    assert rows["fullysupervised"] == ["—", "—", "91.0 ± 2.5 (n=3)"]
    assert "100%" not in text
    assert "†: not distinguishable from the best at 95%" in text and "Holm-adjusted over the 12 pairwise" in text
    assert "tied" not in text.lower()
    # the seed-only intervals say what they cover
    assert "Each interval covers the expected value for a new seed on these same 100 test images" in text


def test_mean_class_accuracy_and_macro_f1_tables(rendered):
    text = rendered[2]
    _, rows, _ = section(text, "mean class accuracy (%)")
    assert rows["fixmatch"] == ["**77.0 ± 5.0 (n=3)**", "**81.0 ± 2.5 (n=3)**", "—"]
    assert rows["fullysupervised"] == ["—", "—", "86.0 ± 2.5 (n=3)"]
    _, rows, _ = section(text, "macro-F1 (%)")
    assert rows["supervised"] == ["52.0 ± 5.0 (n=3)", "62.0 ± 5.0 (n=3)", "—"]


def test_delta_table_vs_baseline(rendered):
    text = rendered[2]
    heading = "Δ accuracy vs `supervised` (paired over shared seeds, percentage points)"
    header, rows, order = section(text, heading)
    assert header == ["Method", "2%", "10%"]
    assert order == ["fixmatch", "flexmatch", "meanteacher", "pseudolabel"]
    # Paired t over seeds (these records keep no per-image predictions), then Holm over the 6 comparisons with a
    # p-value (meanteacher at 10% has one seed). Raw p and Holm's step-down (sorted p times 6, 5, 4, 3, 2, 1):
    #   fixmatch 2%: 0.20 on every seed -> p ~ 1e-32 -> Holm ~ 6e-32
    #   fixmatch 10%: 0.15, 0.14, 0.13: t = 0.14 / (0.01 / sqrt 3) = 24.2, df 2 -> p 0.0017 -> x5 = 0.0085
    #   flexmatch 2%: 0.19, 0.21, 0.17: t = 0.19 / (0.02 / sqrt 3) = 16.5 -> p 0.0037 -> x4 = 0.0147
    #   flexmatch 10%: 0.05, 0.04, 0.03: t = 4/0.577 = 6.93 -> p 0.0202 -> x3 = 0.0606: significant raw, not after
    #   pseudolabel 10%: 0.13, 0.15 (n=2): t = 0.14 / (0.01414 / sqrt 2) = 14, df 1 -> p 0.0454 -> x2 = 0.0908
    #   meanteacher 2%: -0.02, 0.04, -0.02: mean 0 -> p 1 -> x1 = 1
    # MDD: the difference the paired t test detects with 80% power, k SE with k from the noncentral t: 5.6535 SE for
    # 3 seeds (df 2), 16.334 SE for 2 (df 1): fixmatch 10% 5.6535 * 0.01 / sqrt 3 = 3.3, flexmatch 2% 6.5,
    # meanteacher 2% 5.6535 * 0.03464 / sqrt 3 = 11.3, pseudolabel 16.334 * 0.01414 / sqrt 2 = 16.3
    assert rows["fixmatch"] == ["+20.0 ± 0.0 (n=3) p<0.001* Holm<0.001✓ MDD=0.0",
                                "+14.0 ± 2.5 (n=3) p=0.002* Holm=0.008✓ MDD=3.3"]
    assert rows["flexmatch"] == ["+19.0 ± 5.0 (n=3) p=0.004* Holm=0.015✓ MDD=6.5",
                                 "+4.0 ± 2.5 (n=3) p=0.020* Holm=0.061 MDD=3.3"]
    assert rows["meanteacher"] == ["+0.0 ± 8.6 (n=3) p=1.000 Holm=1.000 MDD=11.3", "+0.0 (n=1)"]
    assert rows["pseudolabel"] == ["—", "+14.0 ± 12.7 (n=2) p=0.045* Holm=0.091 MDD=16.3"]
    assert "adjusted by Holm–Bonferroni over the 6 comparisons of this table" in text
    assert "MDD: the minimum detectable difference" in text and "`ferbench plan-seeds`" in text


def test_mdd_factors_are_the_noncentral_t_ones():
    from scipy import optimize, stats

    from bench.results.uncertainty import minimum_detectable

    for n, factor in ((3, 5.6535), (2, 16.334)):
        t = stats.t.ppf(0.975, n - 1)
        exact = optimize.brentq(lambda d, t=t, df=n - 1: stats.nct.sf(t, df, d) + stats.nct.sf(t, df, -d) - 0.8, 1, 30)
        assert exact == pytest.approx(factor, abs=5e-3)
        assert minimum_detectable(1.0, 0.0, n) == pytest.approx(exact, rel=1e-7)


def test_best_on_test_table_is_flagged_and_separate(rendered):
    text = rendered[2]
    header, rows, _ = section(text, "best-on-test accuracy")
    assert header == ["Method", "2%", "10%", "all labels"]
    assert "optimistic, NOT used for ranking" in text
    assert "best-on-test is not used for ranking" in text.lower()
    assert rows["fixmatch"] == ["83.0 (n=3)", "87.0 (n=3)", "—"]
    assert rows["fullysupervised"] == ["—", "—", "92.0 (n=3)"]
    assert not any("**" in c for cells in rows.values() for c in cells)


def test_provenance_footer(rendered):
    text = rendered[2]
    assert "`abcdef123456`" in text
    shas = ", ".join(f"{s}: `{manifest_sha('fraction', 0.02, s)[:12]}`" for s in range(3))
    assert f"  - 2%: {shas}\n" in text
    ref_shas = ", ".join(f"{s}: `{manifest_sha('fraction', 1.0, s)[:12]}`" for s in range(3))
    assert f"  - all labels (fullysupervised): {ref_shas}\n" in text
    assert "- iterations: 200; global batch (labeled/unlabeled): 16/112; world size: 1" in text
    assert "- backbone: resnet18; image size: 64" in text
    assert "- host: Linux-x86_64, 2 CPUs, cpu; torch 2.5.1" in text
    # 27 records with wall time 10 + seed: 3 * 66 (three 2x3-seed methods) + 43 + 21 + 33 = 295 s
    assert "- wall time: 295.0 s total over 27 runs, 10.9 s mean per run" in text
    assert "warning" not in text
    assert not re.search(r"20\d\d-\d\d-\d\d", text)  # no dates, so regeneration is reproducible


def test_render_is_byte_identical_and_order_independent(tmp_path, rendered):
    out, _, text = rendered
    recs = synthfer_records()
    recs.reverse()
    paths = render_leaderboards(recs, tmp_path)
    assert (tmp_path / "synthfer.md").read_text(encoding="utf-8") == text
    for p in paths[1:]:
        assert p.read_bytes() == (out / p.name).read_bytes() and b"matplotlib" not in p.read_bytes()
    assert len(paths) == 4


def test_no_delta_table_without_baseline_records_and_other_protocols(tmp_path):
    recs = [make_record(m, s, a, dataset="rafdb", protocol="per_class", budget=25)
            for m, accs in {"fixmatch": [0.7, 0.72], "flexmatch": [0.69, 0.75]}.items()
            for s, a in enumerate(accs)]
    recs += [make_record("fixmatch", 0, 0.8, dataset="affectnet7", protocol="total", budget=1000)]
    paths = render_leaderboards(recs, tmp_path)
    assert [p.name for p in paths] == ["affectnet7.md", "affectnet7.png", "affectnet7_confusion_total_N1000.png",
                                       "rafdb.md", "rafdb.png", "rafdb_confusion_per_class_k25_class.png"]
    text = (tmp_path / "rafdb.md").read_text(encoding="utf-8")
    assert "Δ accuracy" not in text
    header, rows, _ = section(text, "top-1 accuracy")
    assert header == ["Method", "k=25/class"]  # no reference records: no "all labels" column
    # flexmatch 72.0 vs fixmatch 71.0, paired over 2 seeds: -0.01, 0.03 -> p 0.70: not distinguishable
    assert rows == {"fixmatch": ["71.0 ± 12.7 (n=2) †"], "flexmatch": ["**72.0 ± 38.1 (n=2)**"]}
    # a lone method is nobody's best: no bold, no mark
    header, rows, _ = section((tmp_path / "affectnet7.md").read_text(encoding="utf-8"), "top-1 accuracy")
    assert header == ["Method", "N=1000"] and rows == {"fixmatch": ["80.0 (n=1)"]}
    lone = (tmp_path / "affectnet7.md").read_text(encoding="utf-8")
    assert "No column has two entries to rank or compare." in lone and "**Bold**" not in lone
    assert "Holm-adjusted over the 1 pairwise comparisons" in text  # rafdb: fixmatch vs flexmatch


@pytest.mark.parametrize("protocol,budget,label", [
    ("fraction", 0.005, "0.5%"), ("fraction", 0.02, "2%"), ("fraction", 0.1, "10%"),
    ("fraction", 0.07, "7%"), ("per_class", 25, "k=25/class"), ("total", 1000, "N=1000"),
])
def test_budget_labels(protocol, budget, label):
    assert budget_label(protocol, budget) == label


def _drop(rec, dotted):
    *parents, last = dotted.split(".")
    cur = rec
    for p in parents:
        cur = cur[p]
    del cur[last]
    return rec


@pytest.mark.parametrize("field", ["dataset", "protocol", "budget", "seed", "method",
                                   "metrics.final.accuracy", "metrics.final.mean_class_accuracy"])
def test_missing_field_raises_naming_run_and_field(tmp_path, field):
    recs = synthfer_records()
    bad = _drop(copy.deepcopy(recs[4]), field)
    with pytest.raises(FERBenchError) as e:
        render_leaderboards(recs[:4] + [bad], tmp_path)
    msg = str(e.value)
    assert bad["run_id"] in msg and field in msg and "\n" not in msg
    assert not list(tmp_path.iterdir())  # nothing written for a bad input


@pytest.mark.parametrize("field,value", [("metrics.final.accuracy", 85.3), ("protocol", None),
                                         ("budget", "2%"), ("seed", 1.5), ("dataset", "../x")])
def test_malformed_field_raises(tmp_path, field, value):
    rec = make_record("fixmatch", 0, 0.8)
    *parents, last = field.split(".")
    cur = rec
    for p in parents:
        cur = cur[p]
    cur[last] = value
    with pytest.raises(FERBenchError, match=re.escape(rec["run_id"]) + ".*" + re.escape(field)):
        render_leaderboards([rec], tmp_path)


@pytest.mark.parametrize("field,value,expected", [
    ("metrics.final.accuracy", 85.3, "a fraction in [0, 1]"), ("budget", -1, "a positive number"),
    ("config.recipe", 5, "a recipe name ('harness' or a reference recipe such as adacm)")])
def test_one_record_check_serves_record_files_and_the_leaderboards(tmp_path, field, value, expected):
    """A value a record never holds is refused by the same check whether the record comes from a file (naming the
    file) or is handed to the leaderboards (naming the run)."""
    rec = make_record("fixmatch", 0, 0.8)
    *parents, last = field.split(".")
    cur = rec
    for p in parents:
        cur = cur[p]
    cur[last] = value
    path = tmp_path / "record.json"
    path.write_text(json.dumps(rec), encoding="utf-8")
    with pytest.raises(FERBenchError, match=re.escape(f"{path}: not a valid run record: {field} is {value!r}; "
                                                      f"expected {expected}")):
        read_record_file(path)
    with pytest.raises(FERBenchError, match=re.escape(f"run {rec['run_id']}: field {field} is {value!r}; "
                                                      f"expected {expected}")):
        render_leaderboards([rec], tmp_path / "lb")


def test_duplicate_seed_in_a_cell_raises(tmp_path):
    a = make_record("fixmatch", 0, 0.8)
    b = make_record("fixmatch", 0, 0.7, run_id="fixmatch_other_config")
    with pytest.raises(FERBenchError, match="seed 0"):
        render_leaderboards([a, b], tmp_path)
    # the reference ignores the budget: one fullysupervised run per seed and dataset
    r1 = make_record("fullysupervised", 1, 0.9, budget=1.0)
    r2 = make_record("fullysupervised", 1, 0.9, protocol="per_class", budget=25)
    with pytest.raises(FERBenchError, match="fullysupervised.*seed 1"):
        render_leaderboards([r1, r2], tmp_path)


def test_split_manifest_mismatch_is_flagged(tmp_path):
    a = make_record("fixmatch", 0, 0.8)
    b = make_record("supervised", 0, 0.7)
    b["split"]["manifest_sha256"] = "f" * 64
    render_leaderboards([a, b], tmp_path)
    text = (tmp_path / "synthfer.md").read_text(encoding="utf-8")
    assert f"  - 2%: 0: `{manifest_sha('fraction', 0.02, 0)[:12]}/ffffffffffff`" in text
    assert "**warning**: runs with the same budget and seed used different split manifests" in text


def test_plot_run_curves_is_deterministic(tmp_path):
    rec = make_record("fixmatch", 0, 0.8)
    p1 = plot_run_curves(rec, tmp_path / "a.png")
    p2 = plot_run_curves(copy.deepcopy(rec), tmp_path / "b.png")
    assert p1 == tmp_path / "a.png"
    data = p1.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data == p2.read_bytes()
    no_rate = make_record("supervised", 0, 0.6, curves=[{"step": 10, "loss": 1.0}, {"step": 20, "loss": 0.5}])
    assert plot_run_curves(no_rate, tmp_path / "c.png").stat().st_size > 0
    with pytest.raises(FERBenchError, match="run_id"):
        plot_run_curves({"curves": []}, tmp_path / "d.png")
