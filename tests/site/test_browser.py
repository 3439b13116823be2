"""The built site in a real browser (headless Chromium over CDP, :mod:`tests.site.chromium`): it loads with no
console error, the overview has one row per record, sorting by ratio reorders the rows, a Pareto point's tooltip
names its configuration, a run page shows the record's commit, and a script in a prediction stays text.

Run by ``make test-browser`` (which installs Debian's chromium where it can); skipped where no chromium is found."""

from __future__ import annotations

import json
import os

import pytest

from kvbench.site import write_site
from tests.site.chromium import Chromium, find_chromium, version
from tests.site.conftest import COMMIT, INJECTION

pytestmark = pytest.mark.browser
CHROMIUM = find_chromium()
if CHROMIUM is None:
    pytest.skip("no chromium on PATH: `make test-browser` installs Debian's package (apt-get install chromium)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("websocket", reason="websocket-client (the test extra) drives the browser")
    chromium = Chromium(CHROMIUM)
    print(f"browser: {version(CHROMIUM)}")
    yield chromium
    chromium.close()


@pytest.fixture
def site(records_dir, tmp_path):
    return write_site(records_dir, tmp_path / "site")


def _column(browser, key: str) -> list[str]:
    return browser.eval(f"""(() => {{
        const heads = [...document.querySelectorAll('#overview thead th')].map(th => th.dataset.column);
        const i = heads.indexOf({json.dumps(key)});
        return [...document.querySelectorAll('#overview tbody tr')].map(tr => tr.children[i].textContent);
    }})()""")


def test_overview_loads_without_errors_has_a_row_per_record_and_sorts_by_ratio(browser, site, tmp_path):
    seconds = browser.open(site.as_uri())
    browser.wait_for("document.body.dataset.charts === 'drawn'")
    print(f"overview loaded in {seconds:.2f} s")
    assert browser.errors == []
    browser.eval("""(() => { const s = document.querySelector('#overview .page-size');
                             s.value = '0'; s.dispatchEvent(new Event('change')); })()""")
    assert browser.eval("document.querySelectorAll('#overview tbody tr').length") == 13
    before = _column(browser, "kv_ratio")
    browser.eval("document.querySelector('#overview th[data-column=\"kv_ratio\"]').click()")
    after = _column(browser, "kv_ratio")
    assert after != before and sorted(after) == sorted(before)
    numbers = [float(v) for v in after if v]
    assert numbers == sorted(numbers) and after[-1] == ""  # ascending, the running record (no ratio) last
    browser.eval("document.querySelector('#overview th[data-column=\"kv_ratio\"]').click()")
    numbers = [float(v) for v in _column(browser, "kv_ratio") if v]
    assert numbers == sorted(numbers, reverse=True)
    browser.screenshot(os.environ.get("KVBENCH_SCREENSHOT", tmp_path / "overview.png"))


def test_a_pareto_points_tooltip_names_its_configuration(browser, site):
    browser.open(site.as_uri())
    browser.wait_for("document.body.dataset.charts === 'drawn'")
    text = browser.eval("""(() => {
        const plot = document.getElementById('pareto-0');
        const trace = plot.data.findIndex(t => t.name === 'h2o');
        const point = plot.data[trace].hovertext.findIndex(t => t.startsWith('h2o heavy_ratio=0.2'));
        Plotly.Fx.hover(plot, [{curveNumber: trace, pointNumber: point}]);
        const label = plot.querySelector('.hovertext');
        return label ? label.textContent : null;
    })()""")
    assert text is not None and "h2o heavy_ratio=0.2" in text
    assert browser.errors == []


def test_a_run_page_shows_the_commit_and_a_script_in_a_prediction_as_text(browser, site):
    browser.open(site.as_uri())
    href = browser.eval("""[...document.querySelectorAll('#overview tbody tr')]
        .find(tr => tr.children[1].textContent === 'heavy_ratio=0.1' && tr.children[2].textContent === 'tiny')
        .querySelector('a').href""")
    browser.open(href)
    assert browser.errors == []
    assert COMMIT in browser.eval("document.body.innerText")
    assert browser.eval("window.__kvbench_injected === undefined")
    cells = browser.eval("[...document.querySelectorAll('#samples tbody td')].map(td => td.textContent)")
    assert INJECTION in cells
    assert browser.eval("document.querySelectorAll('#samples tbody tr').length") == 25  # the first page of 30
    browser.eval("[...document.querySelectorAll('#samples .pager button')].pop().click()")
    assert browser.eval("document.querySelectorAll('#samples tbody tr').length") == 5
