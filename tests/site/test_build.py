"""The static site from a records directory: one overview row and one page per record, self-contained (no network),
record strings escaped, unreadable records listed with their path, and 2,000 records built in under a minute."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kvbench.cli import report_main
from kvbench.results import write_record
from kvbench.site import write_site
from tests.site.conftest import COMMIT, INJECTION, write_many


def embedded(page: Path, element_id: str):
    """The JSON a page carries in ``<script type="application/json" id=...>``."""
    match = re.search(rf'<script type="application/json" id="{element_id}">(.*?)</script>', page.read_text(), re.S)
    assert match, f"no {element_id} in {page}"
    return json.loads(match.group(1))


def test_overview_has_one_row_per_readable_record_each_linking_an_existing_run_page(records_dir, tmp_path):
    index = write_site(records_dir, tmp_path / "site")
    rows = embedded(index, "overview-data")["rows"]
    assert len(rows) == 13  # 10 sweep records, 2 efficiency records, 1 running record
    assert len({row["id"] for row in rows}) == 13
    for row in rows:
        assert (index.parent / row["href"]).is_file(), row["href"]
    running = next(row for row in rows if row["f"]["method"] == "tova")
    assert [cell[1] for cell in running["c"][:6]] == ["tova", "", "tiny", "quick", "query-agnostic", "running"]


def test_a_script_in_a_prediction_is_escaped_on_the_run_page(records_dir, tmp_path):
    index = write_site(records_dir, tmp_path / "site")
    h2o = next(r for r in embedded(index, "overview-data")["rows"] if r["c"][1][1] == "heavy_ratio=0.1"
               and r["f"]["model"] == "tiny")
    page = index.parent / h2o["href"]
    html = page.read_text()
    assert "<script>window.__kvbench_injected" not in html and "<img src=x" not in html
    assert "<b>bold?</b>" not in html
    samples = embedded(page, "samples-data")["rows"]
    assert len(samples) == 30 and samples[0]["c"][3][1] == INJECTION  # the text is kept, as text


def test_corrupt_and_truncated_records_are_listed_with_their_paths_and_the_rest_builds(records_dir, tmp_path):
    index = write_site(records_dir, tmp_path / "site")
    listed = re.search(r'<ul class="skipped">(.*?)</ul>', index.read_text(), re.S).group(1)
    assert str(records_dir / "corrupt" / "record.json") in listed
    assert str(records_dir / "truncated" / "record.json") in listed
    assert listed.count("<li>") == 2


@pytest.mark.parametrize("breaks", [
    lambda d: d["metrics"]["mc"].update(acc="n/a"),  # a metric that is not a number
    lambda d: d.update(metrics=[0.5]),  # a part of the wrong type
    lambda d: d.update(intervals={"mc": [0.1]}),  # an interval that is not a pair
    lambda d: d.update(kv=None, env="cpu"),
], ids=["metric_text", "metrics_list", "interval_single", "parts_null"])
def test_a_record_with_fields_of_the_wrong_shape_is_listed_with_its_path_and_the_rest_builds(breaks, tmp_path):
    from tests.site.conftest import make_record

    write_record(tmp_path / "runs" / "good" / "record.json", make_record(1, "full", {}, 1000))
    data = make_record(2, "h2o", {}, 200).to_dict()
    breaks(data)
    (tmp_path / "runs" / "bad").mkdir()
    (tmp_path / "runs" / "bad" / "record.json").write_text(json.dumps(data), encoding="utf-8")
    index = write_site(tmp_path / "runs", tmp_path / "site")
    listed = re.search(r'<ul class="skipped">(.*?)</ul>', index.read_text(), re.S).group(1)
    assert str(tmp_path / "runs" / "bad" / "record.json") in listed
    assert [row["f"]["method"] for row in embedded(index, "overview-data")["rows"]] == ["full"]


def test_a_directory_with_no_readable_record_gets_a_site_that_lists_the_files(tmp_path):
    (tmp_path / "runs" / "a").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "record.json").write_text('{"run_id": "abc", "schema_version": 99}')
    index = write_site(tmp_path / "runs", tmp_path / "site")
    assert "schema" in index.read_text() and str(tmp_path / "runs" / "a" / "record.json") in index.read_text()
    assert embedded(index, "overview-data")["rows"] == []


def test_run_page_shows_the_environment_scores_and_config_as_run(records_dir, tmp_path):
    index = write_site(records_dir, tmp_path / "site")
    first = embedded(index, "overview-data")["rows"][0]
    html = (index.parent / first["href"]).read_text()
    assert COMMIT in html and "f" * 64 in html and "2.13.0" in html
    assert "word_perplexity" in html and "1000 B" in html.replace(",", "")
    assert '&#34;seed&#34;: 0' in html or '&quot;seed&quot;: 0' in html


def test_every_script_and_style_is_a_shipped_file_and_nothing_is_fetched(records_dir, tmp_path):
    index = write_site(records_dir, tmp_path / "site")
    pages = [index, index.parent / "efficiency.html", *sorted((index.parent / "runs").glob("*.html"))]
    for page in pages:
        html = page.read_text()
        sources = re.findall(r'<(?:script|link)[^>]*(?:src|href)="([^"]*)"', html)
        assert sources, page
        for source in sources:
            assert not re.match(r"[a-z]+://|//", source), (page, source)
            assert source == "data:," or (page.parent / source).is_file(), (page, source)


def test_efficiency_page_plots_throughput_and_lists_max_batch_and_roofline(records_dir, tmp_path):
    index = write_site(records_dir, tmp_path / "site")
    page = index.parent / "efficiency.html"
    ids = [figure["id"] for figure in embedded(page, "figures")]
    assert ids == ["throughput", "decode"]
    html = page.read_text()
    assert "Max batch per method" in html and "roofline_ms_per_step" in html


def test_pareto_points_name_their_configuration_and_link_their_run(records_dir, tmp_path):
    index = write_site(records_dir, tmp_path / "site")
    figures = embedded(index, "figures")
    assert [f["layout"]["title"]["text"] for f in figures][:2] == ["mc/acc (higher is better)",
                                                                   "ppl/word_perplexity (lower is better)"]
    h2o = next(trace for trace in figures[0]["data"] if trace["name"] == "h2o")
    assert any(text.startswith("h2o heavy_ratio=0.1") for text in h2o["hovertext"])
    assert all((index.parent / href).is_file() for href in h2o["customdata"])


def test_kvbench_report_html_writes_the_site_and_no_markdown_unless_asked(records_dir, tmp_path, capsys):
    report_main([str(records_dir), "--html", str(tmp_path / "site"), "--reports-dir", str(tmp_path / "reports")])
    assert (tmp_path / "site" / "index.html").is_file() and not (tmp_path / "reports").exists()
    assert capsys.readouterr().out.strip().endswith("index.html")


def test_paper_page_sets_ours_beside_the_paper(records_dir, tmp_path):
    paper = tmp_path / "paper.csv"
    paper.write_text("model,method,params,task,metric,value,source\n"
                     "tiny,h2o,heavy_ratio=0.1,mc,acc,0.7,Table 9\n", encoding="utf-8")
    index = write_site(records_dir, tmp_path / "site", paper=paper)
    html = (index.parent / "paper.html").read_text()
    assert "Table 9" in html or "0.7" in html
    assert 'href="paper.html"' in index.read_text()


@pytest.mark.slow  # 9-30 s on two shared cores (load average 10), records written in 15 s more
def test_2000_records_give_2000_overview_rows_and_2000_run_pages(tmp_path):
    """The site scales to a large sweep; how fast is benchmarks/site_build.py's (the target: under a minute)."""
    write_many(tmp_path / "many", 2000)
    index = write_site(tmp_path / "many", tmp_path / "site")
    assert len(embedded(index, "overview-data")["rows"]) == 2000
    assert len(list((tmp_path / "site" / "runs").glob("*.html"))) == 2000
