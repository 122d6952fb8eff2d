"""The atom browser: a dictionary as one static HTML page.

- :mod:`~itda_lens.tools.browse.usage`: how often and how strongly each atom is used on
  held-out text, and its top contexts there;
- :mod:`~itda_lens.tools.browse.page`: the self-contained, offline HTML page;
- :mod:`~itda_lens.tools.browse.cli`: ``itda-lens browse DIR``.
"""

from itda_lens.tools.browse.page import browser_data, render_html, write_browser
from itda_lens.tools.browse.usage import AtomUsage, Context, atom_usage

__all__ = ["AtomUsage", "Context", "atom_usage", "browser_data", "render_html", "write_browser"]
