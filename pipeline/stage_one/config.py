"""Settings of stage one: the teacher's pass (`embed`), the kNN search (`index`) and the mining (`mine`)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.config import MOST_PROCESSES, ConfigModel

Device = Literal["auto", "cpu", "cuda"]


class PreprocessingConfig(ConfigModel):
    """What the teacher expects of its input pixels: all three keys, since they only make sense together."""

    channel_order: Literal["rgb", "bgr"] = Field(description="Channel order the teacher was trained on.")
    mean: float = Field(description="Subtracted from every pixel value.")
    std: float = Field(gt=0, description="Divides every pixel value after the mean.")


INSIGHTFACE_PREPROCESSING = PreprocessingConfig(channel_order="rgb", mean=127.5, std=127.5)


class EmbedConfig(ConfigModel):
    """`facekd embed`: the teacher's single pass over the training images into the HDF5 store."""

    dataset: str = Field("data/synth/student", description="An image folder, or a folder with train.rec/train.idx.")
    dataset_format: Literal["auto", "image_folder", "recordio"] = Field("auto", description="How `dataset` is read.")
    teacher: str = Field("data/teacher/model.onnx", description="The teacher's ONNX file.")
    preprocessing: PreprocessingConfig = Field(
        INSIGHTFACE_PREPROCESSING, description="insightface's convention by default: RGB, (x - 127.5) / 127.5.",
    )
    resize: bool = Field(False, description="Resize images to the teacher's input size.")
    device: Device = Field("auto", description="ONNX Runtime provider.")
    workers: int = Field(2, ge=0, le=MOST_PROCESSES, description="Local dask worker processes; 0: in this process.")
    threads_per_worker: int = Field(1, ge=0, le=MOST_PROCESSES, description="ONNX Runtime threads of each worker; 0: ONNX Runtime's default.")
    images_per_block: int = Field(
        1024, gt=0, description="Images per block: the unit of work, of the HDF5 chunk and of resume.",
    )
    batch_size: int = Field(128, gt=0, description="Images per teacher call.")
    on_corrupt: Literal["error", "skip"] = Field(
        "error", description="skip: undecodable images are listed in the store and left out.",
    )
    dtype: Literal["float16", "float32"] = Field("float16", description="Embedding type in the store.")
    store: str = Field("data/store/teacher_embeddings.h5", description="The HDF5 store written.")


class IndexConfig(ConfigModel):
    """`facekd index`: the FAISS index over the store and every image's knn_k nearest other images."""

    store: str = Field("data/store/teacher_embeddings.h5", description="The embedding store.")
    out: str = Field("data/index/teacher.faiss", description="The index written (+ .json: store, factory, view, ...).")
    knn: str = Field("data/index/knn.h5", description="Every image's knn_k nearest other images.")
    view: Literal["image", "mean"] = Field("image", description="image: store view 0; mean: normalised image + flip.")
    factory: str = Field("Flat", min_length=1, description="Any faiss.index_factory string: Flat, IVF4096,Flat, HNSW32, ...")
    memory_gb: float = Field(
        8.0, gt=0, description="A Flat index larger than this is not built: the exact search streams the store instead.",
    )
    train_sample: int = Field(100_000, gt=0, description="Vectors that train IVF/PQ indexes (ignored by Flat/HNSW).")
    nprobe: int = Field(16, gt=0, description="IVF lists searched per query.")
    ef_search: int = Field(32, gt=0, description="HNSW search breadth (FAISS searches at least k); the recall calibration starts here.")
    recall_target: float | None = Field(
        0.95, gt=0, le=1, description="nprobe (IVF) / ef_search (HNSW) are doubled from their setting until recall@knn_k "
        "against exact search reaches this; null: searched as set, recall not measured.",
    )
    recall_queries: int = Field(1000, gt=0, description="Sampled images (seed: index.seed) on which that recall is measured.")
    knn_k: int = Field(32, gt=0, description="Neighbours kept per image (k + 1 are searched; GPU limit 2048).")
    rows_per_search: int = Field(65536, gt=0, description="Store rows read and searched at once.")
    threads: int = Field(0, ge=0, le=MOST_PROCESSES, description="FAISS threads; 0: all cores.")
    device: Device = Field("auto", description="Where the search runs.")
    seed: int = Field(0, ge=0, description="Seed of the IVF/PQ training sample.")
    workers: int = Field(
        0, ge=0, le=MOST_PROCESSES, description="Local dask worker processes searching query blocks, each loading the index once "
        "(index.threads FAISS threads each, 0: this machine's cores; CPU only); 0: in this process. "
        "The streamed exact search sends its query passes to them (index.memory_gb each; GPU backends: worker i on GPU i).",
    )


class MineConfig(ConfigModel):
    """`facekd mine`: hard negatives and hard positives from the kNN result, into the pair table."""

    store: str = Field("data/store/teacher_embeddings.h5", description="The embedding store.")
    knn: str = Field("data/index/knn.h5", description="The kNN file of `facekd index`.")
    hard_negatives_per_anchor: int = Field(
        8, gt=0, description="Most similar other identities kept per image (<= index.knn_k).",
    )
    hard_positives_per_anchor: int = Field(4, ge=0, description="Least similar images of the own identity kept per image.")
    suspicious_threshold: float = Field(
        0.7, ge=-1, le=1, description="Different identities above this teacher cosine: likely one person.",
    )
    histogram_bins: int = Field(50, gt=0, description="Bins of the similarity histogram.")
    rows_per_block: int = Field(65536, gt=0, description="Store rows read and mined at once.")
    workers: int = Field(
        0, ge=0, le=MOST_PROCESSES, description="Local dask worker processes mining the hard positives, batch by "
        "batch (each reads its batch from the store; this process writes every output); 0: in this process.",
    )
    out: str = Field("data/pairs/pairs.h5", description="The pair table.")
    summary: str = Field("data/pairs/mining_summary.json", description="Counts and similarity statistics (DVC metrics).")
    histogram: str = Field("data/pairs/similarity_histogram.csv", description="Similarity histogram (DVC plots).")
    suspicious: str = Field(
        "data/pairs/suspicious_pairs.csv", description="Different identities above suspicious_threshold.",
    )
