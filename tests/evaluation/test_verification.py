import numpy as np
import pytest
from sklearn.metrics import roc_curve
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize

from pipeline.errors import FacekdError
from pipeline.evaluation.verification import flip_sum, verification_report


def noisy_pairs(num_pairs: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Same pairs are noisy copies, different pairs independent; rows get random norms."""
    rng = np.random.default_rng(seed)
    issame = rng.random(num_pairs) < 0.5
    embeddings1 = rng.normal(size=(num_pairs, 16))
    embeddings2 = np.where(issame[:, None], embeddings1 + noise * rng.normal(size=(num_pairs, 16)),
                           rng.normal(size=(num_pairs, 16)))
    embeddings1 *= rng.uniform(0.5, 20, size=(num_pairs, 1))
    embeddings2 *= rng.uniform(0.5, 20, size=(num_pairs, 1))
    return embeddings1, embeddings2, issame


def independent_distances(embeddings1, embeddings2):
    return np.sum(np.square(normalize(embeddings1) - normalize(embeddings2)), axis=1)


def test_cross_validated_accuracy_matches_a_hand_computation():
    embeddings1, embeddings2, issame = noisy_pairs(203, noise=1.3, seed=0)  # folds of 21 and 20 pairs
    report = verification_report(embeddings1, embeddings2, issame)

    # insightface's calculate_roc, written out: for each fold, the threshold most accurate on the
    # other nine (first one on ties), then that threshold's accuracy on the fold.
    distances = independent_distances(embeddings1, embeddings2)
    thresholds = np.arange(0, 4, 0.01)
    expected_accuracies = []
    expected_thresholds = []
    for train, test in KFold(n_splits=10, shuffle=False).split(distances):
        best_threshold, best_accuracy = None, -1.0
        for threshold in thresholds:
            accuracy = np.mean((distances[train] < threshold) == issame[train])
            if accuracy > best_accuracy:
                best_threshold, best_accuracy = threshold, accuracy
        right = 0
        for index in test:
            right += (distances[index] < best_threshold) == issame[index]
        expected_accuracies.append(right / len(test))
        expected_thresholds.append(best_threshold)

    assert report["fold_accuracies"] == pytest.approx(expected_accuracies, abs=1e-12)
    assert report["fold_thresholds"] == pytest.approx(expected_thresholds, abs=1e-12)
    assert report["accuracy"] == pytest.approx(np.mean(expected_accuracies))
    assert report["accuracy_std"] == pytest.approx(np.std(expected_accuracies))
    assert report["best_threshold"] == pytest.approx(np.mean(expected_thresholds))
    assert 0.6 < report["accuracy"] < 0.99 and report["accuracy_std"] > 0  # a case where thresholds matter
    assert report["num_pairs"] == 203 and report["flip"] is False


def test_roc_matches_sklearn():
    embeddings1, embeddings2, issame = noisy_pairs(150, noise=1.3, seed=1)
    roc = verification_report(embeddings1, embeddings2, issame)["roc"]

    distances = independent_distances(embeddings1, embeddings2)
    fpr, tpr, thresholds = roc_curve(issame, -distances, drop_intermediate=False)
    assert roc["fpr"] == pytest.approx(fpr.tolist())
    assert roc["tpr"] == pytest.approx(tpr.tolist())
    assert roc["thresholds"][1:] == pytest.approx((-thresholds[1:]).tolist())
    # The first point accepts nothing: its threshold lies below every distance.
    assert roc["thresholds"][0] < distances.min()


def test_tar_at_far_matches_sklearn_and_needs_enough_negatives():
    embeddings1, embeddings2, issame = noisy_pairs(2600, noise=1.3, seed=2)
    num_different = int((~issame).sum())
    assert 1000 <= num_different < 10000
    report = verification_report(embeddings1, embeddings2, issame)

    fpr, tpr, _ = roc_curve(issame, -independent_distances(embeddings1, embeddings2))
    for far in (1e-2, 1e-3):
        assert report["tar_at_far"][f"{far:g}"] == pytest.approx(tpr[fpr <= far].max())
    assert 0 < report["tar_at_far"]["0.001"] < report["tar_at_far"]["0.01"] < 1
    assert report["tar_at_far"]["0.0001"] is None


def test_separable_pairs_score_perfectly():
    rng = np.random.default_rng(3)
    basis = np.eye(200)
    embeddings1 = basis * rng.uniform(1, 5, size=(200, 1))
    issame = np.arange(200) % 2 == 0
    # Same pairs: a small tilt (distance 2 - 2 / sqrt(1.01), just below 0.01); different pairs: orthogonal (distance 2).
    embeddings2 = np.where(issame[:, None], embeddings1 + 0.1 * np.roll(embeddings1, 1, axis=1),
                           np.roll(basis, 1, axis=1))
    report = verification_report(embeddings1, embeddings2, issame)

    assert report["accuracy"] == 1.0 and report["accuracy_std"] == 0.0
    assert report["fold_thresholds"] == [0.01] * 10  # the first grid threshold that accepts every same pair
    assert report["tar_at_far"]["0.01"] == 1.0  # 100 different pairs allow FAR 1e-2
    assert report["tar_at_far"]["0.001"] is None


def test_flip_sum_embeddings_and_xnorm_over_raw_outputs():
    embeddings1, embeddings2, issame = noisy_pairs(60, noise=1.0, seed=4)
    flipped1, flipped2, _ = noisy_pairs(60, noise=1.0, seed=5)
    assert np.array_equal(flip_sum(embeddings1, flipped1), embeddings1 + flipped1)

    report = verification_report(embeddings1, embeddings2, issame, flipped_embeddings1=flipped1,
                                 flipped_embeddings2=flipped2)
    summed = verification_report(flip_sum(embeddings1, flipped1), flip_sum(embeddings2, flipped2), issame)
    assert report["flip"] is True
    assert report["fold_accuracies"] == summed["fold_accuracies"]
    assert report["roc"] == summed["roc"]
    raw_norms = [np.linalg.norm(row) for raw in (embeddings1, embeddings2, flipped1, flipped2) for row in raw]
    assert report["xnorm"] == pytest.approx(sum(raw_norms) / 240)


def test_xnorm_is_the_mean_norm_of_the_given_embeddings():
    embeddings1 = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    embeddings2 = np.array([[4.0, 0.0], [4.0, 0.0], [0.0, 4.0], [0.0, 4.0]])
    report = verification_report(embeddings1, embeddings2, np.array([True, False, False, True]), n_folds=2)
    assert report["xnorm"] == pytest.approx(3.0)
    assert report["accuracy"] == 1.0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"issame": np.ones(20, dtype=bool)}, "both same and different"),
        ({"issame": np.arange(20) % 2}, "expected bool"),
        ({"n_folds": 21}, "n_folds: 21"),
        ({"embeddings2": np.ones((19, 4))}, "embeddings2: shape"),
        ({"flipped_embeddings1": np.ones((20, 4))}, "give both or neither"),
    ],
)
def test_verification_report_refuses_bad_input(change, message):
    arguments = {"embeddings1": np.ones((20, 4)), "embeddings2": np.ones((20, 4)), "issame": np.arange(20) % 2 == 0}
    arguments.update(change)
    with pytest.raises(FacekdError, match=message):
        verification_report(**arguments)
