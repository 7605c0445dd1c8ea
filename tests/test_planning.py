"""Seed planning (`ferbench plan-seeds`): from given variance parts and from a pilot sweep's records, against the
paired t test's noncentral-t power; record files whose predictions carry image groups; bad input."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from test_leaderboard_exports import N_TEST, _correct, _records

from bench.cli import main
from bench.results.record import read_predictions, write_json_atomic, write_predictions
from bench.results.uncertainty import crossed_summary, seeds_needed


def _t_power(delta: float, sd: float, n: int, alpha: float = 0.05) -> float:
    t = stats.t.ppf(1 - alpha / 2, n - 1)
    nc = delta / (sd / math.sqrt(n))
    return stats.nct.sf(t, n - 1, nc) + stats.nct.sf(t, n - 1, -nc)


def _table(out: str) -> list[list[str]]:
    lines = out.splitlines()
    return [re.split(r"\s{2,}", ln.strip()) for ln in lines[:lines.index("")]]


def test_plan_from_a_given_seed_sd_is_the_fewest_seeds_of_the_paired_t_test(capsys) -> None:
    assert main(["plan-seeds", "--sd-seed", "3", "--delta", "1,3,5"]) == 0
    head, row = _table(capsys.readouterr().out)
    assert head[-3:] == ["seeds for 1", "seeds for 3", "seeds for 5"]
    for delta, cell in zip((0.01, 0.03, 0.05), row[-3:], strict=True):
        n = int(cell)
        assert _t_power(delta, 0.03, n) >= 0.8 > _t_power(delta, 0.03, n - 1), (delta, n)
    assert row[-3:] == ["73", "10", "6"]
    # a test-image SE of 0.5 points: 1 point is out of reach whatever the seeds (2 SE gives 52% power at most)
    assert main(["plan-seeds", "--sd-seed", "3", "--se-image", "0.5", "--delta", "1,3"]) == 0
    out = capsys.readouterr().out
    assert _table(out)[1][-2] == ">1000" and "too large for that difference" in out
    # Holm over 4 comparisons: plan at 0.05 / 4
    assert main(["plan-seeds", "--sd-seed", "3", "--delta", "3", "--comparisons", "4"]) == 0
    n = int(_table(capsys.readouterr().out)[1][-1])
    assert n == seeds_needed(0.03, 0.03**2, 0.0, 0.8, 0.0125)
    assert _t_power(0.03, 0.03, n, 0.0125) >= 0.8 > _t_power(0.03, 0.03, n - 1, 0.0125)


def _write(recs, preds, folder: Path, groups=None) -> Path:
    for rec in recs:
        record_file = folder / f"{rec['run_id']}.json"
        p = preds[rec["run_id"]]
        rec["predictions"] = write_predictions(record_file, list(p[1]), p[0], [f"img{i}" for i in range(N_TEST)],
                                               groups)
        write_json_atomic(record_file, rec)
    return folder


def test_plan_from_a_pilot_sweeps_records(tmp_path, capsys) -> None:
    recs, preds = _records()
    for rec in recs:
        rec["schema"] = "ferbench.record/1"
    folder = _write(recs, preds, tmp_path / "records")
    assert main(["plan-seeds", str(folder), "--delta", "2,5,10"]) == 0
    out = capsys.readouterr().out
    rows = {r[1]: r for r in _table(out)[1:]}
    assert set(rows) == {"fixmatch", "flexmatch"}
    for m, row in rows.items():
        d = crossed_summary(_correct(recs, preds, m) - _correct(recs, preds, "supervised"))
        sd, se = math.sqrt(3 * d.v_seed), math.sqrt(d.v_image)
        assert row[:8] == ["synthfer, protocol fraction", m, "5%", "3", f"{d.mean * 100:+.1f}", f"{sd * 100:.1f}",
                           f"{se * 100:.1f}", f"{d.mdd() * 100:.1f}"]
        upper = sd**2 * 2 / stats.chi2.ppf(0.2, 2)  # the seed variance at its 80% upper bound (2 df)
        for delta, cell in zip((0.02, 0.05, 0.1), row[8:], strict=True):
            point, conservative = re.fullmatch(r"(>?\d+) \((>?\d+)\)", cell).groups()
            want = seeds_needed(delta, sd**2, se**2, image_df=N_TEST - 1)
            assert point == (">1000" if want is None else str(want))
            want_upper = seeds_needed(delta, upper, se**2, image_df=N_TEST - 1)
            assert conservative == (">1000" if want_upper is None else str(want_upper))
            if want is not None and want_upper is not None:
                assert want_upper >= want
    assert "vs supervised" in out and "80% upper confidence bound" in out


def test_predictions_with_group_ids_round_trip_and_make_grouped_intervals(tmp_path, capsys) -> None:
    groups = np.arange(N_TEST) // 3
    recs, preds = _records(methods=("supervised", "fixmatch"))
    for rec in recs:
        rec["schema"] = "ferbench.record/1"
    folder = _write(recs, preds, tmp_path / "records", groups)
    rec = json.loads((folder / f"{recs[0]['run_id']}.json").read_text())
    array = read_predictions(folder / f"{recs[0]['run_id']}.json", rec)
    assert array.shape == (3, N_TEST) and (array[2] == groups).all() and (array[:2] == preds[recs[0]["run_id"]]).all()
    assert main(["leaderboard", str(folder), "-o", str(tmp_path / "lb")]) == 0
    text = (tmp_path / "lb" / "synthfer.md").read_text(encoding="utf-8")
    assert "images are resampled in their 100 groups (subject or video)" in text
    capsys.readouterr()
    with pytest.raises(Exception, match="group ids for"):
        write_predictions(tmp_path / "x.json", [0, 1], [0, 1], ["a", "b"], [0])


@pytest.mark.parametrize("argv, message", [
    (["--sd-seed", "3", "--delta", "0,1"], "--delta 0,1: expected positive differences"),
    (["--sd-seed", "3", "--delta", "one"], "--delta one: expected comma-separated percentage points"),
    (["--sd-seed", "3", "--power", "0.01"], "expected 0 < --alpha < --power < 1"),
    (["--sd-seed", "3", "--comparisons", "0"], "--comparisons 0: expected an integer in [1, inf)"),
    (["--sd-seed", "-1"], "--sd-seed -1: expected a number in (0, 100]"),
    ([], "give a records folder"),
    (["somewhere", "--sd-seed", "3"], "give a records folder"),
    (["/nonexistent/records"], "records folder not found"),
])
def test_bad_input_is_one_error_line(argv, message, capsys) -> None:
    assert main(["plan-seeds", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("ferbench: error: ") and message in captured.err
    assert captured.err.count("\n") == 1


def test_records_without_a_baseline_comparison_are_an_error(tmp_path, capsys) -> None:
    recs, preds = _records(methods=("fixmatch", "flexmatch"))
    for rec in recs:
        rec["schema"] = "ferbench.record/1"
    folder = _write(recs, preds, tmp_path / "records")
    assert main(["plan-seeds", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "no comparison with baseline 'supervised' over >= 2 shared seeds" in err
