"""The static results site (issue 28): ``kvbench-report DIR --html OUT/`` and ``html=true`` on a sweep's roll-up.

Report side: reads records and the roll-up (:mod:`kvbench.report`), never models. :func:`write_site` is the entry
point (:mod:`kvbench.site.build`); the page data come from :mod:`~kvbench.site.overview`,
:mod:`~kvbench.site.efficiency`, :mod:`~kvbench.site.run_page` and :mod:`~kvbench.site.samples`; the templates and
the script are package data (``templates/``, ``static/``).
"""

from kvbench.site.build import write_site

__all__ = ["write_site"]
