"""Run a declared grid of runs (a study file): backends x K x seeds x budgets x variants.

    python experiments/sweep.py experiments/studies/screens.toml              # run what is left
    python experiments/sweep.py experiments/studies/screens.toml --jobs       # one command a line
    python experiments/sweep.py experiments/studies/screens.toml --parallel 4 # 4 at once (a GPU)
    python experiments/sweep.py experiments/studies/screens.toml --torchrun 8 # each on 8 GPUs
    python experiments/sweep.py experiments/studies/screens.toml --code ../frozen  # its code

Every run is one `experiments/run.py` command writing
`<out>/<study>/<variant>-k<K>-<budget>/<model>-<preset>-seed<seed>/`; a finished run (its
test_metrics.json written) is skipped and a killed one resumes from its last checkpoint, so the
same command continues a study. `--jobs` prints the commands for a scheduler (a Slurm array:
docs/gpu.md). The study file (TOML):

    name = "screens"
    preset = "cpu"
    models = ["delay", "flat", "megabyte", "valle"]
    codebooks = [4]
    seeds = [0]
    budget_flops = [9e13]
    set = ["generate.split=valid"]          # every run
    [variants]                              # name -> overrides; each is crossed with the rest
    "code-0.5" = ["model.code_dropout=0.5"]
    [per_model]                             # a backend's own overrides (e.g. the screens' pick)
    valle = ["model.code_dropout=0.3"]

A study frozen at one commit names it (`commit = "e81a758"`): the sweep then runs and lists its
jobs only from a clean checkout of that commit (`--code`, a worktree of it), never from code
written since. A study scored across sittings names the machine its scores are made on
(`scored_on = {cpu = "AMD EPYC", vector_unit = "AVX2", ...}`: eval/score.py's `scored_on`);
eval/study.py then publishes only the scores made there (docs/study.md).
"""

import argparse
import itertools
import os
import re
import shlex
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_KEYS = {
    "name", "preset", "models", "codebooks", "seeds", "budget_flops", "set", "variants",
    "per_model", "commit", "scored_on",
}  # fmt: skip
_HASH = r"[0-9a-f]{7,40}"  # a git commit, abbreviated or whole


class StudyError(ValueError):
    """A study file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Job:
    model: str
    k: int
    seed: int
    budget: float
    variant: str
    overrides: tuple[str, ...]
    out: Path  # the parent of the run directory
    preset: str

    @property
    def run_dir(self) -> Path:
        return self.out / f"{self.model}-{self.preset}-seed{self.seed}"

    @property
    def done(self) -> bool:
        return (self.run_dir / "test_metrics.json").is_file()

    def command(self, torchrun: int = 0, code: Path = ROOT) -> list[str]:
        """The run's command, to be run from the checkout `code` (its experiments/run.py)."""
        launcher = (
            ["torchrun", "--standalone", f"--nproc_per_node={torchrun}"]
            if torchrun
            else [_relative(Path(sys.executable), code)]
        )
        return [
            *launcher,
            "experiments/run.py",
            f"--model={self.model}",
            f"--preset={self.preset}",
            f"--seed={self.seed}",
            f"--budget-flops={self.budget:g}",
            f"--out={_relative(self.out, code)}",
            "--set",
            f"codec.n_codebooks={self.k}",
            *self.overrides,
        ]


def _relative(path: Path, code: Path) -> str:
    """path relative to the checkout `code` when inside it (commands run from there); links
    are kept (a venv's python is one)."""
    try:
        return str(Path(os.path.abspath(path)).relative_to(os.path.abspath(code)))
    except ValueError:
        return str(path)


def budget_tag(flops: float) -> str:
    """9e13 -> '9e13', 1.8e14 -> '1.8e14' (a folder name)."""
    mantissa, exponent = f"{flops:.6e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def _list(study: dict, key: str, kind: type, path: Path) -> list:
    values = study.get(key)
    if not isinstance(values, list) or not values:
        raise StudyError(f"{path}: {key!r} must be a non-empty list")
    for v in values:
        ok = isinstance(v, kind) and not isinstance(v, bool)
        if kind is float:
            ok = isinstance(v, int | float) and not isinstance(v, bool) and v > 0
        if not ok:
            raise StudyError(f"{path}: {key!r} holds {v!r}; expected {kind.__name__} values")
    return values


def _read(path: Path) -> dict:
    try:
        study = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise StudyError(f"{path}: cannot read the study file ({err})") from err
    unknown = sorted(set(study) - _KEYS)
    if unknown:
        raise StudyError(f"{path}: unknown keys {unknown}; valid: {sorted(_KEYS)}")
    commit = study.get("commit")
    if commit is not None and not (isinstance(commit, str) and re.fullmatch(_HASH, commit)):
        raise StudyError(
            f"{path}: 'commit' holds {commit!r}; expected a git commit hash (7-40 hex digits)"
        )
    machine = study.get("scored_on")
    if machine is not None and not (isinstance(machine, dict) and machine):
        raise StudyError(
            f"{path}: 'scored_on' holds {machine!r}; expected a table of what eval/score.py "
            "records as a score's scored_on (cpu, vector_unit, threads, torch, device)"
        )
    return study


def study_commit(path: str | Path) -> str | None:
    """The commit a study is frozen at (its `commit` key), or None."""
    return _read(Path(path)).get("commit")


def study_scoring_machine(path: str | Path) -> dict | None:
    """The machine a study's scores are made on (its `scored_on` key), or None: any."""
    return _read(Path(path)).get("scored_on")


def check_code(code: Path, commit: str) -> None:
    """Refuse a checkout `code` that is not a clean checkout of `commit` (tracked files)."""
    fix = (
        f"the study runs at {commit}: `git worktree add ../frozen {commit}`, then --code ../frozen"
    )

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(code), *args], capture_output=True, text=True)
        if done.returncode:
            raise StudyError(f"--code {code}: not a git checkout ({done.stderr.strip()}); {fix}")
        return done.stdout.strip()

    head = git("rev-parse", "HEAD")
    if not head.startswith(commit):
        raise StudyError(f"--code {code} is at commit {head[:12]}; {fix}")
    changed = git("status", "--porcelain", "--untracked-files=no").splitlines()
    if changed:
        raise StudyError(f"--code {code}: tracked files changed ({changed[0].strip()}); {fix}")


def load_study(path: str | Path, out: str | Path = ROOT / "results" / "study") -> list[Job]:
    """The study's jobs in a fixed order (variant, K, budget, seed, model)."""
    path = Path(path)
    study = _read(path)
    name = study.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise StudyError(f"{path}: 'name' must be a folder name")
    shared = study.get("set", [])
    variants = study.get("variants", {"default": []})
    if not isinstance(variants, dict) or not variants:
        raise StudyError(f"{path}: [variants] must map names to lists of overrides")
    per_model = study.get("per_model", {})
    if not isinstance(per_model, dict):
        raise StudyError(f"{path}: [per_model] must map backend names to lists of overrides")
    for label, values in [("set", shared), *variants.items(), *per_model.items()]:
        if not isinstance(values, list) or not all(isinstance(v, str) and "=" in v for v in values):
            raise StudyError(f"{path}: {label!r} must be a list of 'section.field=value' strings")
    preset = study.get("preset", "cpu")
    jobs = []
    for (variant, extra), k, budget, seed, model in itertools.product(
        variants.items(),
        _list(study, "codebooks", int, path),
        _list(study, "budget_flops", float, path),
        _list(study, "seeds", int, path),
        _list(study, "models", str, path),
    ):
        folder = Path(out) / name / f"{variant}-k{k}-{budget_tag(budget)}"
        overrides = (*shared, *per_model.get(model, []), *extra)
        jobs.append(Job(model, k, seed, float(budget), variant, overrides, folder, preset))
    unknown = sorted(set(per_model) - set(study["models"]))
    if unknown:
        raise StudyError(f"{path}: [per_model] names {unknown}, which 'models' does not list")
    return jobs


def _run(job: Job, torchrun: int, code: Path) -> int:
    """One run, from the checkout `code`, whose packages come first on the import path (ahead
    of the editable install's, which is this checkout)."""
    print(f"sweep: start {job.run_dir}", flush=True)
    env = {**os.environ, "PYTHONPATH": str(code)} if code != ROOT else None
    rc = subprocess.run(job.command(torchrun, code), cwd=code, env=env).returncode
    print(f"sweep: {'done' if rc == 0 else f'failed (exit {rc})'} {job.run_dir}", flush=True)
    return rc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("study", help="a study file (TOML), e.g. experiments/studies/screens.toml")
    ap.add_argument("--out", default=str(ROOT / "results" / "study"), help="parent of studies")
    ap.add_argument("--jobs", action="store_true", help="print the commands left, one a line")
    ap.add_argument("--all", action="store_true", help="with --jobs: finished runs too")
    ap.add_argument("--parallel", type=int, default=1, help="runs at once (default 1)")
    ap.add_argument("--torchrun", type=int, default=0, help="processes per run (0: plain python)")
    ap.add_argument(
        "--code",
        default=str(ROOT),
        help="the checkout whose experiments/run.py runs every job (default: this one); a "
        "worktree of the study's frozen commit keeps code written meanwhile out of its runs",
    )
    args = ap.parse_args(argv)
    if args.parallel < 1 or args.torchrun < 0:
        ap.error("--parallel must be >= 1 and --torchrun >= 0")
    code = Path(args.code).resolve()
    if not (code / "experiments" / "run.py").is_file():
        ap.exit(2, f"{ap.prog}: error: --code {args.code}: no experiments/run.py there\n")
    try:
        jobs = load_study(args.study, args.out)
        if commit := study_commit(args.study):
            check_code(code, commit)
    except StudyError as err:
        ap.exit(2, f"{ap.prog}: error: {err}\n")
    left = [j for j in jobs if args.all or not j.done]
    if args.jobs:
        prefix = "" if code == ROOT else f"cd {shlex.quote(str(code))} && PYTHONPATH=. "
        for job in left:
            print(prefix + shlex.join(job.command(args.torchrun, code)))
        return 0
    print(f"sweep: {len(jobs)} runs, {len(jobs) - len(left)} finished, {len(left)} to run")
    with ThreadPoolExecutor(args.parallel) as pool:
        codes = list(pool.map(lambda j: _run(j, args.torchrun, code), left))
    failed = sum(rc != 0 for rc in codes)
    print(f"sweep: {len(left) - failed} finished, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
