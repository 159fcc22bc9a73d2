"""Named experiment presets: the small CPU defaults ('digits') and the paper's CIFAR-10 settings.

Each preset is a frozen :class:`Preset` of frozen groups (grid, DC, LM, attack, evaluation data,
checkpoints); the grid and LM groups are the library's own settings classes (``GridConfig``, ``LMConfig``),
and every group uses the names the library functions use, so a caller writes e.g.
``make_grid(**p.grid.kwargs())`` or ``likelihood_maximization(den, x, **p.lm.kwargs())``.
Sources are docs/paper.md sections 2-4 and 7; where the paper and the released code differ the
field comment says which one a value follows.

``required_files(preset, data_root, ckpt)`` lists what is missing on disk for a preset and says
where to put it (CIFAR-10 python batches, imported EDM checkpoints).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType

from ..attacks.registry import attack_names, get_attack
from ..data.cifar10 import CIFAR10_FILES
from ..diffusion.lm import LMConfig
from ..diffusion.schedules import GridConfig

__all__ = [
    "AttackPreset",
    "CheckpointPreset",
    "DCPreset",
    "DataPreset",
    "PRESETS",
    "Preset",
    "PRESET_EVAL_FIELDS",
    "RequiredFiles",
    "attack_settings",
    "eval_defaults",
    "eval_settings",
    "get_preset",
    "preset_conflicts",
    "preset_names",
    "required_files",
]


@dataclass(frozen=True)
class DCPreset:
    """Diffusion-classifier settings (kwargs of ``DiffusionClassifier`` besides the grid)."""

    noise_mode: str = "fixed"  # 'fixed': one eps draw reused, a deterministic classifier (EOT 1 suffices)
    shared_noise: bool = True  # same eps for every class
    chunk_size: int = 4096  # max (image, class, level) triples per network call

    def kwargs(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AttackPreset:
    """Threat models and attack budget (docs/paper.md section 7)."""

    attack: str = "apgd-dlr"  # released code: AutoAttack custom mode, APGD-DLR only
    iterations: int = 100
    restarts: int = 5
    eot: int = 1  # EOT samples (1 for the deterministic variant)
    eps_linf: float = 8 / 255  # images in [0, 1]
    eps_l2: float = 0.5
    stadv_bound: float = 0.05  # StAdv flow bound (unseen threat)
    stadv_iterations: int = 100
    batch_size: int = 1  # the released code attacks one image at a time


@dataclass(frozen=True)
class DataPreset:
    """Which images are evaluated."""

    dataset: str = "cifar10"
    split: str = "test"
    num_test: int = 512  # the first 512 test images (main tables)
    num_ablation: int = 100  # the first 100 (ablations)


@dataclass(frozen=True)
class CheckpointPreset:
    """Denoiser checkpoints (file names inside the checkpoint folder ``ckpt``)."""

    classifier: str  # scores classes (conditional / multi-head)
    lm: str | None = None  # unconditional network for LM; None = the classifier's null label
    sources: tuple[str, ...] = ()  # original files ``rdc import-edm`` converts, same order
    heads: str = "single"  # the classifier network: one conditional head ('single') or 'multi'


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    grid: GridConfig  # the library's own settings classes: make_grid(**grid.kwargs())
    dc: DCPreset
    lm: LMConfig  # likelihood_maximization(..., config=lm)
    attack: AttackPreset
    data: DataPreset
    checkpoints: CheckpointPreset
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        """JSON-ready dict (for result records)."""
        return asdict(self)


PRESETS: Mapping[str, Preset] = MappingProxyType(
    {
        "digits": Preset(
            name="digits",
            description="small CPU run on scikit-learn's 8x8 digits with the shipped denoisers",
            grid=GridConfig(),
            dc=DCPreset(noise_mode="fixed", shared_noise=True),
            lm=LMConfig(),  # normalised-gradient steps (rdc_lib/diffusion/lm.py explains the step size)
            attack=AttackPreset(
                iterations=20, restarts=1, eps_linf=0.1, eps_l2=0.5, stadv_iterations=20, batch_size=60
            ),
            data=DataPreset(dataset="digits", num_test=60, num_ablation=60),
            checkpoints=CheckpointPreset(classifier="digits_single.safetensors"),
            notes=("one network with a null label serves DC and LM (label dropout), a documented deviation",),
        ),
        "cifar10-paper": Preset(
            name="cifar10-paper",
            description="the paper's CIFAR-10 settings with NVlabs EDM's released DDPM++ networks",
            grid=GridConfig(timesteps=1000),
            dc=DCPreset(noise_mode="fixed", shared_noise=False, chunk_size=2000),
            lm=LMConfig(step_size=0.1, optimizer="adam"),  # the paper's Adam learning rate
            attack=AttackPreset(),
            data=DataPreset(),
            checkpoints=CheckpointPreset(
                classifier="edm-cifar10-32x32-cond-vp.safetensors",
                lm="edm-cifar10-32x32-uncond-vp.safetensors",
                sources=("edm-cifar10-32x32-cond-vp.pkl", "edm-cifar10-32x32-uncond-vp.pkl"),
            ),
            notes=(
                "DC: conditional network, T = 1000 levels on linspace(1e-4, 3, 1001)[:-1], EDM weights",
                "LM: separate unconditional network (the conditional release was trained without a null label)",
                "LM optimizer Adam as in the released code; eta = 8/255 l_inf enforced (the released code does not)",
                "noise 'fixed' and unshared: the released RDC is deterministic and draws eps per class",
            ),
        ),
    }
)


def preset_names() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ValueError listing the valid names otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid choices: {', '.join(preset_names())}")
    return PRESETS[name]


# Evaluation settings (``rdc_lib.evaluation.EvalConfig`` fields) a preset fixes: an evaluation with a
# preset applies the preset's value or refuses a different one (``preset_conflicts``), never ignores it.
PRESET_EVAL_FIELDS = ("dataset", "timesteps", "noise_mode", "heads", "vote")


def eval_settings(preset: str | Preset) -> dict[str, object]:
    """The values of :data:`PRESET_EVAL_FIELDS` that ``preset`` fixes (vote 1: a preset's classifier is
    called once per image, as the released RDC is)."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    return dict(zip(PRESET_EVAL_FIELDS, (p.data.dataset, p.grid.timesteps, p.dc.noise_mode, p.checkpoints.heads, 1)))


def attack_settings(preset: str | Preset, norm: str = "linf", attack: str = "") -> dict[str, object]:
    """The attack budget of ``preset`` as ``EvalConfig`` fields (steps, restarts, eot, eps) for threat model
    ``norm``; a flow-bound attack (registry fact ``norms`` ('flow',), e.g. StAdv) or norm 'flow' takes the
    flow bound and its own iteration count. ``rdc eval --preset NAME`` fills the attack flags not given with these."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    a = p.attack
    get_attack(a.attack)  # the preset's own attack is a registered one
    # 'none' and other non-attack values are the evaluation's to accept or refuse, with its own list of names
    flow_bound = attack in attack_names() and get_attack(attack).norms == ("flow",)
    if norm == "flow" or flow_bound:
        return {"steps": a.stadv_iterations, "restarts": a.restarts, "eot": a.eot, "eps": a.stadv_bound}
    return {
        "steps": a.iterations,
        "restarts": a.restarts,
        "eot": a.eot,
        "eps": a.eps_linf if norm == "linf" else a.eps_l2,
    }


def eval_defaults(preset: str | Preset, norm: str = "linf", attack: str = "") -> dict[str, object]:
    """What ``rdc eval --preset NAME`` fills in for the flags not given: the attack budget
    (:func:`attack_settings`) and the number of test images of the main tables (``DataPreset.num_test``)."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    return {**attack_settings(p, norm, attack), "n": p.data.num_test}


def preset_conflicts(preset: str | Preset, values: Mapping[str, object]) -> list[str]:
    """One message per entry of ``values`` (field -> requested value) that ``preset`` fixes to another value."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    fixed = eval_settings(p)
    return [
        f"preset {p.name!r} fixes {name} = {fixed[name]!r}, got {name} = {value!r} "
        f"(--{name.replace('_', '-')}); drop it, or leave out the preset"
        for name, value in values.items()
        if name in fixed and value != fixed[name]
    ]


@dataclass(frozen=True)
class RequiredFiles:
    """Files a preset needs that are missing, and what to do about them (empty ``missing``: ready)."""

    missing: tuple[Path, ...]
    message: str

    @property
    def ok(self) -> bool:
        return not self.missing


def required_files(preset: str | Preset, data_root: str | Path | None, ckpt: str | Path) -> RequiredFiles:
    """Check that the files ``preset`` needs exist: dataset files under ``data_root`` (CIFAR-10's
    data_batch_1..5 and test_batch; digits needs none) and checkpoints in the folder ``ckpt``."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    ckpt = Path(ckpt)
    missing: list[Path] = []
    lines: list[str] = []
    if p.data.dataset == "cifar10":
        if data_root is None:
            raise ValueError(
                f"preset {p.name!r} needs data_root: the folder holding the CIFAR-10 python batches "
                f"({', '.join(CIFAR10_FILES)})"
            )
        root = Path(data_root)
        absent = [root / n for n in CIFAR10_FILES if not (root / n).is_file()]
        if absent:
            missing += absent
            lines.append(
                f"CIFAR-10: put {', '.join(a.name for a in absent)} (the python batches from "
                f"cifar-10-python.tar.gz, folder cifar-10-batches-py) in {root.resolve()}"
            )
    names = [n for n in (p.checkpoints.classifier, p.checkpoints.lm) if n]
    sources = dict(zip(names, p.checkpoints.sources)) if p.checkpoints.sources else {}
    for name in names:
        path = ckpt / name
        if path.is_file():
            continue
        missing.append(path)
        src = sources.get(name)
        if src is None:
            lines.append(f"checkpoint {path} is missing; see data/README.md for the command that reproduces it")
        elif (ckpt / src).is_file():
            lines.append(f"checkpoint {path} is missing: convert it with `rdc import-edm {ckpt / src} {path}`")
        else:
            lines.append(
                f"checkpoint {path} is missing: download {src} from the NVlabs EDM release "
                f"(https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/), put it in {ckpt.resolve()}, "
                f"then run `rdc import-edm {ckpt / src} {path}`"
            )
    if not missing:
        return RequiredFiles((), f"preset {p.name!r}: all files present")
    return RequiredFiles(
        tuple(missing), f"preset {p.name!r} needs {len(missing)} missing file(s):\n- " + "\n- ".join(lines)
    )
