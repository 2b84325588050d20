"""Fetch the JavaScript the book serves itself, so no page loads anything from a CDN.

The rendered book needs three third-party scripts:

* ``require.js`` (npm ``requirejs@2.3.4``) and ``embed-amd.js`` (npm ``@jupyter-widgets/html-manager@1.0.6``)
  draw the ipywidgets stored in the pages (myst-nb's ``nb_ipywidgets_js`` points at them);
* MathJax 3 (npm ``mathjax@3.2.2``: ``es5/tex-chtml.js`` and its woff fonts) typesets the formulas
  (Sphinx's ``mathjax_path`` points at it).

By default Jupyter Book takes them from public CDNs, so offline (and in this project's CI) widgets and math
do not render. This script downloads the exact package versions with ``npm pack`` into a cache
(``_build/offline-cache/``, or ``--cache``), checks each tarball against its pinned sha512 integrity, and
copies the few files the book needs, with their licences, into ``book/_offline/`` (git-ignored; listed in
``html_static_path``, so it is served as ``_static/widgets/...`` and ``_static/mathjax/...``).

Run it from the repository root (``make book`` does)::

    python book/_tools/fetch_offline_assets.py

A second run with everything in place does nothing and needs no network.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEST = ROOT / "book" / "_offline"
CACHE = ROOT / "_build" / "offline-cache"
STAMP = "VERSIONS.txt"


@dataclass(frozen=True)
class Package:
    """One npm package: its exact version, its registry integrity, and the files the book takes from it.

    ``files`` maps a path inside the tarball (or a folder ending in "/") to a path under ``book/_offline``.
    """

    name: str
    version: str
    integrity: str
    files: dict[str, str] = field(default_factory=dict)
    notice: tuple[str, str] | None = None  # (path under book/_offline, text) for a licence note

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def tarball(self) -> str:
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}.tgz"


PACKAGES = [
    Package(
        "@jupyter-widgets/html-manager", "1.0.6",
        "sha512-+Mn+Ra8wyIHrYaUpfmf9A3dsLkt/NuwzPQN8sthdxBD35VV5cOJbpmgMhNR27n/rmP3mKyEe0PWCJrtZrXTXDQ==",
        {
            "package/dist/embed-amd.js": "widgets/embed-amd.js",
            "package/dist/embed.js.LICENSE.txt": "widgets/embed-amd.js.LICENSE.txt",
            "package/LICENSE": "widgets/LICENSE.html-manager.txt",
        },
    ),
    Package(
        "requirejs", "2.3.4",
        "sha512-qPD5gRrj6kGQ0ZySAJgqbArkaDqPMbQIT0zSZDkIv1mfA17w/tR2Faq5l2qqRf2CdQx6FWln9nUrgd2UDzb19A==",
        {"package/require.js": "widgets/require.js"},
        notice=(
            "widgets/LICENSE.requirejs.txt",
            "require.js 2.3.4, from the npm package requirejs@2.3.4. Its licence is stated in the file's own\n"
            "header: 'RequireJS 2.3.4 Copyright jQuery Foundation and other contributors. Released under MIT\n"
            "license, https://github.com/requirejs/requirejs/blob/master/LICENSE'.\n",
        ),
    ),
    Package(
        "mathjax", "3.2.2",
        "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==",
        {
            "package/es5/tex-chtml.js": "mathjax/tex-chtml.js",
            "package/es5/output/chtml/fonts/woff-v2/": "mathjax/output/chtml/fonts/woff-v2/",
            "package/LICENSE": "mathjax/LICENSE.txt",
        },
    ),
]


def stamp_text() -> str:
    return "".join(f"{p.spec} {p.integrity}\n" for p in PACKAGES)


def up_to_date(dest: Path = DEST) -> bool:
    """True when ``dest`` holds every file of the pinned versions (then nothing needs fetching)."""
    stamp = dest / STAMP
    if not stamp.is_file() or stamp.read_text() != stamp_text():
        return False
    for p in PACKAGES:
        for target in p.files.values():
            if not (dest / target).exists():
                return False
    return True


def integrity_of(path: Path) -> str:
    digest = hashlib.sha512(path.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode()


def fetch(pkg: Package, cache: Path) -> Path:
    """The package's tarball in ``cache``, downloaded with ``npm pack`` when missing; integrity checked."""
    cache.mkdir(parents=True, exist_ok=True)
    tgz = cache / pkg.tarball
    if not tgz.is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit(
                f"npm is needed to fetch {pkg.spec} for the offline book (Node.js's package manager), or put "
                f"{pkg.tarball} into {cache} yourself."
            )
        print(f"fetching {pkg.spec} with npm pack ...", flush=True)
        subprocess.run([npm, "pack", pkg.spec, "--pack-destination", str(cache), "--silent"], check=True,
                       stdout=subprocess.DEVNULL)
        if not tgz.is_file():
            raise SystemExit(f"npm pack {pkg.spec} did not produce {tgz}")
    got = integrity_of(tgz)
    if got != pkg.integrity:
        raise SystemExit(f"{tgz} has integrity {got}, expected {pkg.integrity} (pinned); delete it and retry")
    return tgz


def extract(pkg: Package, tgz: Path, dest: Path) -> None:
    with tarfile.open(tgz, "r:gz") as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        for src, target in pkg.files.items():
            chosen = [n for n in members if n.startswith(src)] if src.endswith("/") else [src]
            if not chosen or any(n not in members for n in chosen):
                raise SystemExit(f"{pkg.spec}: {src} is not in the package")
            for name in chosen:
                out = dest / (target + name[len(src):] if src.endswith("/") else target)
                out.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(members[name]) as f:  # type: ignore[union-attr]
                    out.write_bytes(f.read())
    if pkg.notice:
        path, text = pkg.notice
        (dest / path).parent.mkdir(parents=True, exist_ok=True)
        (dest / path).write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=CACHE, help="where npm tarballs are kept")
    parser.add_argument("--dest", type=Path, default=DEST, help="the book's offline static folder")
    parser.add_argument("--force", action="store_true", help="re-extract even when up to date")
    args = parser.parse_args(argv)
    if up_to_date(args.dest) and not args.force:
        print(f"offline assets up to date in {args.dest}")
        return 0
    for pkg in PACKAGES:
        extract(pkg, fetch(pkg, args.cache), args.dest)
    (args.dest / STAMP).write_text(stamp_text())
    print(f"offline assets ready in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
