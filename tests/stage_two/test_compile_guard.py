"""torch.compile only where a probe child survived: the real `facekd teacher` with probes made to
crash (a real SIGSEGV, from a `sitecustomize` hook on the children's PYTHONPATH), cached verdicts,
and the restart with oneDNN capped at AVX2."""
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import yaml

from pipeline.stage_two.checkpoint import read_checkpoint
from pipeline.stage_two.compile_guard import (
    ADDED_VARIABLES, ISA_VARIABLE, CompileVerdict, ProbeSpec, cache_key, restart_environment,
)
from pipeline.stage_two.models import build_backbone
from pipeline.stage_two.models.export import check_onnx_matches
from pipeline.stage_two.train import CHECKPOINT, MODEL
from tests.dvc_project import tiny_params
from tests.tiny_faces import TINY_SIZE

FACEKD = str(Path(sys.executable).parent / "facekd")
SPEC = ProbeSpec("iresnet18", 16, 0.125, 32, 8, "cpu", 1)

# Every Python process of the test run loads this: the facekd process logs the ISA it runs with;
# a probe child logs it too, then dies by SIGSEGV where CRASH_WITH_ISA says so, else passes at once.
HOOK = textwrap.dedent('''
    import os, signal, sys
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "unset")
    role = "probe" if "pipeline.stage_two.compile_guard" in sys.orig_argv else "teacher" if "teacher" in sys.orig_argv else None
    if role:
        with open(os.environ["PROCESS_LOG"], "a") as log:
            log.write(f"{role} {isa}\\n")
    if role == "probe":
        if isa in os.environ["CRASH_WITH_ISA"].split(","):
            os.kill(os.getpid(), signal.SIGSEGV)
        os._exit(0)
''')


def run_teacher(
    root: Path, face_folder: Path, crash_with_isa: str, **environment: str
) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`facekd teacher` on a tiny compiled teacher, in `root`, with no oneDNN setting of its own."""
    teacher = tiny_params()["teacher"] | {"dataset": str(face_folder), "out": str(root / "teacher"), "compile": True}
    (root / "params.yaml").write_text(yaml.safe_dump({"teacher": teacher}))
    (root / "hook").mkdir(exist_ok=True)
    (root / "hook" / "sitecustomize.py").write_text(HOOK)
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(root), "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(root / "hook"),
        "PROCESS_LOG": str(root / "processes.log"), "CRASH_WITH_ISA": crash_with_isa, **environment,
    }
    completed = subprocess.run(
        [FACEKD, "teacher", "--quiet"], cwd=root, env=env, capture_output=True, text=True, timeout=900
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed, (root / "processes.log").read_text().splitlines()


def compile_lines(completed: subprocess.CompletedProcess) -> list[str]:
    return [line for line in completed.stderr.splitlines() if line.startswith("torch.compile:")]


def test_teacher_trains_eagerly_when_every_probe_crashes_and_caches_the_verdict(tmp_path: Path, face_folder: Path) -> None:
    completed, processes = run_teacher(tmp_path, face_folder, crash_with_isa="unset,AVX2")
    assert processes == ["teacher unset", "probe unset", "probe AVX2"]
    cache = tmp_path / ".cache" / "facekd" / "compile"
    assert compile_lines(completed) == [
        "torch.compile: eager (the inductor probe died by SIGSEGV; the inductor with ONEDNN_MAX_CPU_ISA=AVX2 "
        f"probe died by SIGSEGV; verdict cached in {next(cache.glob('*.json'))})"
    ]
    checkpoint = read_checkpoint(tmp_path / "teacher" / CHECKPOINT)
    config = checkpoint["config"]
    assert config["compile"] is False
    backbone = build_backbone(config["backbone"], config["embedding_dim"], TINY_SIZE, config["width"])
    weights = checkpoint["model"]
    backbone.load_state_dict({name.removeprefix("backbone."): weights[name] for name in weights if name.startswith("backbone.")})
    check_onnx_matches(backbone, tmp_path / "teacher" / MODEL, TINY_SIZE)

    again, processes = run_teacher(tmp_path, face_folder, crash_with_isa="unset,AVX2")
    assert processes[3:] == ["teacher unset"]  # no probe: the verdict was read from the cache
    assert compile_lines(again) == compile_lines(completed)


def test_teacher_restarts_with_onednn_capped_at_avx2_when_only_the_default_probe_crashes(
    tmp_path: Path, face_folder: Path
) -> None:
    """torch's own switch turns compile into a no-op in training: a real compile takes minutes here."""
    completed, processes = run_teacher(tmp_path, face_folder, crash_with_isa="unset", TORCH_COMPILE_DISABLE="1")
    assert processes == ["teacher unset", "probe unset", "probe AVX2", "teacher AVX2"]
    [line] = compile_lines(completed)
    assert line.startswith(
        "torch.compile: inductor with ONEDNN_MAX_CPU_ISA=AVX2 (the inductor probe died by SIGSEGV; "
        "the inductor with ONEDNN_MAX_CPU_ISA=AVX2 probe passed; verdict cached in "
    )
    assert read_checkpoint(tmp_path / "teacher" / CHECKPOINT)["config"]["compile"] is True
    assert (tmp_path / "teacher" / MODEL).is_file()


def test_cache_key_follows_the_spec_and_the_users_onednn_setting() -> None:
    key = cache_key(SPEC, {})
    assert cache_key(replace(SPEC), {"HOME": "/elsewhere"}) == key
    for change in ({"backbone": "iresnet34"}, {"width": 0.25}, {"input_size": 64}, {"batch_size": 4}, {"threads": 2}):
        assert cache_key(replace(SPEC, **change), {}) != key, change
    assert cache_key(SPEC, {ISA_VARIABLE: "AVX2"}) != key
    # a process restarted for a verdict finds the verdict of the environment the user gave
    assert cache_key(SPEC, {ISA_VARIABLE: "AVX2", ADDED_VARIABLES: ISA_VARIABLE}) == key


def test_restart_only_when_the_environment_lacks_what_the_verdict_needs() -> None:
    capped = CompileVerdict(True, "", {ISA_VARIABLE: "AVX2"})
    assert restart_environment([CompileVerdict(False, "")], {"HOME": "/h"}) is None
    restart = {"HOME": "/h", ISA_VARIABLE: "AVX2", ADDED_VARIABLES: ISA_VARIABLE}
    assert restart_environment([capped], {"HOME": "/h"}) == restart
    assert restart_environment([capped], {ISA_VARIABLE: "AVX2", ADDED_VARIABLES: ISA_VARIABLE}) is None

