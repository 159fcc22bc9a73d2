"""Every command README.md shows works as written, from the repository root of a fresh copy.

The commands are read from README.md itself (fenced ``bash`` blocks, one command per line, and inline
code that starts with a command word), so a command added to the README is checked without editing
this file, or fails here until it is: every command is either in RUN (run literally; ``variants`` spell
out the optional ``[...]`` parts) or in EXCLUDED with the reason it cannot run here (a GPU, CIFAR-10
files, a long run). Excluded ``rdc`` commands without placeholders are still parsed by rdc's own
argument parser, so a renamed flag fails. The same holds for the commands printed in docs/*.md, with
rules instead of a list (those files are generated): the cheap ones run, the others are parsed.

The copy: the repository's files (``git ls-files``) in a temporary folder, ``.venv`` pointing at this
environment with its set-up stamp in place (the state after ``make test``'s set-up), PYTHONPATH at the
copy, the venv's bin/ on PATH (an activated venv, as the README's ``rdc ...`` commands assume), one
thread per process. A make command whose dry run would reinstall anything is refused, not run.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from rdc_lib.evaluation.checks import MIN_CHECK_IMAGES

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
COMMAND_WORDS = ("make", "rdc", "papermill", "python", "pytest", "pip", "conda", "bash", "source")
PLACEHOLDERS = ("...", "FILE", "STORE", "DIR")


# ------------------------------------------------------------------------------------ extraction


def _is_command(text: str) -> bool:
    first = text.split()[0] if text.split() else ""
    return first in COMMAND_WORDS or first.startswith(".venv/bin/")


def extract_commands(markdown: str) -> list[str]:
    """Commands of a markdown text: lines of fenced shell blocks (comments dropped, YAML/other blocks
    skipped) and inline code spans that start with a command word; whitespace collapsed, in order, unique."""
    found: list[str] = []
    fence = re.compile(r"^```([\w-]*)\n(.*?)^```", re.S | re.M)
    for lang, body in fence.findall(markdown):
        if lang not in ("", "bash", "sh", "shell", "console"):
            continue
        for line in re.sub(r"\\\n\s*", " ", body).splitlines():  # backslash continuations joined
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#") and _is_command(line):
                found.append(" ".join(line.split()))
    prose = fence.sub("", markdown)
    for span in re.findall(r"`([^`]+)`", prose):
        text = " ".join(span.split())
        if _is_command(text) and not (text.split()[0] == "rdc" and len(text.split()) <= 2):  # `rdc eval`: a name
            found.append(text)
    return list(dict.fromkeys(found))


# ------------------------------------------------------------------------------- what runs here


@dataclass(frozen=True)
class Run:
    """How a command is run: ``variants`` (default: the command itself), the exit status and output it must give."""

    variants: tuple[str, ...] = ()
    rc: int = 0
    expect: tuple[str, ...] = ()
    timeout: int = 900


SMALL_RUN = "make run PARAMS=notebooks/params/small.yaml"
RUN: dict[str, Run] = {
    SMALL_RUN: Run(expect=("summary.md", '"failed": []')),
    ".venv/bin/papermill notebooks/02_likelihood_maximization.ipynb out.ipynb -p n_images 8 -p lm_steps 10": Run(),
    "rdc eval --defense dc --attack none --n 360 --seed 0 --timesteps 32 --heads multi --json": Run(
        expect=('"defense": "dc"', '"n": 360')
    ),
    # documented behaviour without the files: exit 1, and the list of what is missing and where it goes
    "rdc presets cifar10-paper --check --data-root ~/cifar-10-batches-py": Run(
        rc=1, expect=("missing", "data_batch_1", "rdc import-edm")
    ),
    "rdc sweep examples/sweeps/digits_eps.yaml [--status] [--retry-failed] [--workers 2]": Run(
        variants=("rdc sweep examples/sweeps/digits_eps.yaml --status",), expect=('"total": 12', '"pending": 12')
    ),
    "make docs": Run(),
    "make lint": Run(),
    ".venv/bin/python benchmarks/regenerate_docs.py": Run(),
}

EXCLUDED: dict[str, str] = {
    "make run": "the full main job (about 3 minutes on an idle machine, longer on a shared CPU); the same job with "
    f"the README's small parameters runs here ({SMALL_RUN}) and tests/test_notebooks.py runs every notebook",
    "make test": "the whole test suite, this test included",
    "make test-fast": "a subset of the test suite this test belongs to",
    "make lab": "starts a JupyterLab server and waits for a browser; tests/browser drives it headless",
    "make benchmarks": "about 20 minutes of benchmarks (bench_autoattack alone about 15)",
    "conda env create -f environment.yml": "needs conda and the network; tests/test_env.py keeps environment.yml in "
    "sync with pyproject.toml",
    'pip install -e ".[dev,lab,slurm,diffusers]"': "part of make's set-up, already done "
    "(it would rewrite the environment)",
    "rdc train --heads multi --out data/checkpoints/digits_multi.safetensors": "trains a denoiser from scratch "
    "(tens of minutes on a CPU)",
    "rdc train-baseline --kind at-cnn --out data/checkpoints/digits_at_cnn.safetensors": "adversarial training of "
    "the CNN (minutes)",
    "rdc eval --defense rdc --attack apgd-ce --norm linf --eps 0.1 --n 64 --timesteps 16 --json": "an adaptive "
    "attack through RDC on 64 images: most of an hour on a CPU",
    "rdc import-edm edm-cifar10-32x32-cond-vp.pkl data/checkpoints/edm-cifar10-32x32-cond-vp.safetensors": "needs "
    "NVlabs' EDM pickle (a download); tests/test_edm_import.py imports a pickle of the same format",
    "rdc report runs/sweeps/digits_eps/results.sqlite": "needs the finished sweep (its dc cells take minutes each); "
    "tests/test_sweep.py runs rdc report on a real store",
    "rdc run-notebooks --out runs/latest [--params notebooks/params/small.yaml]": f"what `make run` runs; "
    f"{SMALL_RUN} runs it (the Makefile check below holds the two together)",
    "rdc eval --defense rdc --attack apgd-ce --eot 3 --verify 4 --n-eval 10 ...": "arguments elided ('...')",
    "rdc eval ... --json": "arguments elided ('...')",
    "rdc certify ... --json": "arguments elided ('...')",
    "rdc run-notebooks --only 02 -p n_images 8": "notebook 02 through the main job, the notebook the papermill example "
    "above runs; tests/test_notebooks.py runs rdc run-notebooks",
    "rdc sweep FILE": "a placeholder (FILE); the command list has the real one",
    "rdc report STORE": "a placeholder (STORE); the command list has the real one",
    "rdc presets cifar10-paper --check --data-root DIR": "a placeholder (DIR); the command list has a real one",
    "rdc eval --dataset cifar10 --preset cifar10-paper --data-root DIR --ckpt-dir DIR --defense rdc --attack "
    "apgd-dlr --device cuda": "CIFAR-10 files, the EDM checkpoints and a GPU",
    "rdc train --heads multi --head-channels 32 --distill-from digits_single --init-from digits_multi_h32 --out "
    "OUT.safetensors": "distillation training (tens of minutes on a CPU); tests/test_study.py trains a few steps",
    "rdc certify --base noised-dc --pixel-sigma 0.25 --n-images 100 --n0 100 --n-draws 1000 --alpha 0.001 --radii 0 "
    "0.25 0.5 --json": "certifies 100 images with 1,100 draws each (tens of minutes on a CPU); tests/test_certify.py "
    "runs rdc certify --json on a few images",
    "rdc train --arch film --heads single --batch-size 256 --out OUT.safetensors": "trains a denoiser from scratch "
    "(tens of minutes on a CPU)",
    "rdc eval --defense dc --denoiser digits_multi_h32_distill --attack autoattack --noise-mode fixed --T 16 "
    "--json": "the AutoAttack-style ensemble on 64 images with its sanity checks: tens of minutes on a CPU",
    "rdc eval --defense cnn --attack pgd --records DIR --restart": "a placeholder (DIR); "
    "tests/test_stored_state.py runs it",
    "rdc train --out OUT.safetensors --restart": "trains a denoiser; tests/test_stored_state.py runs it",
    "rdc sweep SWEEP.yaml --restart-store": "a placeholder (SWEEP.yaml); tests/test_stored_state.py runs it",
    "rdc sweep SWEEP.yaml --retry-failed": "a placeholder (SWEEP.yaml); tests/test_sweep.py runs it",
}


def _runs(command: str) -> tuple[str, ...]:
    spec = RUN[command]
    return spec.variants or (command,)


# --------------------------------------------------------------------------------- the fresh copy


def _repository_files() -> list[str]:
    if (REPO / ".git").exists() and shutil.which("git"):
        out = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
        return [f for f in out.splitlines() if f and f != ".venv" and (REPO / f).is_file()]
    skip = {".git", ".venv", "runs", "__pycache__", ".pytest_cache"}
    return [
        str(p.relative_to(REPO)) for p in REPO.rglob("*") if p.is_file() and not skip & set(p.relative_to(REPO).parts)
    ]


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A copy of the repository with an installed .venv (see the module docstring) and its environment."""
    root = tmp_path_factory.mktemp("clone")
    for rel in _repository_files():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, root / rel)  # keeps times: make compares them
    venv = Path(sys.prefix)
    (root / ".venv").mkdir()
    for entry in venv.iterdir():
        if entry.name != ".installed":
            (root / ".venv" / entry.name).symlink_to(entry)
    (root / ".venv" / ".installed").touch()  # set-up done: the stamp is newer than pyproject.toml
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(root),
        PATH=f"{root / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        VIRTUAL_ENV=str(root / ".venv"),
    )
    env.pop("RDC_DATA_DIR", None)
    for name in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES"):  # under `make test`: a user's shell has none
        env.pop(name, None)
    return root, env


def _shell(command: str, root: Path, env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=root, env=env, capture_output=True, text=True, timeout=timeout)


def _refuse_installs(command: str, root: Path, env: dict[str, str]) -> None:
    if command.split()[0] == "make":
        dry = _shell(command.replace("make", "make -n", 1), root, env, 60)
        assert "pip install" not in dry.stdout, f"{command} would reinstall the environment:\n{dry.stdout}"


# ------------------------------------------------------------------------------------------ tests


def test_extraction_finds_blocks_and_inline_commands():
    text = (
        "Run `make run` or\n`rdc eval --n\n 2` and `x = 1`, `rdc sweep`.\n\n"
        "```bash\nrdc sweep a.yaml   # runs it\n# note\n```\n"
        "```yaml\nname: rdc x\n```\n"
    )
    assert extract_commands(text) == ["rdc sweep a.yaml", "make run", "rdc eval --n 2"]


def test_every_readme_command_is_run_or_excluded():
    commands = extract_commands(README.read_text())
    assert SMALL_RUN in commands and len(commands) >= 10
    both = set(RUN) & set(EXCLUDED)
    assert not both, f"both run and excluded: {both}"
    new = [c for c in commands if c not in RUN and c not in EXCLUDED]
    stale = [c for c in list(RUN) + list(EXCLUDED) if c not in commands]
    assert not new, f"README.md shows commands this test neither runs nor excludes (add them to RUN or EXCLUDED): {new}"
    assert not stale, f"RUN / EXCLUDED name commands README.md no longer shows: {stale}"


def _parse_rdc(command: str) -> None:
    from rdc_lib.cli import build_parser

    argv = shlex.split(os.path.expanduser(command))[1:]
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"rdc cannot parse {command!r} (exit {exc.code})") from None


@pytest.mark.parametrize(
    "command",
    [
        c
        for c in EXCLUDED
        if c.startswith("rdc ")
        and len(c.split()) > 2
        and not any(p in c.split() for p in PLACEHOLDERS)
        and "[" not in c
    ],
)
def test_excluded_rdc_commands_parse(command):
    _parse_rdc(command)


def test_a_changed_flag_fails_the_parse_check():
    with pytest.raises(AssertionError, match="rdc cannot parse"):
        _parse_rdc("rdc eval --defenze dc --n 2")


def test_run_notebooks_line_is_what_make_run_runs(fresh_copy):
    root, env = fresh_copy
    dry = _shell(f"make -n {SMALL_RUN.split(maxsplit=1)[1]}", root, env, 60)
    assert dry.returncode == 0 and "pip install" not in dry.stdout, dry.stdout + dry.stderr
    assert (
        dry.stdout.strip().splitlines()[-1].split()
        == ".venv/bin/rdc run-notebooks --out runs/latest --params notebooks/params/small.yaml".split()
    )


@pytest.mark.slow
@pytest.mark.parametrize("command", list(RUN))
def test_readme_command_works_as_written(command, fresh_copy):
    root, env = fresh_copy
    spec = RUN[command]
    for variant in _runs(command):
        _refuse_installs(variant, root, env)
        proc = _shell(variant, root, env, spec.timeout)
        output = proc.stdout + proc.stderr
        assert proc.returncode == spec.rc, (
            f"{variant!r} exited {proc.returncode}, expected {spec.rc}:\n{output[-4000:]}"
        )
        missing = [e for e in spec.expect if e not in output]
        assert not missing, f"{variant!r}: output lacks {missing}:\n{output[-4000:]}"


def test_the_runner_can_fail(fresh_copy):
    """The control: a README-style command that cannot work is reported as failing, from the same copy."""
    root, env = fresh_copy
    proc = _shell(
        ".venv/bin/papermill notebooks/02_likelihood_maximization.ipynb out.ipynb -p n_images 0", root, env, 300
    )
    assert proc.returncode != 0 and "notebook parameter n_images = 0" in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------ docs/*.md


def current_paths(command: str) -> str:
    """``command`` with each ``benchmarks/<script>`` of the flat layout before issue 38 (rows recorded then name
    scripts so) at the script's place now (benchmarks/timing/ or benchmarks/drivers/)."""

    def move(m: re.Match) -> str:
        found = list((REPO / "benchmarks").glob(f"*/{m.group(1)}"))
        flat = (REPO / "benchmarks" / m.group(1)).is_file()
        return f"benchmarks/{found[0].parent.name}/{m.group(1)}" if len(found) == 1 and not flat else m.group(0)

    return re.sub(r"benchmarks/(\w+\.(?:py|yaml))", move, command)


def _docs_rule(command: str) -> str | None:
    """'run' for a cheap command, the reason for one that is not run here, None for an unknown kind of command."""
    command = current_paths(command)
    words = command.split()
    if command == "python -c":
        return "a fragment in a table, not a command"
    if command == "source .venv/bin/activate":
        return "activates the environment: the copy's environment already is (PATH, PYTHONPATH)"
    if "benchmarks/drivers/theory_report.py" in command or "benchmarks/timing/bench_autoattack.py" in command:
        return "a long benchmark (its doc gives the minutes)"
    if "benchmarks/timing/gpu_ddpmpp.py" in command:
        return "run" if "--device cpu" in command else "needs a GPU"
    if "benchmarks/regenerate_docs.py" in command:
        return "run"
    if words[0] == "pytest":
        return "a test of the suite (run by make test)"
    if "benchmarks/drivers/distill_gap.py" in command:
        return "compares denoisers on 200 test images: about a minute of one core (the doc gives its figures)"
    if "benchmarks/timing/bench_dc_cost.py" in command:
        return "times attack gradients of several denoisers: minutes of one core (the doc gives its figures)"
    if "benchmarks/timing/bench_grad_cost.py" in command:
        return "times old against new attack gradients of both defaults: minutes of one core (the doc gives them)"
    if words[:2] == ["rdc", "certify"]:
        return "certification of many images with 1,100 draws each: minutes to hours on a CPU (arguments parsed)"
    if words[:2] == ["rdc", "train"]:
        return "trains a denoiser: minutes to tens of minutes on a CPU (arguments parsed)"
    if words[:2] == ["rdc", "sweep"] and "--status" not in words:
        return "runs every cell of a sweep: CPU-hours for a diffusion defense, the doc gives them (arguments parsed)"
    if any(
        f"benchmarks/{name}" in command
        for name in (
            "timing/profile_strongest.py run",
            "timing/bench_strongest.py",
            "drivers/certify_report.py",
            "timing/bench_certify.py",
            "drivers/evaluation_report.py",
            "drivers/denoiser_study.py run",
            "drivers/crosscheck_torchattacks.py run",
            "timing/bench_parallel.py",
            "drivers/grid_levels.py",
        )
    ):
        return "a long benchmark or its doc mode over the run's own records (the doc gives the minutes)"
    if (
        words[:2] == ["rdc", "eval"]
        and "--n" in words
        and int(words[words.index("--n") + 1]) < MIN_CHECK_IMAGES
        and "--run-checks" not in words
    ):
        return (
            "a row measured when the sanity checks used 16 images; rdc eval now refuses checks on fewer than "
            f"{MIN_CHECK_IMAGES} images and says so (the doc notes it under Commands)"
        )
    if words[:2] == ["rdc", "eval"]:
        defense = words[words.index("--defense") + 1] if "--defense" in words else "rdc"
        if defense in ("cnn", "at-cnn") and "autoattack" not in words:
            return "run"
        return "a diffusion defense or the AutoAttack ensemble: minutes to hours on a CPU (arguments parsed)"
    return None


def _doc_commands() -> list[str]:
    return list(dict.fromkeys(c for doc in DOCS for c in extract_commands(doc.read_text())))


def test_recorded_commands_find_the_moved_scripts():
    assert current_paths("python benchmarks/gpu_ddpmpp.py --out benchmarks/x.py") == (
        "python benchmarks/timing/gpu_ddpmpp.py --out benchmarks/x.py"
    )
    for unchanged in ("python benchmarks/drivers/grid_levels.py run", "python benchmarks/regenerate_docs.py"):
        assert current_paths(unchanged) == unchanged


def test_every_docs_command_is_run_or_excluded():
    unknown = [c for c in _doc_commands() if _docs_rule(c) is None]
    assert not unknown, f"docs/*.md show commands of a kind this test has no rule for (add one): {unknown}"


@pytest.mark.parametrize("command", [c for c in _doc_commands() if c.startswith("rdc ") and _docs_rule(c) != "run"])
def test_excluded_docs_rdc_commands_parse(command):
    _parse_rdc(command)


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in _doc_commands() if _docs_rule(c) == "run"])
def test_cheap_docs_command_works_as_written(command, fresh_copy):
    root, env = fresh_copy
    proc = _shell(current_paths(command), root, env, 900)
    assert proc.returncode == 0, f"{command!r} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}"
