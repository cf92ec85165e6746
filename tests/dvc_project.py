"""A tiny copy of this repository's DVC project (its code, dvc.yaml and params.yaml at tiny sizes)
in a temporary git repository, and running commands in it as a user's shell would."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).parents[1]


def tiny_params() -> dict:
    """This repository's params.yaml with every size cut to what runs in seconds, and two students."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["synth"].update(
        size=32, teacher_identities=6, teacher_images=4, student_identities=5, student_images=4,
        heldout_identities=5, heldout_images=4, workers=1,
    )
    params["verification"]["num_pairs"] = 20
    params["teacher"].update(width=0.125, embedding_dim=16, epochs=1, batch_size=8, compile=False, threads=1)
    params["embed"].update(workers=0, images_per_block=8, batch_size=16)
    params["index"]["knn_k"] = 4
    params["mine"]["hard_negatives_per_anchor"] = 2
    params["mine"]["hard_positives_per_anchor"] = 2
    params["train"].update(width=0.125, embedding_dim=8, epochs=1, batch_size=8, threads=1)
    params["train"]["distillation"]["rpsd_bank_size"] = 16
    params["quantize"].update(calibration_images=8, validation_images=8, latency_runs=5)
    params["latency"].update(runs=5, throughput_runs=2, throughput_batch=4)
    params["students"] = {
        "alone": {},
        "distilled": {"sampler": "pairs", "distillation": {"iled": 5.0, "rpsd": 10.0}},
    }
    return params


def run(command: list[str], cwd: Path) -> str:
    """Run `command` in `cwd` with this environment's executables first on PATH; its stdout + stderr."""
    bin_dir = str(Path(sys.executable).parent)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(cwd), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, f"{command} failed:\n{completed.stdout[-4000:]}\n{completed.stderr[-4000:]}"
    return completed.stdout + completed.stderr


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def init_project(root: Path, params: dict) -> Path:
    """A git repository at `root` holding the code and pipeline files of this one, with `params`."""
    for folder in ("pipeline", "stages", "synthetic", ".dvc"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache", "*.lock"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / ".gitignore").write_text("/data/\n__pycache__/\n")
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.name", "facekd tests"], root)  # `dvc exp run` commits experiments
    run(["git", "config", "user.email", "tests@facekd.invalid"], root)
    run(["git", "add", "."], root)
    run(["git", "commit", "-qm", "tiny pipeline"], root)
    return root
