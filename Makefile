# Two commands are the whole set-up on a fresh machine:
#   make test   # creates .venv when missing, installs the pinned stack, runs ruff and pytest
#   make book   # the same environment, then a strict Jupyter Book build into _build/html
# make install only creates .venv and installs (profit-edu is then .venv/bin/profit-edu).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.profit-edu-installed
PYTEST_ARGS ?=

.PHONY: install test book book-check lint lock bench clean assignments

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt -e ".[dev,book]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	PROFIT_EDU_QUICK=1 $(PY) -m pytest $(PYTEST_ARGS)

# The book is built from scratch (every chapter executed), strictly (-W: any warning fails), in quick mode,
# with widget and MathJax scripts served from the book itself (book/_tools/fetch_offline_assets.py: npm
# pack of pinned versions, cached in _build/offline-cache).
book: $(STAMP)
	$(PY) book/_tools/fetch_offline_assets.py
	$(PY) book/_tools/nbtool.py check
	rm -rf _build/html _build/.doctrees _build/jupyter_execute
	PROFIT_EDU_QUICK=1 $(VENV)/bin/jupyter-book build --all -W -n --keep-going .
	test -f _build/html/index.html

# The assignments' student editions (rendered by the book) and instructor editions, from the source notebooks in
# book/assignments/source/: everything goes to runs/assignments/ (with Otter-Grader tests), then the student
# editions are copied over book/assignments/*.ipynb, the only tracked files this rewrites.
assignments: $(STAMP)
	$(VENV)/bin/profit-edu assignments build --out runs/assignments --otter --force
	cp runs/assignments/student/*.ipynb book/assignments/

# Headless-browser check of the built book (needs chromium; screenshots go to _build/screenshots/).
book-check: book
	PROFIT_EDU_QUICK=1 PROFIT_EDU_BOOK_HTML=_build/html $(PY) -m pytest -q tests/book

bench: $(STAMP)
	$(PY) benchmarks/quantizer_overhead.py

# Regenerate the exact pins from the current environment (run after changing dependencies).
lock: $(STAMP)
	{ head -n 2 requirements/constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v '^pip=='; } > requirements/constraints.tmp
	mv requirements/constraints.tmp requirements/constraints.txt

clean:
	rm -rf _build .pytest_cache .ruff_cache .hypothesis
