"""``kvbench-report DIR --html OUT/``: a self-contained static site from any directory of records.

Pages: ``index.html`` (the roll-up table, sortable, filterable, paged, and a Pareto figure per task),
``efficiency.html``, ``paper.html`` (with a paper CSV) and ``runs/<run_id>.html`` per record. The HTML comes from the
Jinja2 templates in ``kvbench/site/templates`` with autoescaping on, and the data travels as JSON in
``<script type="application/json">`` (Jinja's ``tojson`` escapes ``<``, ``>`` and ``&``), so no record string
becomes markup. Scripts and styles ship in the package: ``assets/site.js`` and Plotly's own bundled
``plotly.min.js`` (from the ``plotly`` package, loaded only by the pages with charts), the CSS inlined. Nothing is
fetched over the network and no server is needed: the pages open from ``file://``.

Unreadable record files (corrupt, partial JSON, another schema version) are listed on the overview with their
path and reason; a directory with none readable still gets a site that says so.
"""

from __future__ import annotations

import math
import shutil
from importlib import resources
from pathlib import Path

import jinja2
import pandas as pd

from kvbench.paper import display, paper_table, read_paper, task_legend, unmatched_warning
from kvbench.records_frame import load_records
from kvbench.report import ReportError, Rollup, roll_up
from kvbench.results import RecordError, read_record
from kvbench.site import efficiency
from kvbench.site.overview import overview, pareto_figures
from kvbench.site.run_page import run_page

NAV = [("index.html", "overview"), ("efficiency.html", "efficiency")]
PLOTLY_JS = "plotly.min.js"


def clean(value):
    """``value`` as strict JSON can hold it: NaN/inf as null, numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("kvbench.site", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.policies["json.dumps_kwargs"] = {"sort_keys": False, "ensure_ascii": False}
    return env


def plotly_js() -> Path:
    """The plotly.js bundle the ``plotly`` package ships (``package_data/plotly.min.js``)."""
    return Path(str(resources.files("plotly") / "package_data" / PLOTLY_JS))


def _copy_assets(out: Path) -> None:
    assets = out / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(plotly_js(), assets / PLOTLY_JS)
    shutil.copyfile(Path(str(resources.files("kvbench.site") / "static" / "site.js")), assets / "site.js")


class Site:
    """The site being written: the Jinja environment, the shared page context, and the output directory."""

    def __init__(self, out: Path, name: str, source, has_paper: bool) -> None:
        self.out, self.env = out, environment()
        css = (resources.files("kvbench.site") / "static" / "site.css").read_text(encoding="utf-8")
        nav = NAV + ([("paper.html", "paper")] if has_paper else [])
        self.common = {"css": css, "nav": nav, "site_name": name, "source": str(source)}

    def page(self, template: str, path: str, page: str, title: str, charts: bool = False, **context) -> Path:
        root = "../" * path.count("/")
        target = self.out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        html = self.env.get_template(template).render(
            **self.common, root=root, page=page, title=title, charts=charts, **context)
        target.write_text(html, encoding="utf-8")
        return target


def _rollup(root: Path) -> tuple[Rollup | None, list]:
    """The directory's roll-up, or None with the unreadable files where no record could be read."""
    try:
        return roll_up(root), []
    except ReportError:
        if not root.is_dir():
            raise
        skipped: list = []
        load_records(root, skipped)
        return None, skipped


def _listed(skipped: list) -> list[tuple[str, str]]:
    """``(path, reason)`` per unreadable file, the reason without the path it often repeats."""
    return [(str(path), str(reason).removeprefix(str(path)).lstrip(": ") or str(reason)) for path, reason in skipped]


def write_site(root: str | Path | Rollup, out: str | Path, name: str | None = None,
               paper: str | Path | None = None) -> Path:
    """Write the site for ``root`` (a directory of records, or its :class:`~kvbench.report.Rollup`) into ``out``;
    return the path of its ``index.html``. A bad paper CSV fails before anything is written."""
    rows = read_paper(paper) if paper is not None else None
    rollup, skipped = (root, []) if isinstance(root, Rollup) else _rollup(Path(root))
    source = rollup.root if rollup is not None else root
    out = Path(out)
    _copy_assets(out)
    site = Site(out, name or Path(source).resolve().name, source, rows is not None and rollup is not None)
    if rollup is None:
        return site.page("index.html.j2", "index.html", "overview", "overview", n_records=0, context="",
                         warning=None, skipped=_listed(skipped), verdict_tests=False,
                         overview={"columns": [], "rows": []}, pareto=[], figures=[])
    _write_runs(site, rollup.frame)
    pareto = pareto_figures(rollup)
    index = site.page("index.html.j2", "index.html", "overview", "overview", charts=bool(pareto),
                      n_records=len(rollup.frame), context=rollup.context, warning=rollup.warning,
                      skipped=_listed(rollup.skipped), overview=clean(overview(rollup)),
                      pareto=pareto, figures=clean(pareto), verdict_tests=any(c.endswith(":test") for c in rollup.table.columns))
    charts = efficiency.figures(rollup.frame)
    site.page("efficiency.html.j2", "efficiency.html", "efficiency", "efficiency", charts=bool(charts),
              figures=clean(charts), max_batch=efficiency.max_batch(rollup.frame), roofline=efficiency.roofline(rollup.frame))
    if rows is not None:
        side, matched = paper_table(rollup.table, rows)
        site.page("paper.html.j2", "paper.html", "paper", "paper", paper=str(paper), legend=task_legend(rows, rollup.table),
                  side=efficiency.as_rows(display(side)), figures=[],
                  verdict=None if matched else unmatched_warning(rows, rollup.table, paper, rollup.root))
    return index


def _write_runs(site: Site, frame: pd.DataFrame) -> None:
    for path in frame["path"]:
        try:
            record = read_record(path)
        except RecordError:  # changed on disk since the roll-up read it: its row stays, its page is not written
            continue
        site.page("run.html.j2", f"runs/{record.run_id}.html", "run", f"run {record.run_id}",
                  run=run_page(Path(path), record), figures=[])
