"""Reference-recipe leaderboards: records grouped by recipe, published numbers (bench/results/reported.yaml) next to
the reproduced final and best-on-test accuracy with their gaps, and the reported file's validation."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from test_leaderboard import make_record, section
from test_leaderboard_exports import _tex_structure

from bench.cli import main
from bench.errors import FERBenchError
from bench.results.aggregate import build_tables, parse_run
from bench.results.leaderboard import render_leaderboards
from bench.results.reported import DEFAULT_PATH, load_reported

ADACM_PAPER = "Ada-CM, CVPR 2022"
SSFER_PAPER = "SSFER / FR-pretraining, arXiv 2410.17622"


def recipe_record(method, seed, acc, recipe=None, **kw):
    """make_record's record (best-on-test = acc + 0.01); `recipe` None: an old record with no config.recipe."""
    rec = make_record(method, seed, acc, **kw)
    if recipe is not None:
        rec["config"]["recipe"] = recipe
        rec["run_id"] = rec["run_id"].replace(f"{method}_", f"{method}_{recipe}_", 1)
    return rec


def write_records(records, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for rec in records:
        (folder / f"{rec['run_id']}.json").write_text(json.dumps(rec), encoding="utf-8")
    return folder


def reproduction(text):
    """The reproduction table under the first heading that has one -> {(method, budget): cells}."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("###") and "reproduction:" in ln)
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split(" | ")])
    assert rows[0] == ["Method", "Budget", "Reported", "Final", "Best-on-test", "Final − reported", "Best − reported"]
    return {(r[0], r[1]): r[2:] for r in rows[2:]}


def csv_rows(path: Path):
    with open(path, newline="", encoding="utf-8") as f:
        return {(r["method"], r["budget_label"]): r for r in csv.DictReader(f)}


ADACM = {0: 0.83, 1: 0.84, 2: 0.85}  # final mean 84.0, best-on-test (acc + 0.01) mean 85.0
FRPRETRAIN = {0: 0.80, 1: 0.82}  # final mean 81.0, best-on-test 82.0


def recipe_records():
    recs = [recipe_record("adacm", s, a, "adacm", dataset="rafdb", protocol="total", budget=4000)
            for s, a in ADACM.items()]
    recs += [recipe_record("supervised", s, 0.70, "adacm", dataset="rafdb", protocol="total", budget=4000)
             for s in (0, 1)]
    recs += [recipe_record("frpretrain", s, a, "ssfer", dataset="rafdb", budget=0.05) for s, a in FRPRETRAIN.items()]
    return recs


def test_recipe_leaderboard_shows_reported_final_best_and_gaps(tmp_path, capsys):
    # through the CLI, from record files, with the shipped reported file
    records = write_records(recipe_records(), tmp_path / "records")
    assert main(["leaderboard", str(records), "-o", str(tmp_path / "lb"), "--format", "md,tex,csv"]) == 0
    out = tmp_path / "lb"
    assert sorted(p.name for p in out.iterdir()) == [
        "rafdb_recipe-adacm.csv", "rafdb_recipe-adacm.md", "rafdb_recipe-adacm.png", "rafdb_recipe-adacm.tex",
        "rafdb_recipe-adacm_confusion_total_N4000.png",
        "rafdb_recipe-ssfer.csv", "rafdb_recipe-ssfer.md", "rafdb_recipe-ssfer.png", "rafdb_recipe-ssfer.tex",
        "rafdb_recipe-ssfer_confusion_fraction_5pct.png"]  # no harness records: no rafdb.md

    text = (out / "rafdb_recipe-adacm.md").read_text(encoding="utf-8")
    assert text.startswith("# Leaderboard: rafdb — reference recipe `adacm`\n")
    assert "**Protocol: reference recipe `adacm`**" in text and "## Recipe `adacm`, protocol `total`" in text
    rows = reproduction(text)
    # 84.0 - 84.42 = -0.42; 85.0 - 84.42 = +0.58 (t(0.975, 2) * 0.01 / sqrt 3 = 2.48 pt)
    assert rows[("adacm", "N=4000")] == ["84.42 (best) [1]", "84.0 ± 2.5 (n=3)", "85.0 (n=3)", "-0.4", "+0.6"]
    assert rows[("supervised", "N=4000")] == ["—", "70.0 ± 0.0 (n=2)", "71.0 (n=2)", "—", "—"]  # not published
    assert f"- [1] {ADACM_PAPER} — hangyu94/Ada-CM issue #16, quoting the paper" in text
    # the usual tables follow, named by recipe
    _, acc, _ = section(text, "recipe adacm — protocol total — top-1 accuracy")
    assert acc["adacm"] == ["**84.0 ± 2.5 (n=3)**"]

    c = csv_rows(out / "rafdb_recipe-adacm.csv")
    a = c[("adacm", "N=4000")]
    assert (a["recipe"], a["reported_accuracy"], a["reported_selection"], a["reported_paper"]) == \
        ("adacm", "84.4200", "best", ADACM_PAPER)
    assert (a["accuracy"], a["best_on_test_accuracy"]) == ("84.0000", "85.0000")
    assert (a["final_minus_reported"], a["best_minus_reported"]) == ("-0.4200", "0.5800")
    s = c[("supervised", "N=4000")]
    assert (s["reported_accuracy"], s["final_minus_reported"], s["best_minus_reported"]) == ("", "", "")

    # SSFER: 81.0 - 80.96 = +0.04, 82.0 - 80.96 = +1.04; the published 10% and 25% cells are not run yet
    rows = reproduction((out / "rafdb_recipe-ssfer.md").read_text(encoding="utf-8"))
    assert rows[("frpretrain", "5%")] == ["80.96 (final) [1]", "81.0 ± 12.7 (n=2)", "82.0 (n=2)", "+0.0", "+1.0"]
    assert rows[("frpretrain", "10%")] == ["85.07 (final) [1]", "—", "—", "—", "—"]
    assert rows[("frpretrain", "25%")] == ["88.23 (final) [1]", "—", "—", "—", "—"]
    c = csv_rows(out / "rafdb_recipe-ssfer.csv")
    assert (c[("frpretrain", "5%")]["final_minus_reported"], c[("frpretrain", "5%")]["best_minus_reported"]) == \
        ("0.0400", "1.0400")
    assert (c[("frpretrain", "10%")]["n"], c[("frpretrain", "10%")]["accuracy"],
            c[("frpretrain", "10%")]["reported_accuracy"]) == ("0", "", "85.0700")

    tex = (out / "rafdb_recipe-adacm.tex").read_text(encoding="utf-8")
    for columns, trows in _tex_structure(tex):
        assert trows and all(r.count(" & ") + 1 == columns for r in trows)
    assert re.search(r"\\label\{tab:rafdb-adacm-total-[0-9a-f]{6}-reported\}", tex)
    assert "84.42 (best)" in tex and "& -0.4 & +0.6" in tex


def test_harness_and_recipe_records_never_share_a_table(tmp_path):
    # the same method, dataset, budget and seeds under two protocols: mixed, they would even be duplicate seeds
    harness = [recipe_record("adacm", s, 0.60, dataset="rafdb", protocol="total", budget=4000) for s in (0, 1)]
    harness.append(recipe_record("adacm", 2, 0.60, "harness", dataset="rafdb", protocol="total", budget=4000))
    recipe = [recipe_record("adacm", s, a, "adacm", dataset="rafdb", protocol="total", budget=4000)
              for s, a in ADACM.items()]
    paths = render_leaderboards(harness + recipe, tmp_path, formats=("md", "csv"))
    assert [p.name for p in paths if p.suffix != ".png"] == ["rafdb.csv", "rafdb.md", "rafdb_recipe-adacm.csv",
                                                            "rafdb_recipe-adacm.md"]
    plain = (tmp_path / "rafdb.md").read_text(encoding="utf-8")
    _, rows, _ = section(plain, "top-1 accuracy")
    assert rows == {"adacm": ["60.0 ± 0.0 (n=3)"]}  # old records (no config.recipe) and "harness" together
    # (a lone method: not bold, nothing to be best of)
    assert "Reported" not in plain and "recipe" not in plain and "84.42" not in plain
    assert "reported_accuracy" not in (tmp_path / "rafdb.csv").read_text(encoding="utf-8")
    _, rows, _ = section((tmp_path / "rafdb_recipe-adacm.md").read_text(encoding="utf-8"), "top-1 accuracy")
    assert rows == {"adacm": ["84.0 ± 2.5 (n=3)"]}
    with pytest.raises(FERBenchError, match="recipes adacm, harness in one set of tables"):
        build_tables([parse_run(r, i) for i, r in enumerate(harness + recipe)], "supervised")


def test_harness_files_are_byte_identical_with_or_without_recipe_records(tmp_path):
    harness = [recipe_record(m, s, a, dataset="rafdb", protocol="total", budget=4000)
               for m, accs in {"supervised": [0.6, 0.62], "adacm": [0.7, 0.74]}.items() for s, a in enumerate(accs)]
    alone = render_leaderboards(harness, tmp_path / "alone", formats=("md", "tex", "csv"))
    mixed = render_leaderboards(harness + recipe_records(), tmp_path / "mixed", formats=("md", "tex", "csv"))
    assert [p.name for p in alone] == [p.name for p in mixed if not p.name.startswith("rafdb_recipe-")]
    assert all(p.read_bytes() == (tmp_path / "mixed" / p.name).read_bytes() for p in alone)


def test_an_unknown_cell_stays_empty(tmp_path):
    reported = tmp_path / "reported.yaml"
    reported.write_text(
        "entries:\n"
        "  - {paper: P, source: 'README', dataset: rafdb, budget_protocol: total, budget: 4000, method: adacm,\n"
        "     recipe: adacm, metric: accuracy, value: 80.0, selection: final}\n"
        # other recipe, dataset, protocol: none of them is this table's
        "  - {paper: Q, source: T2, dataset: rafdb, budget_protocol: total, budget: 2000, method: adacm,\n"
        "     recipe: leaf, metric: accuracy, value: 70.0, selection: final}\n"
        "  - {paper: Q, source: T2, dataset: ferplus, budget_protocol: total, budget: 2000, method: adacm,\n"
        "     recipe: adacm, metric: accuracy, value: 70.0, selection: final}\n"
        "  - {paper: Q, source: T2, dataset: rafdb, budget_protocol: per_class, budget: 2000, method: adacm,\n"
        "     recipe: adacm, metric: accuracy, value: 70.0, selection: final}\n", encoding="utf-8")
    recs = [recipe_record("adacm", s, a, "adacm", dataset="rafdb", protocol="total", budget=b)
            for b in (2000, 4000) for s, a in ADACM.items()]
    render_leaderboards(recs, tmp_path / "lb", formats=("md", "csv"), reported=reported)
    rows = reproduction((tmp_path / "lb" / "rafdb_recipe-adacm.md").read_text(encoding="utf-8"))
    assert rows == {("adacm", "N=2000"): ["—", "84.0 ± 2.5 (n=3)", "85.0 (n=3)", "—", "—"],
                    ("adacm", "N=4000"): ["80 (final) [1]", "84.0 ± 2.5 (n=3)", "85.0 (n=3)", "+4.0", "+5.0"]}
    c = csv_rows(tmp_path / "lb" / "rafdb_recipe-adacm.csv")
    assert [c[("adacm", "N=2000")][k] for k in ("reported_accuracy", "reported_selection", "final_minus_reported",
                                                 "best_minus_reported")] == ["", "", "", ""]
    assert c[("adacm", "N=4000")]["final_minus_reported"] == "4.0000"


GOOD = {"paper": "P", "source": "README", "dataset": "rafdb", "budget_protocol": "fraction", "budget": 0.05,
        "method": "frpretrain", "recipe": "ssfer", "metric": "accuracy", "value": 80.96, "selection": "final"}


@pytest.mark.parametrize("change,expected", [
    ({"value": 0.8096}, "field value is 0.8096; expected a percentage in (1, 100]"),
    ({"value": "80.96%"}, "field value is '80.96%'; expected a percentage"),
    ({"budget": 5}, "field budget is 5; expected a per-class fraction in (0, 1]"),
    ({"budget_protocol": "total", "budget": 40.5}, "field budget is 40.5; expected a whole number of labels"),
    ({"budget_protocol": "percent"}, "field budget_protocol is 'percent'; expected one of fraction, total, per_class"),
    ({"selection": "max"}, "field selection is 'max'; expected one of final, best"),
    ({"recipe": "harness"}, "field recipe is 'harness'; expected a reference recipe"),
    ({"metric": "f1"}, "field metric is 'f1'; expected one of accuracy"),
    ({"dataset": "RAF DB"}, "field dataset is 'RAF DB'; expected a name"),
    ({"paper": ""}, "field paper is ''; expected a non-empty string"),
    ({"selection": None}, "field selection is None"),
    ({"notes": "x"}, "unknown field notes"),
    ({"value": None, "source": None}, "field source is None"),
])
def test_a_malformed_reported_entry_gives_one_clear_error(tmp_path, change, expected):
    path = tmp_path / "reported.yaml"
    bad = {**GOOD, "budget": 0.1, **change}
    path.write_text(json.dumps({"entries": [GOOD, bad]}), encoding="utf-8")  # JSON is YAML
    with pytest.raises(FERBenchError) as e:
        load_reported(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: entry 2 (frpretrain ") and expected in msg and "\n" not in msg


def test_reported_file_level_errors_and_nothing_written(tmp_path, capsys):
    path = tmp_path / "reported.yaml"
    missing = {k: v for k, v in GOOD.items() if k != "selection"}
    cases = {
        json.dumps({"entries": [GOOD, missing]}): "entry 2 (frpretrain rafdb fraction 0.05): missing field selection",
        json.dumps({"entries": [GOOD, GOOD]}): "entry 2 (frpretrain rafdb fraction 0.05): the same cell as entry 1",
        json.dumps({"entries": [GOOD, "x"]}): "entry 2: is str; expected a mapping",
        json.dumps([GOOD]): "expected a mapping with a list under 'entries'",
        "entries:\n  - {paper: [\n": "line 3 not valid YAML",
    }
    for text, expected in cases.items():
        path.write_text(text, encoding="utf-8")
        with pytest.raises(FERBenchError, match=re.escape(f"{path}:") + ".*" + re.escape(expected)):
            load_reported(path)
    # rendering a recipe's records with it: the error comes before any file is written, and the CLI says one line
    records = write_records([recipe_record("adacm", 0, 0.8, "adacm", dataset="rafdb", protocol="total",
                                           budget=4000)], tmp_path / "records")
    with pytest.raises(FERBenchError, match="not valid YAML"):
        render_leaderboards([json.loads(p.read_text()) for p in records.iterdir()], tmp_path / "lb", reported=path)
    assert not (tmp_path / "lb").exists()
    capsys.readouterr()
    assert main(["leaderboard", str(records), "-o", str(tmp_path / "lb"), "--reported", str(path)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith(f"ferbench: error: {path}: line 3 not valid YAML")
    # harness records never need the file
    harness = [recipe_record("adacm", 0, 0.8, dataset="rafdb", protocol="total", budget=4000)]
    assert [p.name for p in render_leaderboards(harness, tmp_path / "h", reported=path)][0] == "rafdb.md"


def test_a_malformed_record_recipe_names_the_run_and_field(tmp_path):
    rec = recipe_record("adacm", 0, 0.8, 5)
    with pytest.raises(FERBenchError, match=re.escape(rec["run_id"]) + r": field config\.recipe is 5"):
        render_leaderboards([rec], tmp_path)


def test_the_shipped_reported_file_holds_the_published_numbers_in_ferbench_terms():
    from bench.bundles import recipe_names
    from bench.data.datasets import get_dataset
    from bench.registry import method_names

    entries = load_reported()
    assert load_reported(DEFAULT_PATH) == entries
    cells = {(e.dataset, e.budget_protocol, e.budget, e.method, e.recipe, e.selection): e.value for e in entries}
    ssfer = {("rafdb", 0.05): 80.96, ("rafdb", 0.10): 85.07, ("rafdb", 0.25): 88.23,
             ("ferplus", 0.05): 81.77, ("ferplus", 0.10): 83.95, ("ferplus", 0.25): 85.82,
             ("affectnet7", 0.01): 59.08, ("affectnet7", 0.05): 64.02, ("affectnet7", 0.10): 65.37,
             ("affectnet8", 0.01): 53.85, ("affectnet8", 0.05): 60.17, ("affectnet8", 0.10): 61.65}
    expected = {(d, "fraction", b, "frpretrain", "ssfer", "final"): v for (d, b), v in ssfer.items()}
    expected[("rafdb", "total", 4000.0, "adacm", "adacm", "best")] = 84.42
    assert cells == expected
    assert {e.dataset for e in entries} <= {get_dataset(d).key() for d in ("rafdb", "ferplus", "affectnet7",
                                                                             "affectnet8")}
    assert {e.method for e in entries} <= set(method_names())
    assert {e.recipe for e in entries} <= set(recipe_names())
