"""A tiny student that trains in seconds, and the params.yaml that `facekd train` reads for it."""
from pathlib import Path

import yaml

from pipeline.stage_two.distill import DistillationConfig
from pipeline.stage_two.config import OptimConfig, TrainConfig

TINY_STUDENT = TrainConfig(
    backbone="mobilefacenet", embedding_dim=8, width=0.25, epochs=3, batch_size=8, seed=0, threads=1,
    optim=OptimConfig(lr=0.5, warmup_epochs=0.5),
    distillation=DistillationConfig(iled=5.0, rpsd=10.0, rpsd_bank_size=16, rpsd_k_neg=4),
)


def student_params(tmp_path: Path, face_folder: Path, store: Path, **student) -> Path:
    """A params.yaml whose `train` section is TINY_STUDENT and whose student `ddp` overrides it with `student`."""
    config = TINY_STUDENT.model_dump()
    config["optim"]["milestones"] = list(config["optim"]["milestones"])
    train_section = {**config, "dataset": str(face_folder), "store": str(store), "pairs": "unused.h5",
                     "out_root": str(tmp_path / "students")}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"train": train_section, "students": {"ddp": student}}))
    return path
