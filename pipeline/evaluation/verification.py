"""The face-verification protocol of insightface (LFW, CFP-FP, AgeDB-30, ...), in plain numpy.

Embeddings are L2-normalised and compared by squared L2 distance; a pair is judged "same" when its
distance is below a threshold. Accuracy is 10-fold cross-validated over contiguous folds: each fold
is scored at the threshold (from 0, 0.01, ..., 3.99) that is most accurate on the other folds, so
no fold's own labels choose its threshold. Numbers are comparable with insightface's reports.
"""
from __future__ import annotations

import numpy as np

from pipeline.errors import FacekdError

# insightface's grid, np.arange(0, 4, 0.01): squared L2 distances between unit vectors lie in [0, 4].
THRESHOLDS = np.arange(0, 4, 0.01)
FARS = (1e-2, 1e-3, 1e-4)


def flip_sum(embeddings: np.ndarray, flipped_embeddings: np.ndarray) -> np.ndarray:
    """f(x) + f(flip x), the protocol's test-time augmentation, taken before normalising."""
    if np.shape(embeddings) != np.shape(flipped_embeddings):
        raise FacekdError(
            f"flipped_embeddings: shape {np.shape(flipped_embeddings)} differs from embeddings {np.shape(embeddings)}"
        )
    return np.asarray(embeddings, dtype=np.float64) + np.asarray(flipped_embeddings, dtype=np.float64)


def pair_distances(embeddings1: np.ndarray, embeddings2: np.ndarray) -> np.ndarray:
    """Squared L2 distance between the normalised rows (a zero row stays zero, as sklearn's normalize does)."""
    return np.sum(np.square(_normalise(embeddings1) - _normalise(embeddings2)), axis=1)


def _normalise(embeddings: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.where(norms == 0, 1.0, norms)


def verification_report(
    embeddings1: np.ndarray,
    embeddings2: np.ndarray,
    issame: np.ndarray,
    n_folds: int = 10,
    flipped_embeddings1: np.ndarray | None = None,
    flipped_embeddings2: np.ndarray | None = None,
) -> dict:
    """Verification metrics for N pairs: row k of `embeddings1` and of `embeddings2` form pair k.

    Pass the model's raw (un-normalised) outputs. With the outputs for the flipped images as well,
    pairs are compared by `flip_sum` embeddings (insightface's Accuracy-Flip) and XNorm, the mean
    L2 norm of the raw outputs, covers both orientations as insightface's does.

    TAR@FAR is measured on all pairs, not cross-validated: the largest fraction of same pairs
    accepted by a threshold that accepts at most FAR of the different pairs. It is reported only
    where there are at least 1/FAR different pairs (else None).

    Returns JSON-ready values: accuracy (mean over folds), accuracy_std (population std, as
    insightface), fold_accuracies, best_threshold (mean of the folds' thresholds), fold_thresholds,
    tar_at_far {"0.01": ..., "0.001": ..., "0.0001": ...}, xnorm, flip, num_pairs, and roc
    {fpr, tpr, thresholds}: "same" means distance <= threshold, one point per distinct distance
    after a first point that accepts nothing.
    """
    raw_embeddings = [_as_matrix(embeddings1, "embeddings1"), _as_matrix(embeddings2, "embeddings2")]
    if raw_embeddings[0].shape != raw_embeddings[1].shape:
        raise FacekdError(
            f"embeddings2: shape {raw_embeddings[1].shape} differs from embeddings1 {raw_embeddings[0].shape}"
        )
    flip = flipped_embeddings1 is not None or flipped_embeddings2 is not None
    if flip:
        if flipped_embeddings1 is None or flipped_embeddings2 is None:
            raise FacekdError("flipped_embeddings1, flipped_embeddings2: give both or neither")
        distances = pair_distances(
            flip_sum(raw_embeddings[0], flipped_embeddings1), flip_sum(raw_embeddings[1], flipped_embeddings2)
        )
        raw_embeddings += [_as_matrix(flipped_embeddings1, "flipped_embeddings1"),
                           _as_matrix(flipped_embeddings2, "flipped_embeddings2")]
    else:
        distances = pair_distances(*raw_embeddings)
    issame = _check_issame(issame, len(distances), n_folds)

    fold_accuracies, fold_thresholds = _cross_validated_accuracy(distances, issame, n_folds)
    fpr, tpr, roc_thresholds, false_accepts = _roc(distances, issame)
    num_different = int((~issame).sum())
    tar_at_far = {}
    for far in FARS:
        # Integer counts with a relative tolerance, so that e.g. 1e-3 * 3000 negatives allows exactly 3.
        allowed = far * num_different * (1 + 1e-9)
        tar_at_far[f"{far:g}"] = float(tpr[false_accepts <= allowed].max()) if allowed >= 1 else None
    return {
        "num_pairs": len(distances),
        "flip": flip,
        "accuracy": float(np.mean(fold_accuracies)),
        "accuracy_std": float(np.std(fold_accuracies)),
        "fold_accuracies": fold_accuracies.tolist(),
        "best_threshold": float(np.mean(fold_thresholds)),
        "fold_thresholds": fold_thresholds.tolist(),
        "tar_at_far": tar_at_far,
        "xnorm": float(np.mean(np.concatenate([np.linalg.norm(raw, axis=1) for raw in raw_embeddings]))),
        "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": roc_thresholds.tolist()},
    }


def _as_matrix(embeddings: np.ndarray, name: str) -> np.ndarray:
    matrix = np.asarray(embeddings, dtype=np.float64)
    if matrix.ndim != 2:
        raise FacekdError(f"{name}: shape {matrix.shape} (expected pairs x embedding dimension)")
    return matrix


def _check_issame(issame: np.ndarray, num_pairs: int, n_folds: int) -> np.ndarray:
    issame = np.asarray(issame)
    if issame.dtype != bool or issame.shape != (num_pairs,):
        raise FacekdError(f"issame: {issame.dtype} of shape {issame.shape} (expected bool of shape ({num_pairs},))")
    if issame.all() or not issame.any():
        raise FacekdError("issame: the pairs must include both same and different pairs")
    if not 2 <= n_folds <= num_pairs:
        raise FacekdError(f"n_folds: {n_folds} (expected 2..{num_pairs}, the number of pairs)")
    return issame


def _correct_per_threshold(distances: np.ndarray, issame: np.ndarray) -> np.ndarray:
    """For each of THRESHOLDS, how many pairs "same iff distance < threshold" gets right."""
    same = np.sort(distances[issame])
    different = np.sort(distances[~issame])
    same_accepted = np.searchsorted(same, THRESHOLDS, side="left")  # count of distances < threshold
    different_rejected = len(different) - np.searchsorted(different, THRESHOLDS, side="left")
    return same_accepted + different_rejected


def _cross_validated_accuracy(
    distances: np.ndarray, issame: np.ndarray, n_folds: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-fold accuracy and threshold; folds are contiguous, the first N % n_folds one pair larger
    (as sklearn's KFold without shuffling, which insightface uses)."""
    folds = np.array_split(np.arange(len(distances)), n_folds)
    correct = np.stack([_correct_per_threshold(distances[fold], issame[fold]) for fold in folds])
    correct_everywhere = correct.sum(axis=0)
    accuracies = np.empty(n_folds)
    thresholds = np.empty(n_folds)
    for index, fold in enumerate(folds):
        best = np.argmax(correct_everywhere - correct[index])  # first best on the other folds, as np.argmax
        accuracies[index] = correct[index, best] / len(fold)
        thresholds[index] = THRESHOLDS[best]
    return accuracies, thresholds


def _roc(distances: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """fpr, tpr, thresholds and false-accept counts for "same iff distance <= threshold"."""
    order = np.argsort(distances, kind="stable")
    sorted_distances = distances[order]
    sorted_issame = issame[order]
    last_of_value = np.append(sorted_distances[1:] != sorted_distances[:-1], True)
    true_accepts = np.concatenate([[0], np.cumsum(sorted_issame)[last_of_value]])
    false_accepts = np.concatenate([[0], np.cumsum(~sorted_issame)[last_of_value]])
    # The first point accepts nothing: its threshold is the largest float below every distance.
    thresholds = np.concatenate([[np.nextafter(sorted_distances[0], -np.inf)], sorted_distances[last_of_value]])
    return false_accepts / false_accepts[-1], true_accepts / true_accepts[-1], thresholds, false_accepts
