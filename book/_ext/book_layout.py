"""A small Sphinx extension for the book's page layout: one stylesheet, ``static/book_layout.css``.

The book column is narrow (about 78 characters of code). Chapters keep their code and printed lines within
it, but some outputs are wider by nature: a pandas table with many columns, a long printed line. The
stylesheet makes every cell output, table and printed line scroll sideways inside its own box instead of
running past the column's edge, where the page cuts it off, and keeps pictures within the column. The
browser test (``tests/book/test_browser.py``) checks this on every chapter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.config import Config

STATIC = Path(__file__).resolve().parent / "static"
STYLESHEET = "book_layout.css"


def add_static_path(app: Sphinx, config: Config) -> None:
    # its own folder, beside book/_offline; Jupyter Book adds only the .js files of a top-level _static/
    config.html_static_path = [*config.html_static_path, str(STATIC)]


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("config-inited", add_static_path)
    app.add_css_file(STYLESHEET)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
