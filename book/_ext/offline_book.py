"""A small Sphinx extension that keeps the built book free of CDN requests.

Three jobs, all about reading the book offline:

1. At start-up, check that the widget and MathJax scripts named in ``nb_ipywidgets_js`` and
   ``mathjax_path`` exist in ``html_static_path`` (``book/_tools/fetch_offline_assets.py`` puts them there);
   stop with a clear message when they do not.
2. Drop sphinx-thebe's two scripts from every page. Jupyter Book always loads sphinx-thebe, which writes
   a CDN address (unpkg) into each page even though this book has no Thebe button.
3. After the build, scan every HTML page for external URLs and warn for each one found (``-W`` makes that
   an error), so that nothing new that reaches outside (a CDN script, a web font, a stylesheet such as
   the FontAwesome one matplotlib's animations link) can slip in unnoticed. The only addresses a page may
   hold are links a reader follows and that load nothing by themselves: the repository (its button, the
   install cell's ``git+`` address), Colab's launch links, and DOI links in the bibliography
   (:func:`allowed_prefixes`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util import logging

logger = logging.getLogger(__name__)

#: Any absolute http(s) address in a page's text (attributes, scripts, styles and prose alike).
URL_PATTERN = re.compile(r"https?://[^\"'\s<>)\\]+")
#: Bibliography links: a DOI resolver, followed by a reader, never fetched by the page.
DOI_PREFIX = "https://doi.org/"


def _static_file(app: Sphinx, rel: str) -> Path | None:
    for base in app.config.html_static_path:
        candidate = Path(app.confdir, base, rel)
        if candidate.is_file():
            return candidate
    return None


def check_assets(app: Sphinx) -> None:
    if app.builder.format != "html":
        return
    wanted = [str(k) for k in (getattr(app.config, "nb_ipywidgets_js", None) or {})]
    if app.config.mathjax_path:
        wanted.append(str(app.config.mathjax_path))
    missing = [w for w in wanted if "://" in w or _static_file(app, w) is None]
    if missing:
        raise ExtensionError(
            f"offline book: {missing} are not files in html_static_path {app.config.html_static_path}. "
            "Run `python book/_tools/fetch_offline_assets.py` (make book does) to fetch them."
        )


def drop_thebe(app: Sphinx, pagename: str, templatename: str, context: dict[str, Any], doctree: Any) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    kept = []
    for js in scripts:
        filename = str(js)
        body = getattr(js, "attributes", {}).get("body", "") if hasattr(js, "attributes") else ""
        if "sphinx-thebe" in filename or "THEBE_JS_URL" in (body or ""):
            continue
        kept.append(js)
    context["script_files"] = kept


def allowed_prefixes(app: Sphinx) -> tuple[str, ...]:
    """The repository and Colab addresses from the book's configuration (``_config.yml``), and DOI links."""
    options = app.config.html_theme_options or {}
    repository = str(options.get("repository_url") or "").rstrip("/")
    colab = str((options.get("launch_buttons") or {}).get("colab_url") or "").rstrip("/")
    return (*(p for p in (repository, colab) if p), DOI_PREFIX)


def external_urls(text: str, allowed: tuple[str, ...]) -> list[str]:
    """The distinct external addresses in ``text`` that do not start with one of ``allowed``, sorted.

    >>> page = '<a href="https://doi.org/10.1/x">x</a> <link href="https://cdn.example/f.css">'
    >>> external_urls(page, ("https://doi.org/",))
    ['https://cdn.example/f.css']
    """
    return sorted({url for url in URL_PATTERN.findall(text) if not url.startswith(allowed)})


def scan_pages(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    outdir = Path(app.outdir)
    allowed = allowed_prefixes(app)
    for page in sorted(outdir.rglob("*.html")):
        for url in external_urls(page.read_text(encoding="utf-8", errors="replace"), allowed):
            logger.warning("offline book: %s refers to the external address %s (only %s are allowed)",
                           page.relative_to(outdir), url, ", ".join(allowed))


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("builder-inited", check_assets)
    app.connect("html-page-context", drop_thebe, priority=900)
    app.connect("build-finished", scan_pages)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
