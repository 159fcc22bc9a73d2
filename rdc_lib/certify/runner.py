"""``rdc certify``: certify a smoothed classifier on a slice of the test split, per image, resumably.

For each image: Cohen's CERTIFY (n0 selection + n_draws estimation draws, Clopper-Pearson at alpha), and,
with ``attack_steps > 0``, the empirical side: an l2 attack with EOT through the smoothing noise at every
radius > 0 of ``radii`` and the Monte-Carlo prediction of g at the adversarial image. One JSON line per
image is appended (and flushed) to the records file as soon as the image is done, so an interrupted run
resumes at the next image with identical draws (every image's generators derive from (seed, index)).
Records are keyed by the configuration without the slice, so a larger or shifted slice reuses them.
Radii and ``pixel_sigma`` are pixel-space l2 (images in [0, 1]); ``sigma`` alone names model-space noise levels.
Fields renamed in issue 38 (``STORED_NAMES``: ``n`` -> ``n_draws``, ``sigma`` -> ``pixel_sigma``, ``batch`` ->
``draw_batch``) keep their old names in stored headers and rows, which are migrated on read
(``migrate_stored``); keys hash the old names, so every stored key and records file stays valid.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import MappingProxyType

import torch
from torch import nn

from ..core.choices import HEADS, check_choice
from ..core.paths import checkpoint_path, default_denoiser, stored_denoiser_name
from ..core.progress import progress_bar
from ..data import load_dataset
from ..defenses.baselines import load_classifier
from ..evaluation.stats import wilson
from ..models import checkpoints  # checkpoints.load_denoiser is looked up per call (tests wrap it)
from ..models.diffusers_adapter import is_diffusers_ref
from .bases import BASES, POSTERIORS, build_base
from .empirical import attack_smoothed, smoothed_correct
from .smoothing import ABSTAIN, Smoothed, certify, check_alpha, check_draws, check_radii, check_sigma

DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)

# CertifyConfig fields renamed in issue 38: old (stored) name -> field. Stored record headers and result rows of
# earlier versions carry the old names; ``migrate_stored`` renames them on read, and keys hash the old names so
# every stored key (and records file name) stays valid.
STORED_NAMES = MappingProxyType({"n": "n_draws", "sigma": "pixel_sigma", "batch": "draw_batch"})


def migrate_stored(config: dict) -> dict:
    """``config`` (a stored header or row) with the old field names of ``STORED_NAMES`` renamed to today's; a dict
    that holds both an old and its new name with different values is refused (ValueError naming both)."""
    out = dict(config)
    for old, new in STORED_NAMES.items():
        if old not in out:
            continue
        value = out.pop(old)
        if new in out and out[new] != value:
            raise ValueError(
                f"stored certify configuration has {old}={value!r} and {new}={out[new]!r}: {old} is the "
                f"old name of {new}; keep one"
            )
        out[new] = value
    return out


def _hash(identity: dict) -> str:
    """16 hex digits of ``identity`` written with the stored (pre-rename) names."""
    stored = {_OLD_NAMES.get(k, k): v for k, v in identity.items()}
    return hashlib.sha256(json.dumps(stored, sort_keys=True).encode()).hexdigest()[:16]


_OLD_NAMES = {new: old for old, new in STORED_NAMES.items()}


@dataclass(frozen=True)
class CertifyConfig:
    base: str = "denoised"  # one of BASES
    pixel_sigma: float = 0.25  # smoothing noise std, pixel space [0, 1]
    n_images: int = 100  # test images
    offset: int = 0  # first test image
    n0: int = 100  # selection draws
    n_draws: int = 1000  # estimation draws (Monte Carlo)
    alpha: float = 0.001  # failure probability of each certificate
    radii: tuple = DEFAULT_RADII  # pixel-space l2 radii to report
    seed: int = 0
    heads: str = "multi"  # denoiser of the diffusion bases
    denoiser: str = ""  # checkpoint name or path; "" = the default of heads, stored resolved
    timesteps: int = 4  # levels of the (noised) DC
    posterior: str = "exact"  # noised DC: 'exact' | 'approx'
    draw_batch: int = 250  # draws per base call
    attack_steps: int = 10  # empirical side: l2 PGD steps (0 = no attack)
    attack_eot: int = 2  # EOT calls per gradient
    attack_draws: int = 8  # smoothing draws inside the soft smoothed classifier
    pred_draws: int = 100  # draws for g's prediction at the adversarial image

    def __post_init__(self) -> None:
        if self.base not in BASES:
            raise ValueError(f"unknown base {self.base!r}; valid choices: {', '.join(BASES)}")
        check_sigma(self.pixel_sigma)
        check_alpha(self.alpha)
        check_draws(self.n0, self.n_draws, self.alpha)
        object.__setattr__(self, "radii", tuple(check_radii(self.radii)))
        for name in ("n_images", "timesteps", "draw_batch", "attack_eot", "attack_draws", "pred_draws"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("offset", "attack_steps", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        check_choice("heads", self.heads, HEADS)
        if not self.denoiser:
            # stored records with denoiser "" meant the legacy checkpoint of heads
            # (rdc_lib.core.paths.stored_denoiser_name)
            object.__setattr__(self, "denoiser", default_denoiser(self.heads))
        if self.posterior not in POSTERIORS:
            raise ValueError(f"unknown posterior {self.posterior!r}; valid choices: {', '.join(POSTERIORS)}")

    def identity(self) -> dict:
        d = asdict(self)
        d["radii"] = list(d["radii"])
        return d

    def key(self) -> str:
        """16 hex digits of the identity under its stored names (``STORED_NAMES``: unchanged by the renames)."""
        return _hash(self.identity())

    def record_identity(self) -> dict:
        """What a per-image record depends on: everything but the slice (n_images, offset)."""
        d = self.identity()
        del d["n_images"], d["offset"]
        return d

    def label(self) -> str:
        """A short human name, e.g. 'noised-dc s=0.25 T=4 digits_film_single'."""
        extra = "" if self.base == "denoised" else f" T={self.timesteps}"
        return f"{self.base} s={self.pixel_sigma:g}{extra} {Path(self.denoiser).stem}"

    @classmethod
    def from_stored(cls, config: dict) -> "CertifyConfig":
        """The configuration a stored one (a record header or a result row of any code version) was run with:
        a stored denoiser "" meant the legacy checkpoint of its heads (rdc_lib.core.paths.stored_denoiser_name), never
        today's default; old field names (``STORED_NAMES``) are migrated; the other keys of ``config`` that are not
        fields are ignored."""
        config = migrate_stored(config)
        params = {f.name: config[f.name] for f in fields(cls) if f.name in config}
        params["denoiser"] = stored_denoiser_name({"heads": cls.heads, **params})
        return cls.from_params(params)

    @classmethod
    def from_params(cls, params: dict) -> "CertifyConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        renamed = [f"{old!r} (now {STORED_NAMES[old]!r})" for old in unknown if old in STORED_NAMES]
        if renamed:
            raise ValueError(f"renamed certify parameters {', '.join(renamed)}; valid: {sorted(known)}")
        if unknown:
            raise ValueError(f"unknown certify parameters {unknown}; valid: {sorted(known)}")
        params = dict(params)
        if "radii" in params:
            params["radii"] = tuple(params["radii"])
        return cls(**params)


def build_smoothing_base(cfg: CertifyConfig, device: torch.device | str = "cpu") -> nn.Module:
    """The base classifier of ``cfg`` from the shipped checkpoints."""
    ref = cfg.denoiser
    path = Path(ref) if ref.endswith(".safetensors") or is_diffusers_ref(ref) else checkpoint_path(ref)
    den = checkpoints.load_denoiser(path, device=device).eval()
    cnn = None
    if cfg.base == "denoised":
        cnn = load_classifier(checkpoint_path("digits_cnn"), device=device).eval()
    return build_base(
        cfg.base, den, cfg.pixel_sigma, timesteps=cfg.timesteps, classifier=cnn, posterior=cfg.posterior, seed=cfg.seed
    ).to(device)


def _image_seed(seed: int, index: int, stream: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{index}/{stream}".encode()).digest()[:7], "little")


def certify_image(base: nn.Module, x: torch.Tensor, y: int, index: int, cfg: CertifyConfig) -> dict:
    """One record: certificate, empirical robustness per radius, seconds and network passes."""
    t0 = time.perf_counter()
    dev = x.device
    if hasattr(base, "reseed"):
        base.reseed(_image_seed(cfg.seed, index, 0))
    gen = torch.Generator(device=dev).manual_seed(_image_seed(cfg.seed, index, 1))
    g = Smoothed(base, cfg.pixel_sigma, gen, cfg.draw_batch)
    cert = certify(g, x, n0=cfg.n0, n=cfg.n_draws, alpha=cfg.alpha)
    t_cert = time.perf_counter() - t0
    rec = {
        "index": index,
        "label": y,
        **cert.as_dict(),
        "correct": cert.prediction == y,
        "seconds_certify": t_cert,
        "passes_certify": base.network_passes(cfg.n0 + cfg.n_draws),
    }
    if cfg.attack_steps > 0:
        emp = {}
        pred_gen = torch.Generator(device=dev).manual_seed(_image_seed(cfg.seed, index, 2))
        for r in cfg.radii:
            xa = attack_smoothed(
                base,
                x.unsqueeze(0),
                torch.tensor([y], device=dev),
                cfg.pixel_sigma,
                r,
                steps=cfg.attack_steps,
                eot=cfg.attack_eot,
                draws=cfg.attack_draws,
                seed=_image_seed(cfg.seed, index, 3) % 2**31,
            )
            emp[f"{r:g}"] = smoothed_correct(
                base,
                xa,
                torch.tensor([y]),
                cfg.pixel_sigma,
                pred_draws=cfg.pred_draws,
                generator=pred_gen,
                draw_batch=cfg.draw_batch,
            )[0]
        rec["empirical"] = emp
    rec["seconds"] = time.perf_counter() - t0
    return rec


def summarize(cfg: CertifyConfig, records: list[dict], seconds: float) -> dict:
    """The JSON result: certified (and empirical) accuracy per radius with Wilson intervals, abstention, cost."""
    n = len(records)
    cert = {
        f"{r:g}": wilson(sum(rec["correct"] and rec["radius"] >= r for rec in records), n).as_dict() for r in cfg.radii
    }
    out = {
        **cfg.identity(),
        "label": cfg.label(),
        "images": n,
        "certified": cert,
        "certified_acc": {r: c["value"] for r, c in cert.items()},
        "abstain_rate": sum(rec["prediction"] == ABSTAIN for rec in records) / max(n, 1),
        "draws_per_image": cfg.n0 + cfg.n_draws,
        "radius_unit": "l2, pixel space [0, 1]",
        "seconds_per_image": sum(rec["seconds_certify"] for rec in records) / max(n, 1),
        "passes_per_image": sum(rec["passes_certify"] for rec in records) / max(n, 1),
        "seconds": seconds,
    }
    if cfg.attack_steps > 0:
        emp = {f"{r:g}": wilson(sum(rec["empirical"][f"{r:g}"] for rec in records), n).as_dict() for r in cfg.radii}
        out["empirical"] = emp
        out["empirical_acc"] = {r: e["value"] for r, e in emp.items()}
        # an image certified at radius >= r that the attack broke at r (possible with prob. <= alpha + MC error)
        out["violations"] = {
            f"{r:g}": sum(rec["correct"] and rec["radius"] >= r and not rec["empirical"][f"{r:g}"] for rec in records)
            for r in cfg.radii
        }
        out["consistent"] = consistency(out)["passed"]
    return out


def consistency(result: dict) -> dict:
    """Certified accuracy at r must not exceed the empirical robust accuracy at r: value <= empirical high end."""
    rows = {
        r: {
            "certified": c["value"],
            "empirical_high": result["empirical"][r]["high"],
            "passed": c["value"] <= result["empirical"][r]["high"] + 1e-12,
        }
        for r, c in result["certified"].items()
    }
    return {"passed": all(v["passed"] for v in rows.values()), "radii": rows}


def records_path(records_dir: str | Path, cfg: CertifyConfig) -> Path:
    """The records file of ``cfg`` (its name hashes the record identity under the stored names: unchanged by the
    renames of ``STORED_NAMES``)."""
    return Path(records_dir) / f"certify_{cfg.base}_{cfg.pixel_sigma:g}_{_hash(cfg.record_identity())}.jsonl"


def load_records(path: Path | None, cfg: CertifyConfig) -> dict[int, dict]:
    """Finished images of an earlier run with the same configuration (a different header: start afresh)."""
    if path is None or not path.is_file():
        return {}
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    header = json.loads(lines[0]).get("config") if lines else None
    if not isinstance(header, dict) or migrate_stored(header) != cfg.record_identity():  # old names: migrated
        return {}
    out = {}
    for ln in lines[1:]:
        try:
            rec = json.loads(ln)
        except json.JSONDecodeError:  # a line cut by a kill: that image is redone
            continue
        out[rec["index"]] = rec
    return out


def run_certify(
    cfg: CertifyConfig,
    *,
    device: str | torch.device = "cpu",
    records_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Certify ``cfg.n_images`` test images; returns ``summarize``'s dict (resumes from ``records_dir``)."""
    t0 = time.perf_counter()
    device = torch.device(device)
    x_all, y_all = load_dataset("digits", "test")
    if cfg.offset + cfg.n_images > x_all.shape[0]:
        raise ValueError(f"offset + n_images = {cfg.offset + cfg.n_images} exceeds the {x_all.shape[0]} test images")
    base = build_smoothing_base(cfg, device)
    path = records_path(records_dir, cfg) if records_dir is not None else None
    done = load_records(path, cfg)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:  # rewrite: header + the complete records (drops a cut last line)
            f.write(json.dumps({"config": cfg.record_identity()}) + "\n")
            for i in sorted(done):
                f.write(json.dumps(done[i]) + "\n")
    bar = None
    if progress:
        bar = progress_bar(cfg.n_images, f"certify {cfg.label()}", "img", initial=len(done))
    for j in range(cfg.n_images):
        index = cfg.offset + j
        if index in done:
            continue
        rec = certify_image(base, x_all[index].to(device), int(y_all[index]), index, cfg)
        done[index] = rec
        if path is not None:
            with open(path, "a") as f:
                f.write(json.dumps(rec) + "\n")
                f.flush()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    records = [done[cfg.offset + j] for j in range(cfg.n_images)]  # done may hold images of other slices
    return summarize(cfg, records, time.perf_counter() - t0)


def certify_params(params: dict) -> dict:
    """``run_certify`` from a plain dict of ``CertifyConfig`` fields (plus device, records_dir)."""
    params = dict(params)
    device = params.pop("device", "cpu")
    records_dir = params.pop("records_dir", None)
    return run_certify(CertifyConfig.from_params(params), device=device, records_dir=records_dir, progress=False)


def certify_cell(**params) -> dict:
    """The sweep target ``function: rdc_lib.certify.runner:certify_cell``: keyword parameters = the fields of
    ``CertifyConfig`` (``radii`` a list) plus ``device`` and ``records_dir`` (set it to resume a killed cell)."""
    return certify_params(params)


def _cell_signature() -> inspect.Signature:
    types = {"int": int, "float": float, "str": str, "tuple": list}
    ps = [
        inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=list(f.default) if f.name == "radii" else f.default,
            annotation=types.get(str(f.type), str),
        )
        for f in fields(CertifyConfig)
    ]
    ps += [
        inspect.Parameter("device", inspect.Parameter.KEYWORD_ONLY, default="cpu", annotation=str),
        inspect.Parameter("records_dir", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=str | None),
    ]
    return inspect.Signature(ps, return_annotation=dict)


certify_cell.__signature__ = _cell_signature()  # one home for the parameters: the sweep validator reads these
