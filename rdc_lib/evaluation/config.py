"""The evaluation's configuration: a defense part, a threat, attack settings and an image slice (issue 38).

``EvalConfig`` holds four parts and the few settings of the evaluation itself:

- ``spec``: the :class:`~rdc_lib.defenses.DefenseSpec` the builder gets (flat name ``defense`` for its ``name``;
  ``denoiser_path`` and ``ckpt_dir`` are filled in at build time by ``runner.defense_spec``);
- ``threat``: :class:`Threat` (norm, eps);
- ``attack_settings``: :class:`AttackSettings` (flat name ``attack`` for its ``name``, and the budget);
- ``images``: :class:`ImageSlice` (dataset, split, n_images, offset, data_root).

Every setting also has a flat name (``defense``, ``eps``, ``heads``, ``n``, ...): the CLI, sweeps, notebooks and
stored records speak flat names. ``EvalConfig(**flat)`` and ``from_params`` route each name to its part by the parts'
dataclass fields (a field added to a part is a flat setting with no other edit), ``cfg.eps`` reads through to the
part, and ``cfg.replace(eps=...)`` changes any of them. ``flat()`` is the stored form (a result row's config fields,
``identity()``, ``key()``): its names and values are those of the single flat dataclass that came before the split,
so stored keys do not change. The number of images is ``n_images``; ``n`` is its stored (old) spelling.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, Field, dataclass, field, fields, make_dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from ..attacks.registry import get_attack
from ..core.choices import DATASETS, SPLITS, THREAT_NORMS, check_choice
from ..core.paths import default_denoiser, stored_denoiser_name
from ..defenses import DefenseSpec, defense_names, get_defense
from ..defenses.presets import eval_settings, get_preset, preset_conflicts
from .attacking import NO_ATTACK, eval_attack_names

__all__ = ["AttackSettings", "EvalConfig", "ImageSlice", "Threat"]


@dataclass(frozen=True)
class Threat:
    """The threat model: perturbations of norm ``norm`` up to ``eps`` on images in [0, 1]."""

    norm: str = "linf"  # one of THREAT_NORMS, supported by the attack
    eps: float = 0.1  # perturbation budget on images in [0, 1]


@dataclass(frozen=True)
class AttackSettings:
    """The attack and its budget (flat name of ``name``: ``attack``)."""

    name: str = NO_ATTACK  # "none" or a registered attack (rdc_lib.attacks.attack_names())
    steps: int = 20  # attack iterations
    restarts: int = 1  # attack restarts
    eot: int = 1  # EOT draws per gradient
    verify: int = 1  # calls that must all misclassify before an attack stops on an example
    square_queries: int = 1000  # autoattack: Square's query budget
    n_target_classes: int = 9  # autoattack / apgd-t: target classes tried


@dataclass(frozen=True)
class ImageSlice:
    """The evaluated images: ``n_images`` images of ``split`` from index ``offset`` (flat name of n_images: ``n``)."""

    dataset: str = "digits"
    split: str = "test"  # "test", or "val" (choices are made there: rdc_lib.experiments.selection)
    n_images: int = 100
    offset: int = 0
    data_root: str = ""  # CIFAR-10: folder of the python batches


_PARTS = ("spec", "threat", "attack_settings", "images")
# Part fields whose flat name differs from the field's name.
_FLAT_NAMES = {("spec", "name"): "defense", ("attack_settings", "name"): "attack", ("images", "n_images"): "n"}
# Spec fields the configuration does not set itself: filled in from ``denoiser`` and ``ckpt_dir`` (defense_spec).
_DERIVED = {("spec", "denoiser_path"), ("spec", "ckpt_dir")}
_ALIASES = {"n_images": "n"}  # accepted spelling -> flat (stored) name
# The flat fields of every stored configuration, in their stored order. A field added later (here or to a part)
# counts in ``flat()`` and ``identity()`` only when set away from its default, so stored keys and rows stay valid.
_STORED_FIELDS = (
    "defense", "attack", "norm", "eps", "n", "offset", "seed", "eot", "verify", "steps", "restarts", "square_queries",
    "n_target_classes", "timesteps", "heads", "dataset", "noise_mode", "grad_mode", "n_eval", "vote", "chunk",
    "run_checks", "preset", "data_root", "ckpt_dir", "denoiser", "grid", "grid_sigma_min", "lm_steps", "lm_eta",
    "lm_step_size", "split",
)  # fmt: skip
# Stored fields added after results were first stored: in ``identity()`` only when set away from their default.
_LATER_FIELDS = ("verify", "denoiser", "grid", "grid_sigma_min", "lm_steps", "lm_eta", "lm_step_size", "split")
# Defense settings added with the registries: refused for a defense that does not read them (registry
# fact ``extra_args``) and, with a preset, when they differ from the preset's (the preset fixes grid and LM).
_SPEC_SETTINGS = ("grid", "grid_sigma_min", "lm_steps", "lm_eta", "lm_step_size")
_AT_LEAST_ONE = {  # what a count below 1 would have meant, for the error message
    "n": " (n_images: the number of images)",
    "eot": " (draws of a stochastic defense averaged per gradient and per Square score; 1 for a deterministic one)",
    "verify": " (calls that must all misclassify an image before an attack stops on it; 1 for a deterministic defense)",
    "n_eval": " (re-classifications of each final adversarial example: 1 for a deterministic defense, e.g. 10 for "
    "the worst of N on a stochastic one)",
}
_COUNTS = ("n", "eot", "verify", "steps", "restarts", "timesteps", "n_eval", "vote", "chunk", "square_queries",
           "n_target_classes")  # fmt: skip


_CACHE: dict[tuple, Any] = {}


def _cached(cls: type, what: str, make: Any) -> Any:
    """``make()`` once per configuration class and defense part class (a test may swap the part class)."""
    key = (cls, cls.defense_part, what)
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


@dataclass(frozen=True, init=False)
class EvalConfig:
    """One evaluation: defense x attack x threat on a slice of images (see the module docstring).

    Build it from flat names, ``EvalConfig(defense="dc", attack="pgd", eps=0.1, n_images=50)``, or from parts,
    ``EvalConfig(spec=DefenseSpec(name="dc"), threat=Threat(eps=0.1))`` (flat names then override the parts).
    """

    defense_part: ClassVar[type] = DefenseSpec  # the class of ``spec`` (its fields are flat settings)
    spec: DefenseSpec = field(default_factory=DefenseSpec)
    threat: Threat = field(default_factory=Threat)
    attack_settings: AttackSettings = field(default_factory=AttackSettings)
    images: ImageSlice = field(default_factory=ImageSlice)
    denoiser: str = ""  # digits: a denoiser checkpoint (path, or shipped name like digits_multi_h32);
    # "" = the default of `heads` (rdc_lib.core.choices.DEFAULT_DENOISERS), stored resolved
    ckpt_dir: str = "data/checkpoints"  # CIFAR-10: folder of the imported EDM checkpoints
    n_eval: int = 1  # re-classifications of each final adversarial example
    chunk: int = 50  # images per chunk (records are saved after each)
    run_checks: bool = True  # sanity checks with every robust evaluation

    def __init__(self, **params: Any) -> None:
        cls = type(self)
        routes = cls._routes()
        for alias, name in _ALIASES.items():
            if alias in params:
                if name in params:
                    raise TypeError(f"give {alias} or its old spelling {name}, not both")
                params[name] = params.pop(alias)
        unknown = sorted(set(params) - set(routes) - set(_PARTS))
        if unknown:
            raise TypeError(f"unknown evaluation parameters {unknown}; valid: {sorted(routes)} or the parts {_PARTS}")
        values: dict[str | None, dict[str, Any]] = {}
        for name, value in params.items():
            if name not in _PARTS:
                part, attr = routes[name]
                values.setdefault(part, {})[attr] = value
        for part, part_cls in cls._part_classes().items():
            given = params.get(part)
            if given is not None and not isinstance(given, part_cls):
                raise TypeError(f"{part} must be a {part_cls.__name__}, got {type(given).__name__}")
            new = values.get(part, {})
            obj = part_cls(**new) if given is None else (replace(given, **new) if new else given)
            object.__setattr__(self, part, obj)
        for f in fields(cls):
            if f.name not in _PARTS:
                object.__setattr__(self, f.name, values.get(None, {}).get(f.name, f.default))
        self._validate()

    # -- flat names --
    @classmethod
    def _part_classes(cls) -> dict[str, type]:
        return dict(zip(_PARTS, (cls.defense_part, Threat, AttackSettings, ImageSlice)))

    @classmethod
    def _routes(cls) -> dict[str, tuple[str | None, str]]:
        """Flat name -> (part, or None for a field of the configuration itself; field), stored order first."""
        return _cached(cls, "routes", cls._make_routes)

    @classmethod
    def _make_routes(cls) -> dict[str, tuple[str | None, str]]:
        routes: dict[str, tuple[str | None, str]] = {}
        for part, part_cls in cls._part_classes().items():
            for f in fields(part_cls):
                if (part, f.name) in _DERIVED:
                    continue
                name = _FLAT_NAMES.get((part, f.name), f.name)
                if name in routes:
                    raise TypeError(f"flat name {name!r} of {part}.{f.name} is taken by {'.'.join(routes[name])}")
                routes[name] = (part, f.name)
        for f in fields(cls):
            if f.name not in _PARTS:
                routes[f.name] = (None, f.name)
        return {**{n: routes[n] for n in _STORED_FIELDS if n in routes}, **routes}

    @classmethod
    def flat_fields(cls) -> tuple[Field, ...]:
        """The flat settings as dataclass fields (name, type, default), stored order first (CLI flags, sweeps)."""
        return fields(cls.flat_schema())

    @classmethod
    def flat_schema(cls) -> type:
        """A flat dataclass with one field per flat setting (what tools that read a dataclass's fields take)."""
        return _cached(cls, "schema", cls._make_schema)

    @classmethod
    def _make_schema(cls) -> type:
        found = {(p, f.name): f for p, pc in cls._part_classes().items() for f in fields(pc)}
        found.update({(None, f.name): f for f in fields(cls) if f.name not in _PARTS})
        spec = []
        for name, key in cls._routes().items():
            f = found[key]
            spec.append((name, f.type, field(default=f.default, default_factory=f.default_factory)))
        schema = make_dataclass("EvalParams", spec, frozen=True)
        schema.__module__ = __name__
        return schema

    @classmethod
    def flat_defaults(cls) -> dict[str, Any]:
        """Flat name -> default value."""
        return dict(_cached(cls, "defaults", lambda: cls._make_defaults()))

    @classmethod
    def _make_defaults(cls) -> dict[str, Any]:
        return {f.name: f.default if f.default is not MISSING else f.default_factory() for f in cls.flat_fields()}

    def __getattr__(self, name: str) -> Any:
        """Flat read access: ``cfg.eps`` is ``cfg.threat.eps``, ``cfg.defense`` is ``cfg.spec.name``."""
        if name.startswith("_") or name in _PARTS or name == "n":
            hint = "; the number of images is n_images" if name == "n" else ""
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}{hint}")
        route = type(self)._routes().get(_ALIASES.get(name, name))
        if route is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        part, attr = route
        return getattr(self if part is None else object.__getattribute__(self, part), attr)

    def _get(self, flat_name: str) -> Any:
        part, attr = type(self)._routes()[flat_name]
        return getattr(self if part is None else getattr(self, part), attr)

    def _set(self, **flat: Any) -> None:
        """Set flat settings in place (construction only: presets, the resolved denoiser)."""
        routes = type(self)._routes()
        by_part: dict[str | None, dict[str, Any]] = {}
        for name, value in flat.items():
            part, attr = routes[name]
            by_part.setdefault(part, {})[attr] = value
        for part, new in by_part.items():
            if part is None:
                for attr, value in new.items():
                    object.__setattr__(self, attr, value)
            else:
                object.__setattr__(self, part, replace(getattr(self, part), **new))

    def flat(self) -> dict[str, Any]:
        """The flat settings by their stored names (a result row's config fields); a field added after the stored
        ones (``_STORED_FIELDS``) is included only when set away from its default."""
        defaults = type(self).flat_defaults()
        out = {}
        for name in type(self)._routes():
            value = self._get(name)
            if name in _STORED_FIELDS or value != defaults[name]:
                out[name] = value
        return out

    def replace(self, **flat: Any) -> EvalConfig:
        """A copy with flat settings (or parts) changed, checked again (``dataclasses.replace`` for flat names)."""
        own = {f.name: getattr(self, f.name) for f in fields(self)}
        return type(self)(**{**own, **flat})

    # -- checks --
    def _validate(self) -> None:
        defense = get_defense(self.defense)
        check_choice("attack", self.attack, eval_attack_names())
        check_choice("norm", self.norm, THREAT_NORMS)
        if self.attack != NO_ATTACK:
            self._check_attack(defense)
        if self.eps < 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")
        if self.norm == "linf" and self.eps > 1:
            raise ValueError(f"an l_inf eps above 1 is meaningless for images in [0, 1], got {self.eps}")
        for name in _COUNTS:
            value = self._get(name)
            if value < 1:
                raise ValueError(f"{name} must be >= 1{_AT_LEAST_ONE.get(name, '')}, got {name} = {value}")
        if self.offset < 0:
            raise ValueError(f"offset must be >= 0, got {self.offset}")
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("split", self.split, SPLITS)
        with_denoiser = ", ".join(defense_names(needs_denoiser=True))
        if self.denoiser and not defense.needs_denoiser:
            raise ValueError(
                f"denoiser= selects the diffusion model of {with_denoiser}; defense {self.defense!r} has none"
            )
        if self.denoiser and self.dataset != "digits":
            raise ValueError("denoiser= is for digits; CIFAR-10 takes its checkpoints from preset and ckpt_dir")
        if self.dataset not in defense.datasets:
            raise ValueError(
                f"on {self.dataset} the defenses are {', '.join(defense_names(datasets=self.dataset))}, "
                f"got {self.defense!r}"
            )
        self._check_spec_settings(defense)
        if self.preset or self.dataset == "cifar10":
            self._apply_preset()
        if defense.needs_denoiser and self.dataset == "digits" and not self.denoiser:
            # A new configuration always names its denoiser: records stored with denoiser "" meant the legacy
            # checkpoint of `heads` (rdc_lib.core.paths.stored_denoiser_name) and keep that meaning and their keys.
            # A digits preset fixes its own checkpoint (the defaults of heads do not change a preset).
            self._set(denoiser=self._preset_denoiser() or default_denoiser(self.heads))

    def _check_spec_settings(self, defense) -> None:
        """The LM settings are valid; the grid and LM settings are read by the defense, not overridden by a preset
        (the spec checks the grid itself)."""
        if self.lm_steps < 0 or not self.lm_eta >= 0 or not self.lm_step_size > 0:
            raise ValueError(
                f"LM settings must be lm_steps >= 0, lm_eta >= 0, lm_step_size > 0; got {self.lm_steps}, "
                f"{self.lm_eta}, {self.lm_step_size}"
            )
        defaults = type(self).flat_defaults()
        changed = [n for n in _SPEC_SETTINGS if self._get(n) != defaults[n]]
        unread = [n for n in changed if n not in defense.extra_args]
        if unread:
            readers = ", ".join(n for n in defense_names() if set(unread) <= set(get_defense(n).extra_args))
            raise ValueError(
                f"defense {self.defense!r} does not read {', '.join(unread)} (defenses that do: {readers})"
            )
        if changed and (self.preset or self.dataset == "cifar10"):
            raise ValueError(
                f"{', '.join(changed)}: the preset {self.preset or 'cifar10-paper'!r} fixes the grid and "
                "the LM settings (rdc presets NAME shows them); drop the flag or leave out the preset"
            )

    def _check_attack(self, defense) -> None:
        """The attack's registry facts against the threat model and the defense."""
        info = get_attack(self.attack)
        if self.norm not in info.norms:
            raise ValueError(
                f"attack {self.attack!r} goes with norm {' or '.join(map(repr, info.norms))}, got "
                f"{self.norm!r} (norm 'flow' is StAdv's flow bound: attack stadv, eps = flow bound)"
            )
        if "denoiser" in info.extra_args and not defense.needs_denoiser:
            raise ValueError(
                f"attack {self.attack!r} needs a diffusion defense "
                f"({', '.join(defense_names(needs_denoiser=True))}); {self.defense!r} has no denoiser"
            )

    def _apply_preset(self) -> None:
        """Apply the preset (cifar10 implies 'cifar10-paper') to the fields it fixes that are left at their
        defaults; refuse any other value that differs from the preset's (never ignore it)."""
        name = self.preset or "cifar10-paper"
        fixed = eval_settings(name)
        defaults = type(self).flat_defaults()
        set_away = {k: self._get(k) for k in fixed if self._get(k) != defaults[k]}
        problems = preset_conflicts(name, set_away)
        if problems:
            raise ValueError("; ".join(problems))
        self._set(preset=name, **fixed)

    def _preset_denoiser(self) -> str:
        """The shipped checkpoint name a preset fixes for the digits (its classifier file's stem); "" without one."""
        if not self.preset:
            return ""
        return Path(get_preset(self.preset).checkpoints.classifier).stem

    # -- stored form --
    def identity(self) -> dict:
        """The fields that identify this configuration (records headers, ``key``).

        Fields added after results were first stored (``_LATER_FIELDS``, and any field not in ``_STORED_FIELDS``)
        count only when set away from their default, so the keys, records and resumable runs of older
        configurations stay valid.
        """
        d = self.flat()
        defaults = type(self).flat_defaults()
        for name in _LATER_FIELDS:
            if d[name] == defaults[name]:
                del d[name]
        return d

    def key(self) -> str:
        """A short hash of the identifying fields (names the records file)."""
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_stored(cls, config: dict) -> EvalConfig:
        """The configuration a stored one (a records header, or a result row: keys that are not fields are
        ignored) was run with, by any code version.

        A stored denoiser "" of a defense with a denoiser meant the legacy checkpoint of its ``heads``
        (rdc_lib.core.paths.stored_denoiser_name), so it comes back named (digits_multi / digits_single), never as
        today's default; the result's ``key()`` is the key of that meaning, not the stored key.
        """
        params = {k: config[k] for k in cls._routes() if k in config}
        defaults = cls.flat_defaults()
        info = get_defense(params.get("defense", defaults["defense"]))
        if info.needs_denoiser and not params.get("denoiser"):
            params["denoiser"] = stored_denoiser_name({"heads": defaults["heads"], **params})
        return cls(**params)

    @classmethod
    def from_params(cls, params: dict, explicit: set[str] | None = None) -> EvalConfig:
        """From a dict of flat settings; ``explicit``: the names the user set (default: all of ``params``), which a
        preset refuses when they differ from its value even if they equal the field's default."""
        known = set(cls._routes()) | set(_ALIASES)
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unknown evaluation parameters {unknown}; valid: {sorted(known)}")
        preset = params.get("preset") or ("cifar10-paper" if params.get("dataset") == "cifar10" else "")
        if preset:
            names = set(params) if explicit is None else explicit
            problems = preset_conflicts(preset, {k: params[k] for k in names if k in params})
            if problems:
                raise ValueError("; ".join(problems))
        return cls(**params)
