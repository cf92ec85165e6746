"""How the real pipeline grows with the number of training images: every stage as the `facekd` command
a user runs, at each size, timed alone, with its memory and outputs measured.

    .venv/bin/python bench/scale.py                                        # 10k, 100k and 1M images
    .venv/bin/python bench/scale.py --sizes 2000,10000 --json scale.json   # small sizes first
    .venv/bin/python bench/scale.py --sizes 1000000 --index-factory IVF4096,Flat --stages synth,embed,index,mine
    .venv/bin/python bench/scale.py --index-factory HNSW32 --ef-search 32   # README's large-store index, ef tuned to recall
    .venv/bin/python bench/scale.py --index-factory ivf     # IVF<~N/256>,Flat at each size, nprobe tuned to recall
    .venv/bin/python bench/scale.py --sizes 1000000 --json large.json --merge small.json   # one report over both runs

Needs a trained teacher ONNX (`--teacher`, default data/teacher/model.onnx: `make run` first); the
teacher is not retrained. For each size N, a scratch project (under `--work-dir`, or a temporary
folder) gets a params.yaml made from `--params` (the repository's by default) with: the synthetic
student set at N images (`synth.student_images` per identity, N a multiple of it) and the teacher's
input size read from the ONNX graph; one teacher image (the teacher split is unused); the given
teacher; one epoch for `train` and every student; `--index-factory` if given. Everything else,
the held-out verification set included, is as in `--params`. Then each stage runs in pipeline order
as its own `facekd` process (dvc.yaml's and synthetic/dvc.yaml's commands): synth, verification
(make-bin), embed, index, mine, `pairs top --paths` and `pairs sheet` (20 hardest pairs each: the time to show
a few images of a large dataset), train@<student> and evaluate@<student> for every student (the
repository's: margin_only and unified). A stage's outputs are deleted before it runs, so it does
its whole work (no store reuse, no checkpoint resume). `--stages` runs a subset; the inputs of the
stages left out must exist already, in a `--work-dir` kept (`--keep`) from an earlier run.

Per stage and size it prints: wall time of the command (process start and imports included), time
per training image, CPU time (user + system) of the command and its descendants, peak RSS summed
over the command's process and all its descendants (dask workers, data loaders, synth workers;
sampled every 0.1 s, so a peak shorter than that can be missed, and pages shared between processes
count once per process) and the bytes of its outputs. On a machine shared with other work, wall
times stretch with the load (printed at the start) while CPU times much less: compare the two.
Then the growth exponent between consecutive sizes, e = log(v2 / v1) / log(N2 / N1), of time and of
peak RSS, and projections to 5.8M and 42M images from the largest two sizes under the model
v(N) = v(N_max) x (N / N_max)^e. Fixed costs (process start, imports, model loading, the
fixed-size held-out set of synth, verification and evaluate) keep e low at small sizes. An exact
index (`Flat`) computes N^2 distances, so its time tends to exponent 2 once those dominate: for
Flat an `index, N^2` row projects with e = 2 from the largest size. Peak RSS projections overstate
a stage that fills a fixed-size buffer between the sizes (the report says which). Projections assume this
machine; scaling with workers and cores is measured by bench/embed.py and bench/index_workers.py.
`--json` is rewritten after every stage, so a long run stopped part way keeps what it measured;
`--merge` adds earlier runs' measurements (other sizes, other stages) to the report.
"""
from __future__ import annotations

import argparse
import copy
import glob
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import yaml

from pipeline.face_model import load_face_model_graph
from pipeline.files import write_text_atomically
from pipeline.settings import Settings
from stages.params import load_settings, read_params, required
from stages.repro import cpu_name

REPO = Path(__file__).parents[1]
IVF_LIST_SIZE = 256  # vectors per IVF list in README's recommendation
FLAT_QUANTIZER_MAX_LISTS = 4096  # README: an HNSW coarse quantizer above this many lists
FACEKD = Path(sys.executable).parent / "facekd"
SYNTH_OUT = "data/synth"
STUDENT_SET = f"{SYNTH_OUT}/student"
HELDOUT_SET = f"{SYNTH_OUT}/heldout"
SAMPLE_SECONDS = 0.1
SHOWN_PAIRS = 20
PAIRS_SHEET = "pairs_sheet.png"
PROJECTED_SIZES = (5_800_000, 42_000_000)
MB = 1e6


@dataclass(frozen=True)
class Stage:
    """One `facekd` command of the pipeline and the paths (relative to the project) it reads and writes."""

    name: str
    arguments: list[str]
    inputs: list[str]
    outputs: list[str]


@dataclass(frozen=True)
class Measurement:
    images: int
    stage: str
    seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    output_bytes: int
    details: str = ""  # what the stage chose: the index's factory, nprobe and measured recall


def ivf_factory(images: int) -> str:
    """README's IVF recommendation for `images`: nlist the power of two nearest N / 256 (lists of 181 to 362
    vectors at any N, so that a query's scan does not grow with N), an HNSW coarse quantizer above 4096 lists
    (a flat one costs nlist x D a query), vectors kept (`,Flat`)."""
    nlist = 2 ** max(0, round(math.log2(images / IVF_LIST_SIZE)))
    quantizer = "_HNSW32" if nlist > FLAT_QUANTIZER_MAX_LISTS else ""
    return f"IVF{nlist}{quantizer},Flat"


def index_details(project: Path, settings: Settings) -> str:
    """The built index's factory, nprobe and recall@knn_k against exact search, from its sidecar."""
    sidecar = project / f"{settings.index.out}.json"
    if not sidecar.is_file():
        return ""
    metadata = json.loads(sidecar.read_text())
    knobs = "".join(f", {knob} {metadata[knob]}" for knob in ("nprobe", "ef_search") if metadata.get(knob) is not None)
    if metadata.get("recall") is None:
        return metadata["factory"] + knobs
    return (f"{metadata['factory']}{knobs}: recall@{settings.index.knn_k} {metadata['recall']:.3f} "
            f"vs exact on {metadata['recall_queries']} images")


def train_details(settings: Settings, stage_name: str) -> str:
    """The margin head a train stage used: full softmax, or Partial FC's centres a step."""
    if not stage_name.startswith("train@"):
        return ""
    train = settings.students[stage_name.removeprefix("train@")]
    identities = settings.synth.student_identities
    if train.margin_sample_rate >= 1.0:
        head = f"full softmax over {identities} identities"
    else:
        head = f"Partial FC, margin_sample_rate {train.margin_sample_rate:.3g}: {math.ceil(train.margin_sample_rate * identities)} centres a step"
    if decoded_images_fit(settings):
        return head
    return f"{head}; images decoded per batch, {train.num_workers} loader worker(s)"


def decoded_images_fit(settings: Settings) -> bool:
    """Whether training keeps the decoded student images in memory (`train.images_memory_gb`)."""
    synth = settings.synth
    decoded = synth.student_identities * synth.student_images * synth.size**2 * 3
    return decoded <= settings.train.images_memory_bytes


def machine() -> dict:
    gpus = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip() if shutil.which("nvidia-smi") else ""
    return {
        "cpu": cpu_name(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_bytes": psutil.virtual_memory().total,
        "gpus": gpus.splitlines(),
        "load_average_at_start": os.getloadavg(),
    }


def scale_params(base: dict, images: int, images_per_identity: int, teacher: Path, image_size: int,
                 index_factory: str | None, ef_search: int | None, sampled_centres: int | None) -> dict:
    """`base` with the student set at `images` synthetic images of the teacher's size, one epoch per student;
    with `sampled_centres`, every student's margin head samples that many class centres a step (Partial FC)."""
    params = copy.deepcopy(base)
    params["synth"].update(size=image_size, student_identities=images // images_per_identity, teacher_identities=1, teacher_images=1)
    params["verification"]["dataset"] = HELDOUT_SET
    params["embed"].update(dataset=STUDENT_SET, teacher=str(teacher))
    params["train"].update(dataset=STUDENT_SET, epochs=1)
    for overrides in params.get("students", {}).values():
        overrides["epochs"] = 1
    params["evaluate"]["pairs"] = params["verification"]["out"]
    if index_factory:
        params["index"]["factory"] = ivf_factory(images) if index_factory == "ivf" else index_factory
    if ef_search:
        params["index"]["ef_search"] = ef_search
    if images * image_size**2 * 3 > params["train"]["images_memory_gb"] * (1 << 30):
        params["train"]["num_workers"] = max(1, params["train"]["num_workers"])  # as README advises: read ahead
    if sampled_centres:
        rate = min(1.0, sampled_centres / (images // images_per_identity))
        params["train"]["margin_sample_rate"] = rate
        for overrides in params.get("students", {}).values():
            overrides.pop("margin_sample_rate", None)
    return params


def pipeline_stages(settings: Settings) -> list[Stage]:
    """dvc.yaml's and synthetic/dvc.yaml's commands, in pipeline order (the teacher and int8 stages left out)."""
    verification, embed, index, mine, evaluate = settings.verification, settings.embed, settings.index, settings.mine, settings.evaluate
    stages = [
        Stage("synth", ["synth", "--out", SYNTH_OUT], [], [SYNTH_OUT]),
        Stage("verification", ["make-bin", verification.dataset, verification.out, "--pairs", str(verification.num_pairs),
                               "--seed", str(verification.seed)], [verification.dataset], [verification.out]),
        Stage("embed", ["embed", "--quiet"], [embed.dataset, embed.teacher], [embed.store]),
        Stage("index", ["index", "--quiet"], [index.store], [index.out, f"{index.out}.json", index.knn]),
        Stage("mine", ["mine", "--quiet"], [mine.store, mine.knn], [mine.out, mine.summary, mine.histogram, mine.suspicious]),
        # inspection: the shown images are found by their store keys, without listing the dataset
        Stage("pairs top --paths", ["pairs", "top", "--paths", "--n", str(SHOWN_PAIRS)], [mine.out, mine.store], []),
        Stage("pairs sheet", ["pairs", "sheet", "--n", str(SHOWN_PAIRS), "--out", PAIRS_SHEET], [mine.out, mine.store], [PAIRS_SHEET]),
    ]
    for name, student in settings.students.items():
        stages.append(Stage(f"train@{name}", ["train", "--student", name, "--quiet"],
                            [student.dataset, student.store, student.pairs], [f"{student.out_root}/{name}"]))
    for name, student in settings.students.items():
        model = f"{student.out_root}/{name}/model.onnx"
        stages.append(Stage(f"evaluate@{name}", ["evaluate", "--onnx", model, "--out", f"{evaluate.out_root}/{name}"],
                            [model, evaluate.pairs], [f"{evaluate.out_root}/{name}"]))
    return stages


def check_inputs(project: Path, stages: list[Stage]) -> None:
    """Every input is made by an earlier selected stage or already in `project`: fail before any work."""
    made: list[Path] = []
    for stage in stages:
        for needed in map(Path, stage.inputs):
            if not any(needed == output or output in needed.parents for output in made) and not (project / needed).exists():
                raise SystemExit(f"{project}: stage {stage.name} reads {needed}, which does not exist; add the stage that "
                                 f"writes it to --stages, or give the --work-dir of a --keep run that made it")
        made += map(Path, stage.outputs)


def remove_outputs(project: Path, stage: Stage) -> None:
    """Delete the stage's outputs and partial files, so that it redoes all its work (no reuse, no resume)."""
    for output in stage.outputs:
        path = project / output
        for leftover in [path, *map(Path, glob.glob(glob.escape(str(path)) + ".partial*"))]:
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink(missing_ok=True)


def tree_rss(root: psutil.Process) -> int:
    """RSS of `root` and all its descendants now (a process that exits meanwhile counts 0)."""
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_measured(command: list[str], cwd: Path, log: Path) -> tuple[float, float, int]:
    """Wall time of `command`, the CPU time of its process tree (each descendant once reaped) and the
    peak of the tree's summed RSS; its output goes to `log`."""
    peak = 0
    cpu_before = children_cpu_seconds()
    with log.open("w") as log_file:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT)
        tree = psutil.Process(process.pid)
        while True:
            peak = max(peak, tree_rss(tree))
            try:
                process.wait(timeout=SAMPLE_SECONDS)
                break
            except subprocess.TimeoutExpired:
                pass
        seconds = time.perf_counter() - started
    if process.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"{' '.join(command)} failed in {cwd} (exit status {process.returncode}); end of {log}:\n{tail}")
    return seconds, children_cpu_seconds() - cpu_before, peak


def measure_stage(project: Path, settings: Settings, stage: Stage, images: int) -> Measurement:
    """Run one stage alone, from a clean slate of its outputs."""
    remove_outputs(project, stage)
    log = project / f"{stage.name.replace(' ', '_')}.log"
    seconds, cpu_seconds, peak = run_measured([str(FACEKD), *stage.arguments], project, log)
    outputs = sum(bytes_on_disk(project / out) for out in stage.outputs)
    details = index_details(project, settings) if stage.name == "index" else train_details(settings, stage.name)
    measured = Measurement(images, stage.name, seconds, cpu_seconds, peak, outputs, details)
    print(f"  {stage.name}: {duration(seconds)} (CPU {duration(cpu_seconds)}), peak RSS {peak / MB:.0f} MB, "
          f"output {measured.output_bytes / MB:.1f} MB" + (f"; {details}" if details else ""), flush=True)
    return measured


def bytes_on_disk(path: Path) -> int:
    if path.is_dir():
        return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
    return path.stat().st_size if path.exists() else 0


def exponent(n1: int, v1: float, n2: int, v2: float) -> float:
    return math.log(v2 / v1) / math.log(n2 / n1)


def growth(measurements: list[Measurement], stages: list[str]) -> list[dict]:
    """Time and peak-RSS exponents of each stage between its consecutive measured sizes."""
    rows = []
    for stage in stages:
        measured = sorted((m for m in measurements if m.stage == stage), key=lambda m: m.images)
        for a, b in zip(measured, measured[1:]):
            rows.append({"stage": stage, "from_images": a.images, "to_images": b.images,
                         "time_exponent": exponent(a.images, a.seconds, b.images, b.seconds),
                         "peak_rss_exponent": exponent(a.images, a.peak_rss_bytes, b.images, b.peak_rss_bytes)})
    return rows


def projections(measurements: list[Measurement], exponents: list[dict], quadratic_index: bool) -> list[dict]:
    """v(N) = v(largest) x (N / largest)^e, e between each stage's largest two sizes; the exact index also with
    e = 2 for time."""
    largest = {stage: max(m.images for m in measurements if m.stage == stage) for stage in {m.stage for m in measurements}}
    by_key = {(m.stage, m.images): m for m in measurements}
    last = {row["stage"]: row for row in exponents if row["to_images"] == largest[row["stage"]]}
    rows = []
    for target in PROJECTED_SIZES:
        for stage, row in last.items():
            measured, scale = by_key[stage, largest[stage]], target / largest[stage]
            rows.append({"stage": stage, "images": target, "time_exponent": row["time_exponent"],
                         "peak_rss_exponent": row["peak_rss_exponent"],
                         "seconds": measured.seconds * scale ** row["time_exponent"],
                         "peak_rss_bytes": measured.peak_rss_bytes * scale ** row["peak_rss_exponent"]})
        if quadratic_index and "index" in last:
            index = by_key["index", largest["index"]]
            rows.append({"stage": "index, N^2", "images": target, "time_exponent": 2.0, "peak_rss_exponent": None,
                         "seconds": index.seconds * (target / largest["index"]) ** 2, "peak_rss_bytes": None})
    return rows


def duration(seconds: float) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * length:
            return f"{seconds / length:.1f} {unit}"
    return f"{seconds:.1f} s"


def print_report(measurements: list[Measurement], exponents: list[dict], projected: list[dict], stages: list[str],
                 sizes: list[int]) -> None:
    print("\n| stage | images | time | time per image | CPU time | peak RSS (MB) | output (MB) | index |\n|---|---:|---:|---:|---:|---:|---:|---|")
    for stage in stages:
        for m in [m for m in measurements if m.stage == stage]:
            print(f"| {stage} | {m.images} | {duration(m.seconds)} | {1000 * m.seconds / m.images:.3f} ms | "
                  f"{duration(m.cpu_seconds)} | {m.peak_rss_bytes / MB:.0f} | {m.output_bytes / MB:.1f} | {m.details} |")
    for size in sizes:
        at_size = [m for m in measurements if m.images == size]
        total = sum(m.seconds for m in at_size)
        print(f"| stages run: sum of times, largest peak, sum of outputs | {size} | {duration(total)} | "
              f"{1000 * total / size:.3f} ms | {duration(sum(m.cpu_seconds for m in at_size))} | {max(m.peak_rss_bytes for m in at_size) / MB:.0f} | "
              f"{sum(m.output_bytes for m in at_size) / MB:.1f} | |")
    if not exponents:
        return
    pairs = list(zip(sizes, sizes[1:]))
    by_pair = {(row["stage"], row["from_images"], row["to_images"]): row for row in exponents}
    print("\ngrowth exponents e = log(v2 / v1) / log(N2 / N1), time / peak RSS:\n")
    print("| stage | " + " | ".join(f"{a} -> {b}" for a, b in pairs) + " |\n|---|" + "---:|" * len(pairs))
    for stage in stages:
        cells = [f"{row['time_exponent']:.2f} / {row['peak_rss_exponent']:.2f}" if (row := by_pair.get((stage, a, b))) else "-"
                 for a, b in pairs]
        print(f"| {stage} | " + " | ".join(cells) + " |")
    print("\nprojections: v(N) = v(N_max) x (N / N_max)^e, e between each stage's largest two sizes; on this machine:\n")
    print("| stage | " + " | ".join(f"time at {n} | peak RSS (MB) at {n}" for n in PROJECTED_SIZES) + " |\n|---|"
          + "---:|---:|" * len(PROJECTED_SIZES))
    for stage in [*stages, "index, N^2"]:
        rows = [row for row in projected if row["stage"] == stage]
        if rows:
            print(f"| {stage} | " + " | ".join(
                f"{duration(row['seconds'])} | " + ("-" if row["peak_rss_bytes"] is None else f"{row['peak_rss_bytes'] / MB:.0f}")
                for row in rows) + " |")
    totals = [sum(row["seconds"] for row in projected if row["images"] == n and row["stage"] in stages) for n in PROJECTED_SIZES]
    print("| stages run: sum of times | " + " | ".join(f"{duration(total)} | -" for total in totals) + " |")
    print("\nThe peak RSS projections extend the growth between the two sizes. A stage that fills a buffer of fixed size "
          "between them (mine's rows_per_block, train's decoded images and teacher targets up to images_memory_gb and "
          "targets_memory_gb, an IVF index's train_sample) stops growing there, so they overstate it: BENCHMARKS.md "
          "(\"The scale benchmark\") states each stage's bound.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="training images per run, comma-separated")
    parser.add_argument("--params", default=str(REPO / "params.yaml"), help="params.yaml the scratch projects start from")
    parser.add_argument("--teacher", default=str(REPO / "data/teacher/model.onnx"), help="the teacher ONNX (not retrained)")
    parser.add_argument("--index-factory", help="index.factory for every size (default: --params'), e.g. IVF4096,Flat at 1M; "
                        "ivf: README's recommendation per size, IVF<power of two nearest N/256>,Flat (_HNSW32 above 4096 lists)")
    parser.add_argument("--ef-search", type=int, help="index.ef_search for every size (default: --params'): where the "
                        "recall calibration starts for HNSW, e.g. 32 with --index-factory HNSW32")
    parser.add_argument("--sampled-centres", type=int, help="train every student with a Partial FC head of about this "
                        "many class centres a step (train.margin_sample_rate = min(1, this / identities); default: --params')")
    parser.add_argument("--stages", help="comma-separated subset of the stages (default: all)")
    parser.add_argument("--work-dir", help="folder of the scratch projects, one per size (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch projects (else each is deleted once measured)")
    parser.add_argument("--json", help="write every measurement, exponent and projection to this JSON file")
    parser.add_argument("--merge", action="append", default=[], metavar="JSON",
                        help="an earlier run's --json whose measurements join this report (other sizes or stages; this "
                        "run's win where both measured a stage at a size); repeatable")
    args = parser.parse_args()

    sizes = sorted({int(size) for size in args.sizes.split(",")})
    teacher = Path(args.teacher).resolve()
    if not teacher.is_file():
        raise SystemExit(f"{teacher}: teacher ONNX not found; run `make run` first (it trains the default teacher), or pass --teacher")
    spec = load_face_model_graph(teacher).input_spec
    if spec.height != spec.width:
        raise SystemExit(f"{teacher}: input is {spec.height}x{spec.width}; the synthetic faces are square")
    base_settings = load_settings(args.params)
    required(base_settings, args.params, "synth", "verification", "embed", "index", "mine", "train", "evaluate")
    per_identity = base_settings.synth.student_images
    if any(size % per_identity for size in sizes):
        raise SystemExit(f"--sizes {args.sizes}: each must be a multiple of synth.student_images ({per_identity})")
    base = read_params(args.params)
    factory = args.index_factory or base_settings.index.factory
    wanted = args.stages.split(",") if args.stages else None
    known = [stage.name for stage in pipeline_stages(base_settings)]
    if wanted and (unknown := set(wanted) - set(known)):
        raise SystemExit(f"--stages: unknown {', '.join(sorted(unknown))}; the stages are {', '.join(known)}")

    about = machine()
    print(f"machine: {about['cpu']}; {about['logical_cores']} logical cores ({about['physical_cores']} physical, "
          f"{about['usable_cores']} usable); {about['memory_bytes'] / 2**30:.1f} GiB RAM; "
          f"GPUs: {', '.join(about['gpus']) or 'none found'}; load average {about['load_average_at_start'][0]:.2f} at start")
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="facekd-scale-"))
    earlier = [Measurement(**m) for path in args.merge for m in json.loads(Path(path).read_text())["measurements"]]
    measurements: list[Measurement] = []

    def write_json(exponents: list[dict], projected: list[dict]) -> None:
        """This run's measurements (after every stage, so that a run stopped at 1M keeps what it measured), and
        at the end the exponents and projections over them and the merged ones."""
        if args.json:
            write_text_atomically(Path(args.json), json.dumps({
                "machine": about, "teacher": str(teacher), "image_size": spec.height, "index_factory": factory,
                "sizes": sizes, "merged": args.merge, "measurements": [asdict(m) for m in measurements],
                "exponents": exponents, "projections": projected,
            }, indent=2))

    for size in sizes:
        project = work / f"images{size}"
        project.mkdir(parents=True, exist_ok=True)
        params_path = project / "params.yaml"
        params_path.write_text(yaml.safe_dump(scale_params(base, size, per_identity, teacher, spec.height, args.index_factory,
                                                            args.ef_search, args.sampled_centres),
                                               sort_keys=False))
        settings = load_settings(params_path)
        stages = [stage for stage in pipeline_stages(settings) if wanted is None or stage.name in wanted]
        check_inputs(project, stages)
        print(f"\n{size} images ({settings.synth.student_identities} identities x {per_identity}, {spec.height} px), "
              f"teacher {teacher}, index.factory {settings.index.factory}, "
              f"train.margin_sample_rate {settings.train.margin_sample_rate:.3g}, in {project}", flush=True)
        for stage in stages:
            measurements.append(measure_stage(project, settings, stage, size))
            write_json([], [])
        if not args.keep:
            shutil.rmtree(project)
    if args.keep:
        print(f"\nscratch projects kept in {work}")
    elif not args.work_dir:
        work.rmdir()

    reported = [m for m in earlier if (m.stage, m.images) not in {(n.stage, n.images) for n in measurements}] + measurements
    stage_names = list(dict.fromkeys(m.stage for m in reported))
    exponents = growth(reported, stage_names)
    projected = projections(reported, exponents, factory == "Flat") if exponents else []
    print_report(reported, exponents, projected, stage_names, sorted({m.images for m in reported}))
    write_json(exponents, projected)

if __name__ == "__main__":
    main()
