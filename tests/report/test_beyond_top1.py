"""Issue 17 in reports and comparisons: top-5, ECE and NLL per group, reliability diagrams,
temperature scaling and post-hoc before / after; the page's layout fixes (tables that scroll
inside their card, small shares). The metrics come from tests/report/keys17.py (hand-made
numbers added to a tiny run's metrics.json) until the evaluation writes them."""

import base64
import io
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from keys17 import add_keys17, copy_run, strip_keys17
from PIL import Image

import tailtune
from tailtune.cli import app as cli
from tailtune.config import load_config
from tailtune.report import plots
from tailtune.report.html import html_table, write_report
from tailtune.report.record import beyond_top1

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from conftest import TINY_CLIP

    out = tmp_path_factory.mktemp("runs")
    tailtune.fit(load_config("lift", overrides=[*TINY_CLIP, "eval.report=false", f"output_dir={out}", "name=base"]))
    assert json.loads((out / "base" / "metrics.json").read_text())["test"]["top5"] is not None  # a new run has them
    copy_run(out / "base", out / "fresh")  # as the evaluation wrote it
    strip_keys17(out / "base")  # the base is a run written before the keys: the tests add hand-made ones
    return out / "base"


def _section(page: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S)
    assert m, f"section {sid} missing"
    return m.group(1)


def _images(part: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(b)))
            for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', part)]


def _cells(table_html: str, row_label: str) -> list[str]:
    row = re.search(rf"<tr><td>{re.escape(row_label)}</td>(.*?)</tr>", table_html)
    assert row, row_label
    return re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))


def test_beyond_top1_reads_the_agreed_keys_and_old_runs_have_none(base):
    old = json.loads((base / "metrics.json").read_text())["test"]
    assert set(beyond_top1(old, ["many", "medium", "few"]).values()) == {None}
    new = add_keys17(copy_run(base, base.parent / "keys"))["test"]
    row = beyond_top1(new, ["many", "medium", "few"])
    assert row["top5"] == 97.5 and row["ece"] == 6.25 and row["nll"] == pytest.approx(0.912)
    assert row["top5_many"] is None and row["ece_medium"] == 7.5 and row["nll_few"] == pytest.approx(1.4)


def test_report_shows_top5_ece_nll_per_group_and_the_reliability_diagram(base, tmp_path):
    run = copy_run(base, tmp_path / "new")
    m = add_keys17(run)
    page = write_report(run).read_text()
    results = _section(page, "results")
    assert '<th colspan="4" class="span">top-5 (%)</th>' in results
    assert '<th colspan="4" class="span">ECE (%)</th>' in results and '<th colspan="4" class="span">NLL (nats)</th>' in results
    beyond = results.split("Beyond top-1")[1]
    label = f"with TTE ({m['test']['tte']})"
    # top-5 overall, many (no test images), medium, few; ECE the same; NLL to 3 decimals
    assert _cells(beyond, label) == ["97.50", "–", "95.00", "91.00", "6.25", "–", "7.50", "10.50",
                                     "0.912", "–", "1.100", "1.400"]
    part = _section(page, "calibration")
    (img,) = _images(part)
    assert img.format == "PNG" and img.width > 4 * 250  # four panels: overall, many, medium, few
    assert Image.open(run / "report" / "reliability.png").size == img.size
    # neither post hoc nor temperature scaling recorded: no before / after tables
    assert "temperature scaling" not in part and "Post-hoc" not in part


def test_a_new_runs_own_metrics_fill_the_columns_and_the_diagram(base):
    run = base.parent / "fresh"
    test = json.loads((run / "metrics.json").read_text())["test"]
    results = _section(write_report(run).read_text(), "results")
    cells = _cells(results.split("Beyond top-1")[1], f"with TTE ({test['tte']})")
    assert cells[0] == f"{test['top5']:.2f}" and cells[4] == f"{test['ece']:.2f}" and cells[8] == f"{test['nll']:.3f}"
    assert (run / "report" / "reliability.png").is_file()


def test_report_of_an_old_run_has_no_new_columns_nor_diagram(base, tmp_path):
    run = copy_run(base, tmp_path / "old")
    page = re.sub(r"base64,[A-Za-z0-9+/=]+", "", write_report(run).read_text())  # text only
    assert "top-5" not in page and "ECE" not in page and '<section id="calibration">' not in page
    assert not (run / "report" / "reliability.png").exists()


def test_report_shows_temperature_scaling_and_posthoc_before_and_after(base, tmp_path):
    run = copy_run(base, tmp_path / "ph")
    m = add_keys17(run, posthoc=True, calibration=True)
    part = _section(write_report(run).read_text(), "calibration")
    assert _cells(part, "as trained (temperature 1)") == ["6.25", "0.912", "0.410"]
    assert _cells(part, "temperature scaling, T = 1.734 (fitted on val)") == ["2.05", "0.701", "0.388"]
    t = m["test"]
    before = [f"{t['overall']:.2f}", f"{t['balanced']:.2f}", "–", f"{t['medium']:.2f}", f"{t['few']:.2f}", "97.50",
              "6.25", "0.912"]
    assert _cells(part, "la, τ = 1 (chosen on val)") == ["before", *before]
    after = re.findall(r"<tr><td></td><td>after</td>(.*?)</tr>", part)
    assert len(after) == 2
    assert re.findall(r"<td[^>]*>(.*?)</td>", after[0]) == ["71.25", "70.50", "–", f"{t['medium']:.2f}", "68.00",
                                                            "98.00", "9.50", "1.250"]
    assert "<tr><td>taunorm, τ = 0.5 (given)</td><td>before</td>" in part


def _other_test_set(run: Path, dst: Path) -> Path:
    dst = copy_run(run, dst)
    cfg = yaml.safe_load((dst / "config.yaml").read_text())
    cfg["data"]["root"] = "/data/elsewhere"
    (dst / "config.yaml").write_text(yaml.safe_dump(cfg))
    return dst


def test_compare_gains_the_columns_bolds_the_best_and_keeps_old_runs(base, tmp_path):
    a = copy_run(base, tmp_path / "a")
    b = copy_run(base, tmp_path / "b")
    old = copy_run(base, tmp_path / "old")
    add_keys17(a)
    add_keys17(b, offset=3.0)  # worse: lower top-5, higher ECE and NLL
    out = tmp_path / "cmp"
    assert cli.main(["compare", str(a), str(b), str(old), "--out", str(out)]) == 0
    page = (out / "report.html").read_text()
    beyond = _section(page, "results").split("Beyond top-1")[1]
    # a is best everywhere: the highest top-5, the lowest ECE and NLL (lower is better there)
    assert _cells(beyond, "a") == [*(f"<b>{v}</b>" for v in ["97.50"]), "–", "<b>95.00</b>", "<b>91.00</b>",
                                   "<b>6.25</b>", "–", "<b>7.50</b>", "<b>10.50</b>", "<b>0.912</b>", "–",
                                   "<b>1.100</b>", "<b>1.400</b>"]
    assert _cells(beyond, "b") == ["94.50", "–", "92.00", "88.00", "9.25", "–", "10.50", "13.50", "1.212", "–",
                                   "1.400", "1.700"]
    assert _cells(beyond, "old") == ["–"] * 12
    summary = json.loads((out / "comparison.json").read_text())
    assert [r["top5"] for r in summary["runs"]] == [97.5, 94.5, None]
    assert [r["ece_few"] for r in summary["runs"]] == [10.5, 13.5, None]
    part = _section(page, "calibration")
    (img,) = _images(part)
    assert img.width > 1000 and "Left out (no reliability recorded" in part and "old" in part


def test_compare_of_old_runs_only_has_no_new_columns(base, tmp_path):
    out = tmp_path / "cmp"
    tailtune.compare_runs([copy_run(base, tmp_path / "a"), copy_run(base, tmp_path / "b")], out)
    page = (out / "report.html").read_text()
    assert "Beyond top-1" not in page and '<section id="calibration">' not in page
    assert json.loads((out / "comparison.json").read_text())["runs"][0]["top5"] is None


def test_compare_marks_no_best_of_the_new_columns_across_test_sets(base, tmp_path, capsys):
    a = copy_run(base, tmp_path / "a")
    add_keys17(a)
    b = _other_test_set(a, tmp_path / "b")
    add_keys17(b, offset=3.0)
    out = tmp_path / "cmp"
    capsys.readouterr()
    assert cli.main(["compare", str(a), str(b), "--out", str(out)]) == 0
    assert "different test sets" in capsys.readouterr().out
    results = _section((out / "report.html").read_text(), "results")
    assert "Beyond top-1" in results and "<b>" not in results
    # a third run on a's test set: the best of the two runs on that set is bold, b's values never
    c = copy_run(base, tmp_path / "c")
    add_keys17(c, offset=1.0)
    assert cli.main(["compare", str(a), str(b), str(c), "--out", str(tmp_path / "cmp3")]) == 0
    beyond = _section((tmp_path / "cmp3" / "report.html").read_text(), "results").split("Beyond top-1")[1]
    assert _cells(beyond, "a")[0] == "<b>97.50</b>" and _cells(beyond, "c")[0] == "96.50"
    assert "<b>" not in "".join(_cells(beyond, "b"))


def test_tables_scroll_inside_their_card(base, tmp_path):
    assert html_table(["a"], [[1]]).startswith('<div class="scroll"><table>')
    page = write_report(copy_run(base, tmp_path / "r")).read_text()
    assert ".scroll{overflow-x:auto" in page
    assert page.count('<div class="scroll"><table') == page.count("<table")


@pytest.mark.parametrize("value, text", [(0, "0%"), (0.04, "<0.1%"), (0.5, "0.5%"), (4.96, "5.0%"),
                                         (12.4, "12%"), (99.5, "99.5%"), (99.95, ">99.9%"), (100, "100%"),
                                         (None, "–")])
def test_small_shares_keep_a_decimal(value, text):
    assert plots.share(value) == text


def test_error_destinations_in_the_lead_keep_a_decimal(base, tmp_path):
    """200 errors on few-shot images, one of them to a many-shot class: 0.5%, not 0%."""
    from tailtune.report import html as report_html

    run = copy_run(base, tmp_path / "r")
    record = report_html.read_run(run)
    groups = record.groups
    few = int(np.flatnonzero(groups == 2)[0])
    medium = int(np.flatnonzero(groups == 1)[0])
    other_few = int(np.flatnonzero(groups == 2)[1])
    record.labels = np.full(200, few)
    record.preds = {record.metrics["test"]["tte"]: np.array([medium] + [other_few] * 199)}
    page = report_html.Page(tmp_path, "t", "s")
    report_html._confusions_section(page, record)
    lead = page.sections[0][2]
    assert "0% to many, 0.5% to medium, 99.5% to few" in lead


def test_reliability_diagrams_hand_made():
    curve = {"confidence": [None] * 10 + [0.7, 0.75, 0.85, 0.9, 0.97], "accuracy": [None] * 10 + [60, 70, 80, 88, 97],
             "count": [0] * 10 + [3, 4, 5, 6, 7]}
    empty = {"confidence": [None] * 15, "accuracy": [None] * 15, "count": [0] * 15}
    rel = {"bins": 15, "overall": curve, "many": empty, "medium": curve, "few": curve}
    conf, acc, count = plots._reliability_points(curve)
    assert conf[-1] == pytest.approx(97.0) and acc[-1] == 97 and count.sum() == 25 and np.isnan(conf[0])
    one = Image.open(io.BytesIO(plots.reliability_diagrams({"r": rel}, ["overall", "many", "medium", "few"],
                                                            {"r": {"overall": 3.2}})))
    two = Image.open(io.BytesIO(plots.reliability_diagrams({"r": rel, "s": rel}, ["overall", "many"])))
    assert one.format == two.format == "PNG" and one.width > 1000 and one.height < one.width / 2


_MEASURE = ('<script>document.body.setAttribute("data-fit", [document.documentElement.scrollWidth, '
            '...[...document.querySelectorAll("div.scroll")].map(d => d.scrollWidth + "/" + d.clientWidth)]'
            '.join(","))</script></body>')


def _widths(page: Path, width: int) -> tuple[int, list[tuple[int, int]]]:
    """The page's scroll width and each table wrapper's (scroll width, visible width) at ``width`` px."""
    probe = page.with_name("measure.html")
    probe.write_text(page.read_text().replace("</body>", _MEASURE))
    dom = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={width},1200",
                          "--dump-dom", probe.resolve().as_uri()], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    first, *tables = re.search(r'data-fit="([^"]*)"', dom).group(1).split(",")
    return int(first), [tuple(int(x) for x in t.split("/")) for t in tables]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_compare_table_fits_its_card_at_1400_px_and_scrolls_inside_it_when_narrower(base, tmp_path):
    a, b = copy_run(base, tmp_path / "a"), copy_run(base, tmp_path / "b")
    add_keys17(a)
    add_keys17(b, offset=3.0)
    page = tailtune.compare_runs([a, b], tmp_path / "cmp")
    body, tables = _widths(page, 1400)
    assert body <= 1400 and tables and all(full <= shown for full, shown in tables)
    body, tables = _widths(page, 1000)  # too narrow for the results table: it scrolls in its card, not the page
    assert body <= 1000 and tables[0][0] > tables[0][1]
