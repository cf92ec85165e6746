"""Every DVC stage declares exactly the code its `facekd` command runs: the import closure of the
entry point (stages/cli.py) and of the command's module, so that editing one stage's code re-runs
only the stages that use it. On a mismatch the failure prints, per stage, the deps to paste, and
`python -m tests.test_dvc_deps` rewrites them."""
import re
from pathlib import Path

import pytest
import yaml

from pipeline.source_closure import PROJECT_PACKAGES, import_closure
from stages.cli import COMMANDS

REPO = Path(__file__).parents[1]
DVC_FILES = ("dvc.yaml", "synthetic/dvc.yaml")
ENTRY_POINT = "stages.cli"


def command_code(cmd: str) -> set[Path]:
    """The project files `facekd <command> ...` runs (the entry point imports the command lazily)."""
    program, command = cmd.split()[:2]
    assert program == "facekd", f"{cmd!r}: expected a facekd command"
    module = COMMANDS[command].split(":")[0]
    return {path.relative_to(REPO) for path in (*import_closure(ENTRY_POINT, REPO), *import_closure(module, REPO))}


def python_files(dep: Path) -> set[Path]:
    """The .py files a declared dep covers: itself, or every one under a folder (none if it does not exist)."""
    if (REPO / dep).is_dir():
        return {path.relative_to(REPO) for path in (REPO / dep).rglob("*.py")}
    return {dep} if (REPO / dep).is_file() else set()


def minimal_deps(files: set[Path]) -> list[str]:
    """`files` as DVC deps: the highest folder whose .py files are all in `files`, else the file itself."""
    deps = set()
    for file in files:
        folders = [folder for folder in reversed(file.parents) if folder != Path(".")]
        whole = next((folder for folder in folders if python_files(folder) <= files), file)
        deps.add(whole.as_posix())
    return sorted(deps)


def is_code(dep: str) -> bool:
    return dep.split("/")[0] in PROJECT_PACKAGES


def stage_mismatch(dvc_file: str, name: str, stage: dict) -> str | None:
    """What is wrong with a stage's declared code deps and the deps list to paste, or None if right."""
    body = stage.get("do", stage)  # a foreach stage declares its deps under `do:`
    working_dir = ((REPO / dvc_file).parent / body.get("wdir", ".")).resolve()
    assert working_dir == REPO.resolve(), f"{dvc_file} stage {name}: deps are read from the repository root (wdir)"
    declared = [Path(dep) for dep in body.get("deps", []) if is_code(dep)]
    code = command_code(body["cmd"])
    covered = set().union(*(python_files(dep) for dep in declared))
    problems = [f"  missing: {dep}" for dep in declared if not (REPO / dep).exists()]
    problems += [f"  not declared: {file}" for file in sorted(code - covered)]
    problems += [f"  declared but never run: {file}" for file in sorted(covered - code)]
    if not problems:
        return None
    indent = " " * (6 if "do" in stage else 4)
    other_deps = [dep for dep in body.get("deps", []) if not is_code(dep)]
    listing = "\n".join(f"{indent}  - {dep}" for dep in (*other_deps, *minimal_deps(code)))
    return f"{dvc_file} stage {name}:\n" + "\n".join(problems) + f"\n  should read:\n{indent}deps:\n{listing}"


def test_every_stage_declares_the_code_it_runs() -> None:
    mismatches = []
    for dvc_file in DVC_FILES:
        for name, stage in yaml.safe_load((REPO / dvc_file).read_text())["stages"].items():
            mismatch = stage_mismatch(dvc_file, name, stage)
            if mismatch:
                mismatches.append(mismatch)
    if mismatches:
        header = (
            "Code deps differ from what the commands import; replace each stage's deps with the list shown "
            "(`python -m tests.test_dvc_deps` does it):"
        )
        pytest.fail("\n\n".join([header, *mismatches]), pytrace=False)


def test_minimal_deps_names_a_folder_only_when_all_of_it_runs() -> None:
    models = {path.relative_to(REPO) for path in (REPO / "pipeline/stage_two/models").rglob("*.py")}
    assert "pipeline/stage_two/models" in minimal_deps(models | {Path("pipeline/errors.py")})
    assert minimal_deps({Path("pipeline/errors.py")}) == ["pipeline/errors.py"]


def rewrite_deps() -> None:
    """Rewrite each stage's code deps in both dvc.yaml files to what this test expects, as a text
    edit that keeps comments and the data deps: `python -m tests.test_dvc_deps` after moving code."""
    for dvc_file in DVC_FILES:
        path = REPO / dvc_file
        lines = path.read_text().splitlines(keepends=True)
        for name, stage in yaml.safe_load(path.read_text())["stages"].items():
            body = stage.get("do", stage)
            wanted = [dep for dep in body.get("deps", []) if not is_code(dep)] + minimal_deps(command_code(body["cmd"]))
            start = next(i for i, line in enumerate(lines) if re.match(rf"  {name}:(\s|$)", line))
            deps_at = next(i for i in range(start + 1, len(lines)) if lines[i].strip() == "deps:")
            indent = re.match(r" *", lines[deps_at]).group() + "  "
            end = deps_at + 1
            while end < len(lines) and lines[end].startswith(indent + "- "):
                end += 1
            lines[deps_at + 1:end] = [f"{indent}- {dep}\n" for dep in wanted]
        path.write_text("".join(lines))
        print(f"rewrote {dvc_file}")


if __name__ == "__main__":
    rewrite_deps()
