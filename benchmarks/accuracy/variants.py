"""The accuracy benchmark's variants: each one is a recipe edit, trained from one float checkpoint and scored.

Every variant starts from the same pretrained float model (a ``profit-edu train`` run directory, ``--init``)
and differs from the others in one thing only, so that a difference in top-1 has one cause:

=============  =========  ======  ========================================================================
variant        quantizer  bits    freezing in the fine-tunes at the last bit width (ft1, ft2, ft3)
=============  =========  ======  ========================================================================
fp             -          float   (no training: the init checkpoint itself, evaluated)
duq_w4a4       DuQ        W4A4    none: the same phases and epochs as PROFIT, nothing frozen
profit_w4a4    DuQ        W4A4    PROFIT: the top 1/3, then 2/3 of the AIWQ ranking
random_w4a4    DuQ        W4A4    as many layers as PROFIT, drawn at random (seeded): the control
pact_w4a4      PACT       W4A4    none
lsq_w4a4       LSQ        W4A4    none
duq_w3a3       DuQ        W3A3    none
profit_w3a3    DuQ        W3A3    PROFIT
random_w3a3    DuQ        W3A3    as many layers as PROFIT, drawn at random (seeded)
=============  =========  ======  ========================================================================

Each quantized variant is the recipe (``quick`` by default, edited first by the user's ``--set`` overrides)
with these edits, made by :func:`variant_recipe`: no float phase (``fp_epochs: 0``: the init is already
trained, and with ``teacher: self`` it is the teacher); the bits lowered progressively to the variant's width
(:func:`progressive_bits`: the recipe's steps above it, then it, e.g. 8 -> 4 -> 3 for W3A3 from quick's
8 -> 4); ``method`` and ``schedule.freeze`` (see :mod:`profit_edu.profit`); ``seed``. Every variant trains the
same phases for the same epochs as PROFIT at its bit width.

The score is top-1 on a fixed test set that does not depend on the seed (the whole CIFAR-10 test split by
default; the recipe's own validation subset changes with the seed), for the trained model and for its weight
EMA. Each number becomes one line of the ledger (:mod:`profit_edu.ledger`) with the variant, the seed, the init
checkpoint's sha256 and a ``setup`` hash that says which lines are comparable (same recipe apart from the seed,
same init, same test set).

Runs resume: each (variant, seed) trains in its own directory with :func:`profit_edu.profit.run_recipe`, which
skips finished phases; a run whose numbers are already in the ledger (same setup) is skipped outright.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from profit_edu import ledger
from profit_edu.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from profit_edu.data import DeviceLoader, cifar10, cifar10_or_synthetic, subset, synthetic
from profit_edu.models._common import stem_stride_for
from profit_edu.profit import Recipe, build_loaders, build_model, expand_phases, load_recipe, run_recipe
from profit_edu.train import ModelEMA, evaluate

__all__ = [
    "ID_PREFIX",
    "VARIANTS",
    "InitCheckpoint",
    "InitError",
    "Variant",
    "apply_overrides",
    "check_init",
    "load_init",
    "parse_set",
    "progressive_bits",
    "run_variant",
    "save_ranking",
    "scoring_set",
    "setup_hash",
    "variant_recipe",
]

log = logging.getLogger("accuracy")

ID_PREFIX = "accuracy"  # ledger ids: accuracy/<scale>/<recipe>/<variant>/seed<k>/<copy>
SCRIPT = "benchmarks/accuracy/run.py"
STRUCTURAL = ("model", "num_classes", "width_mult", "cifar_stem", "stem_stride", "negative_padding")
SECTIONS = ("model", "data", "train", "schedule", "aiwq")


class InitError(ValueError):
    """The ``--init`` checkpoint cannot start this benchmark (another model, quantized, other data)."""


# --------------------------------------------------------------------------------------------
# The variants, as data
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One row of the comparison.

    Attributes:
        name: e.g. ``"profit_w4a4"``; ledger ids and run directories use it.
        description: one line for the README and the summary.
        bits: the final weight and activation bit width, or None for the float init (no training).
        method: the quantizer, ``duq``, ``pact`` or ``lsq`` (the recipe's ``method``).
        freeze: the freezing policy, ``aiwq`` (PROFIT), ``random`` or ``none`` (``schedule.freeze``).
        ledger_method: the ledger's ``method`` field (``fp``, ``duq``, ``duq+profit``, ...).
    """

    name: str
    description: str
    bits: int | None
    method: str = "duq"
    freeze: str = "none"
    ledger_method: str = "duq"


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("fp", "the float init checkpoint, evaluated (no training)", None, ledger_method="fp"),
    Variant("duq_w4a4", "DuQ, progressive bits, no freezing", 4),
    Variant("profit_w4a4", "DuQ, progressive bits, PROFIT freezing by AIWQ", 4, freeze="aiwq",
            ledger_method="duq+profit"),
    Variant("random_w4a4", "DuQ, progressive bits, as many layers frozen as PROFIT, drawn at random", 4,
            freeze="random", ledger_method="duq+random_freeze"),
    Variant("pact_w4a4", "PACT, progressive bits, no freezing", 4, method="pact", ledger_method="pact"),
    Variant("lsq_w4a4", "LSQ, progressive bits, no freezing", 4, method="lsq", ledger_method="lsq"),
    Variant("duq_w3a3", "DuQ, progressive bits, no freezing", 3),
    Variant("profit_w3a3", "DuQ, progressive bits, PROFIT freezing by AIWQ", 3, freeze="aiwq",
            ledger_method="duq+profit"),
    Variant("random_w3a3", "DuQ, progressive bits, as many layers frozen as PROFIT, drawn at random", 3,
            freeze="random", ledger_method="duq+random_freeze"),
)}


# --------------------------------------------------------------------------------------------
# Recipes for the variants
# --------------------------------------------------------------------------------------------
def progressive_bits(steps: tuple[int, ...], target: int) -> tuple[int, ...]:
    """The recipe's bit steps above ``target``, then ``target``: how PROFIT lowers bits, ending at ``target``.

    >>> progressive_bits((8, 4), 4), progressive_bits((8, 4), 3), progressive_bits((8, 5, 4), 2)
    ((8, 4), (8, 4, 3), (8, 5, 4, 2))
    """
    return (*[b for b in steps if b > target], target)


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["schedule.ft_epochs=2", "seed=3"]`` -> ``{"schedule.ft_epochs": 2, "seed": 3}`` (values read as YAML).

    Raises:
        ValueError: an item without ``=``.

    >>> parse_set(['schedule.freeze_fractions=["1/3", "2/3"]', "data.train_images=64"])
    {'schedule.freeze_fractions': ['1/3', '2/3'], 'data.train_images': 64}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE (e.g. schedule.ft_epochs=2), got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def apply_overrides(recipe: Recipe, overrides: Mapping[str, Any]) -> Recipe:
    """The recipe with fields replaced: ``{"schedule.ft_epochs": 2, "seed": 1}`` (section.field or a top-level
    field). Values are checked as in a recipe file.

    Raises:
        ValueError: an unknown section or field, or a value the recipe rejects (the message names the key).
    """
    parts: dict[str, Any] = {name: getattr(recipe, name) for name in SECTIONS}
    top: dict[str, Any] = {}
    top_fields = [f.name for f in dataclasses.fields(Recipe) if f.name not in (*SECTIONS, "source", "version")]
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        if section:
            if section not in parts:
                raise ValueError(f"override {key!r}: unknown section {section!r}; sections are {list(SECTIONS)}")
            known = [f.name for f in dataclasses.fields(parts[section])]
            if name not in known:
                raise ValueError(f"override {key!r}: {section} has no field {name!r}; its fields: {known}")
            try:
                parts[section] = dataclasses.replace(parts[section], **{name: value})
            except (ValueError, TypeError) as err:
                raise ValueError(f"override {key}={value!r}: {err}") from None
        elif name in top_fields:
            top[name] = value
        else:
            raise ValueError(f"override {key!r}: not a recipe field; top-level fields: {top_fields}, or "
                             f"SECTION.FIELD with a section of {list(SECTIONS)}")
    try:
        return dataclasses.replace(recipe, **parts, **top)
    except (ValueError, TypeError) as err:
        raise ValueError(f"overrides {dict(overrides)}: {err}") from None


def variant_recipe(recipe: Recipe | str | Path, variant: Variant | str, *, seed: int,
                   overrides: Mapping[str, Any] | None = None) -> Recipe:
    """The recipe a quantized variant trains: the recipe edited by ``overrides`` (see :func:`apply_overrides`),
    then the variant's own fields: no float phase, bits lowered to the variant's width, its quantizer and
    freezing policy, ``seed`` (overrides of these fields are replaced).

    >>> r = variant_recipe("quick", "profit_w3a3", seed=2)
    >>> r.name, r.schedule.act_bits, r.schedule.weight_bits, r.schedule.profit_bits, r.schedule.freeze, r.seed
    ('quick+profit_w3a3', (8, 4, 3), (8, 4, 3), (3,), 'aiwq', 2)

    Raises:
        ValueError: the float variant (it trains nothing), or a bad override.
    """
    base = apply_overrides(recipe if isinstance(recipe, Recipe) else load_recipe(recipe), overrides or {})
    v = VARIANTS[variant] if isinstance(variant, str) else variant
    if v.bits is None:
        raise ValueError(f"variant {v.name!r} evaluates the init checkpoint; it has no recipe to train")
    s = base.schedule
    schedule = dataclasses.replace(s, fp_epochs=0, act_bits=progressive_bits(s.act_bits, v.bits),
                                   weight_bits=progressive_bits(s.weight_bits, v.bits), profit_bits=(v.bits,),
                                   freeze=v.freeze)
    return dataclasses.replace(base, name=f"{base.name}+{v.name}", schedule=schedule, method=v.method, seed=seed,
                               description=f"{v.description} ({base.name}, from a float init)")


# --------------------------------------------------------------------------------------------
# The float init checkpoint
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InitCheckpoint:
    """A loaded ``--init`` run: the checkpoint, its tensor file's sha256, and where it came from."""

    path: Path
    state: Checkpoint
    sha256: str

    @property
    def dataset(self) -> str | None:
        """The data set it was trained on (``cifar10`` or ``synthetic``), when the run recorded it."""
        return self.state.meta.get("data", {}).get("dataset")

    def facts(self) -> dict[str, Any]:
        """What every ledger line says about the init."""
        meta = self.state.meta
        return {"init_dir": str(self.path), "init_sha256": self.sha256, "init_commit": meta.get("commit"),
                "init_command": meta.get("command"), "init_epochs": self.state.epoch + 1}


def load_init(path: str | Path) -> InitCheckpoint:
    """Read an ``--init`` run directory (or its ``checkpoint.json``); the sha256 is the tensor file's.

    Raises:
        InitError: no readable checkpoint there.
    """
    path = Path(path)
    try:
        state = load_checkpoint(path)
    except CheckpointError as err:
        raise InitError(f"--init {path}: {err}") from err
    info = json.loads(state.path.read_text())["tensors"]
    return InitCheckpoint(path, state, info["sha256"])


def _expected_model_args(recipe: Recipe) -> dict[str, Any]:
    m = recipe.model
    return {"model": m.arch, "num_classes": m.num_classes, "width_mult": m.width_mult, "cifar_stem": m.cifar_stem,
            "stem_stride": stem_stride_for(m.cifar_stem, m.stem_stride), "negative_padding": m.negative_padding}


def check_init(init: InitCheckpoint, recipe: Recipe) -> None:
    """Refuse an init that is not the float model the recipe builds (architecture, classes, width, stem).

    The stem stride is compared as built (``null`` in a recipe means 1 with the CIFAR stem, else 2).

    Raises:
        InitError: no model arguments, a quantized init, or a field that differs (all of them listed).
    """
    saved = init.state.meta.get("model_args")
    if not isinstance(saved, dict):
        raise InitError(f"--init {init.path}: the checkpoint has no model_args; was it written by "
                        "'profit-edu train --model ...'?")
    if saved.get("weight_bits") is not None or saved.get("act_bits") is not None:
        raise InitError(f"--init {init.path} is quantized (weight_bits {saved.get('weight_bits')}, act_bits "
                        f"{saved.get('act_bits')}); the benchmark starts every variant from a float model")
    have = {k: saved.get(k) for k in STRUCTURAL}
    if isinstance(have["cifar_stem"], bool) and have["stem_stride"] in (None, 1, 2):
        have["stem_stride"] = stem_stride_for(have["cifar_stem"], have["stem_stride"])
    have["negative_padding"] = bool(have["negative_padding"])
    want = _expected_model_args(recipe)
    differ = [f"{k}: {have[k]!r} in the checkpoint, {want[k]!r} in the recipe" for k in STRUCTURAL
              if have[k] != want[k]]
    if differ:
        raise InitError(f"--init {init.path} holds another model than recipe {recipe.name!r} builds ("
                        f"{'; '.join(differ)}). Use an init trained with matching flags, or edit the recipe "
                        "(e.g. --set model.width_mult=0.5)")


def _float_model_from_init(recipe: Recipe, init: InitCheckpoint) -> torch.nn.Module:
    check_init(init, recipe)
    model = build_model(recipe, pretrained=False)
    try:
        init.state.restore(model)
    except CheckpointError as err:
        raise InitError(f"--init {init.path} does not load into the recipe's model: {err}") from err
    return model


# --------------------------------------------------------------------------------------------
# The test set: fixed, whatever the seed
# --------------------------------------------------------------------------------------------
def scoring_set(recipe: Recipe, images: int | None = None) -> tuple[Any, str]:
    """The images every variant is scored on, and the data set's name (``cifar10`` or ``synthetic``).

    CIFAR-10: the whole test split, or a class-balanced subset of ``images`` drawn with seed 0. Synthetic: the
    recipe's seed-0 validation draw (``images`` or ``val_images`` or 512 images). ``dataset: auto`` uses
    CIFAR-10 when a copy is found (never downloads), else synthetic images.
    """
    d = recipe.data
    if d.dataset == "imagenet":
        raise ValueError("the accuracy benchmark runs on CIFAR-10 or synthetic data, not ImageNet folders")
    if d.dataset == "synthetic":
        n = images or d.val_images or 512
        return synthetic(n, num_classes=recipe.model.num_classes, image_size=d.image_size, seed=1), "synthetic"
    if d.dataset == "auto":
        data, fell_back = cifar10_or_synthetic(False, n=images, seed=0)
        return data, "synthetic" if fell_back else "cifar10"
    data = cifar10(train=False)
    return (subset(data, images, seed=0) if images else data), "cifar10"


def _check_data(init: InitCheckpoint, dataset: str) -> None:
    if init.dataset is not None and init.dataset != dataset:
        hint = " (CIFAR-10 was not found: see profit_edu.data)" if dataset == "synthetic" else ""
        raise InitError(f"--init {init.path} was trained on {init.dataset}, but this benchmark would train and "
                        f"test on {dataset}{hint}")


def _score(model: torch.nn.Module, ema: torch.nn.Module | None, loader: Any, device: str) -> dict[str, dict]:
    scores = {"model": evaluate(model, loader, device)}
    if ema is not None:
        scores["ema"] = evaluate(ema, loader, device)
    return scores


# --------------------------------------------------------------------------------------------
# Ledger bookkeeping
# --------------------------------------------------------------------------------------------
def setup_hash(recipe: Recipe | None, init: InitCheckpoint, test: dict[str, Any]) -> str:
    """12 hex digits naming what makes numbers comparable: the recipe without its seed and its ``init`` (None for
    the float variant), the init's sha256 (the checkpoint actually used), and the test set. Lines with the same
    setup differ only by the seed."""
    doc = {"recipe": None if recipe is None else {k: v for k, v in recipe.to_dict().items()
                                                  if k not in ("seed", "init")},
           "init": init.sha256, "test": test}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _existing(path: Path | None, ids: list[str], setup: str) -> list[dict[str, Any]]:
    """The latest ledger line of each id with this setup, or [] unless every id has one."""
    found = {r["id"]: r for r in ledger.read(path) if r.get("id") in ids and r.get("setup") == setup}
    return [found[i] for i in ids] if len(found) == len(ids) else []


def _command(recipe_arg: str, variant: str, seed: int, init: Path, out: Path, overrides: Mapping[str, Any],
             test_images: int | None, scale: str) -> str:
    """The command line that reproduces exactly this number."""
    parts = ["python", SCRIPT, "--recipe", recipe_arg, "--variants", variant, "--seeds", str(seed),
             "--init", str(init), "--out", str(out), "--scale", scale]
    if test_images:
        parts += ["--test-images", str(test_images)]
    for key, value in overrides.items():
        parts += ["--set", f"'{key}={json.dumps(value)}'"]
    return " ".join(parts)


def save_ranking(run_dir: Path, *, scale: str, recipe: str, variant: str, seed: int,
                 ledger_path: Path | None = None) -> dict[str, Any] | None:
    """Copy a PROFIT run's AIWQ ranking (``run_dir/aiwq_ranking.json``) next to the ledger, in
    ``<ledger's folder>/rankings/<scale>_<recipe>_<variant>_seed<k>.json``, with the number of depthwise convs in
    its top third; returns those facts for the ledger line (None when the run measured no ranking)."""
    rankings_dir = (ledger_path or ledger.default_path()).parent / "rankings"
    source = Path(run_dir) / "aiwq_ranking.json"
    if not source.is_file():
        return None
    doc = json.loads(source.read_text())
    rows = doc["ranking"]
    top = rows[: len(rows) // 3]
    doc.update({"scale": scale, "recipe": recipe, "variant": variant, "seed": seed, "top_third": len(top),
                "depthwise_in_top_third": sum(r["kind"] == "depthwise" for r in top)})
    target = rankings_dir / f"{scale}_{recipe}_{variant}_seed{seed}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(doc, indent=1) + "\n")
    return {"ranking_file": f"rankings/{target.name}",
            "depthwise_in_top_third": doc["depthwise_in_top_third"], "top_third": len(top)}


def _claim_run_dir(run_dir: Path, init: InitCheckpoint) -> None:
    """Record the init in ``run_dir/init.json``; refuse a directory that a run from another init started.

    run_recipe resumes from whatever phases are finished, and checks that the recipe is the same, but it cannot
    know which weights the first phase started from.
    """
    marker = run_dir / "init.json"
    if marker.is_file():
        before = json.loads(marker.read_text()).get("init_sha256")
        if before != init.sha256:
            raise InitError(f"{run_dir} holds a run started from another init (sha256 {str(before)[:12]}, now "
                            f"{init.sha256[:12]} from {init.path}); use another --out, or delete the directory")
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(init.facts(), indent=1) + "\n")


# --------------------------------------------------------------------------------------------
# One variant, one seed
# --------------------------------------------------------------------------------------------
def run_variant(
    recipe: str | Path,
    variant: str,
    *,
    seed: int,
    init_dir: str | Path,
    out_dir: str | Path,
    overrides: Mapping[str, Any] | None = None,
    test_images: int | None = None,
    scale: str | None = None,
    device: str = "cpu",
    ledger_path: Path | None = None,
    force: bool = False,
) -> list[dict[str, Any]]:
    """Train (or, for ``fp``, only evaluate) one variant for one seed, score it, append its ledger lines.

    Args:
        recipe: a recipe file or shipped name (``quick``, ``tiny``).
        variant: a key of :data:`VARIANTS`.
        seed: the recipe's seed (data subset and order, quantizer init batch, random freezing). The float variant
            ignores it and records the init's own training seed.
        init_dir: the float ``profit-edu train`` run every variant starts from.
        out_dir: the benchmark's directory; this run trains in ``out_dir/<variant>/seed<k>/`` and resumes there.
        overrides: edits of the recipe (``{"schedule.ft_epochs": 2}``), made before the variant's own.
        test_images: score on a class-balanced CIFAR-10 test subset of this size (default: the whole split).
        scale: the ledger's ``scale`` (default: the recipe's name when it is ``tiny`` or ``quick``).
        device: where to train.
        ledger_path: the ledger file (default :func:`profit_edu.ledger.default_path`, or ``$PROFIT_EDU_LEDGER``).
        force: measure again even when the ledger already holds this run's numbers.

    Returns:
        The ledger records of this run (model and, when there is one, EMA), newly appended or found.

    Raises:
        InitError: the init does not fit the recipe or the data.
        ValueError: an unknown variant or a bad override.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; variants: {list(VARIANTS)}")
    v = VARIANTS[variant]
    overrides = dict(overrides or {})
    base = apply_overrides(load_recipe(recipe), overrides)
    scale = scale or (base.name if base.name in ("tiny", "quick") else None)
    if scale is None:
        raise ValueError(f"recipe {base.name!r} is not tiny or quick: say which scale it is (scale=..., --scale)")
    init = load_init(init_dir)
    trained = variant_recipe(base, v, seed=seed) if v.bits is not None else None
    check_init(init, trained or base)
    test_data, dataset = scoring_set(base, test_images)
    _check_data(init, dataset)
    test = {"dataset": dataset, "images": len(test_data), "subset": test_images}
    setup = setup_hash(trained, init, test)
    record_seed = seed if v.bits is not None else int(init.state.config.get("seed", 0))
    has_ema = init.state.ema_state is not None if trained is None else trained.train.ema_decay is not None
    ids = [f"{ID_PREFIX}/{scale}/{base.name}/{v.name}/seed{record_seed}/{copy}"
           for copy in ("model", "ema")[: 2 if has_ema else 1]]
    run_dir = Path(out_dir) / v.name / f"seed{record_seed}"
    if not force:
        found = _existing(ledger_path, ids, setup)
        if found:
            save_ranking(run_dir, scale=scale, recipe=base.name, variant=v.name, seed=record_seed,
                         ledger_path=ledger_path)
            log.info("%s seed %d: already in the ledger (setup %s), skipped", v.name, record_seed, setup)
            return found

    loader = DeviceLoader(test_data, 256, train=False, device=device)
    torch.manual_seed(seed)
    if trained is None:  # the float init, scored as it is
        model = _float_model_from_init(base, init)
        ema = None
        if has_ema:
            ema = ModelEMA(model).module
            init.state.restore(model, ema_model=ema)
        start = time.perf_counter()
        scores = _score(model.to(device), ema.to(device) if ema is not None else None, loader, device)
        train_wall, epochs, facts = 0.0, 0, {}
    else:
        model = _float_model_from_init(trained, init)
        _claim_run_dir(run_dir, init)
        train_loader, val_loader, what = build_loaders(trained, device=device)
        log.info("%s seed %d: %s; %d epochs in %s", v.name, seed, what,
                 sum(p.epochs for p in expand_phases(trained)), run_dir)

        def report(phase: Any, epoch: int, r: dict[str, Any]) -> None:
            log.info("  %s epoch %d/%d: train loss %.4f, val top-1 %s, %d frozen (%.1f s)", phase.name, epoch + 1,
                     phase.epochs, r["train_loss"], r["val_top1"], len(r["frozen"]), r["wall_s"])

        result = run_recipe(trained, model, train_loader, val_loader, out_dir=run_dir, device=device,
                            callback=report)
        start = time.perf_counter()
        scores = _score(result.model, result.ema.module if result.ema is not None else None, loader, device)
        train_wall = sum(float(r.get("wall_s") or 0.0) for p in result.phases for r in p.history)
        epochs = sum(len(p.history) for p in result.phases)
        facts = {"recipe_sha256": hashlib.sha256(json.dumps(trained.to_dict(), sort_keys=True, default=str)
                                                 .encode()).hexdigest(),
                 "act_bits_schedule": list(trained.schedule.act_bits),
                 "weight_bits_schedule": list(trained.schedule.weight_bits),
                 "freeze": trained.schedule.freeze, "quantizer": trained.method, "run_dir": str(run_dir),
                 "frozen_layers": {p.phase.name: len(p.frozen) for p in result.phases if p.phase.kind == "ft"},
                 **(save_ranking(run_dir, scale=scale, recipe=base.name, variant=v.name, seed=record_seed,
                                 ledger_path=ledger_path) or {})}
    wall = train_wall + time.perf_counter() - start  # every epoch's wall time (earlier sessions too) + scoring
    records = []
    for (copy, r), record_id in zip(scores.items(), ids):
        records.append(ledger.append({
            "id": record_id, "hardware": ledger.hardware(device), "scale": scale, "dataset": dataset,
            "model": base.model.arch, "width_mult": base.model.width_mult, "cifar_stem": base.model.cifar_stem,
            "stem_stride": stem_stride_for(base.model.cifar_stem, base.model.stem_stride),
            "method": v.ledger_method, "weight_bits": v.bits, "act_bits": v.bits, "seed": record_seed,
            "metric": "top1", "value": round(r["top1"], 2),
            "top5": None if r["top5"] is None else round(r["top5"], 2), "copy": copy, "variant": v.name,
            "recipe": base.name, "setup": setup, "test_images": len(test_data), "epochs": epochs,
            "wall_s": round(wall, 1),
            "command": _command(str(recipe), v.name, seed, Path(init_dir), Path(out_dir), overrides, test_images,
                                scale),
            **init.facts(), **facts,
        }, ledger_path))
        log.info("%s seed %d %s: top-1 %.2f%% on %d %s test images", v.name, record_seed, copy, r["top1"],
                 len(test_data), dataset)
    return records
