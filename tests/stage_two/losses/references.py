"""Straightforward reference implementations: explicit Python loops over samples, anchors,
pairs and triplets, written from the formulas in shared/method.md and the cited papers
without reusing any code from pipeline/stage_two/losses. The golden numbers in the tests were
computed once with these functions (float64) and agree with pipeline/stage_two/losses."""
from __future__ import annotations

import math

import torch


def unit(vector: torch.Tensor) -> torch.Tensor:
    return vector / vector.norm()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(unit(a) @ unit(b))


def softmax_cross_entropy(logits: list[float], target: int) -> float:
    largest = max(logits)
    log_normaliser = largest + math.log(sum(math.exp(value - largest) for value in logits))
    return log_normaliser - logits[target]


def margin_target(cos_theta: float, m1: float, m2: float, m3: float, easy_margin: bool) -> float:
    """cos(m1·θ + m2) − m3, with insightface's fall-back where m1·θ + m2 >= π."""
    theta = math.acos(max(-1.0, min(1.0, cos_theta)))
    if easy_margin:
        with_margin = math.cos(m1 * theta + m2) if cos_theta > 0 else cos_theta
    elif m1 * theta + m2 < math.pi:
        with_margin = math.cos(m1 * theta + m2)
    else:
        with_margin = cos_theta - m2 * math.sin(m2)
    return with_margin - m3


def margin_cross_entropy(embeddings, centres, labels, s, m1=1.0, m2=0.5, m3=0.0, easy_margin=False) -> float:
    losses = []
    for embedding, label in zip(embeddings, labels.tolist()):
        logits = [s * cosine(embedding, centre) for centre in centres]
        logits[label] = s * margin_target(cosine(embedding, centres[label]), m1, m2, m3, easy_margin)
        losses.append(softmax_cross_entropy(logits, label))
    return sum(losses) / len(losses)


def iled(student, teacher, rho: float, beta: float) -> float:
    distances = [2.0 * (1.0 - cosine(s, t)) for s, t in zip(student, teacher)]
    hard = sorted(distances, reverse=True)[: max(1, math.ceil(round(rho * len(distances), 9)))]
    return sum(distances) / len(distances) + beta * sum(hard) / len(hard)


def raw_l2(student, teacher) -> float:
    return sum(float(((s - t) ** 2).sum()) for s, t in zip(student, teacher)) / len(student)


def fc(student, teacher) -> float:
    return sum(float(((unit(s) - unit(t)) ** 2).sum()) for s, t in zip(student, teacher)) / len(student)


def smooth_l1(a: float, b: float) -> float:
    difference = abs(a - b)
    return 0.5 * difference**2 if difference < 1 else difference - 0.5


def rkd(student, teacher, distance_weight=1.0, angle_weight=2.0) -> float:
    size = len(student)

    def normalised_distances(embeddings):
        distances = [[float((embeddings[i] - embeddings[j]).norm()) for j in range(size)] for i in range(size)]
        off_diagonal = [distances[i][j] for i in range(size) for j in range(size) if i != j]
        mean = sum(off_diagonal) / len(off_diagonal)
        return [[value / mean for value in row] for row in distances]

    def angle(embeddings, i, j, k):
        first, second = embeddings[j] - embeddings[i], embeddings[k] - embeddings[i]
        if first.norm() == 0 or second.norm() == 0:  # degenerate triplet: Park's code gives 0
            return 0.0
        return cosine(first, second)

    student_distances, teacher_distances = normalised_distances(student), normalised_distances(teacher)
    distance_term = sum(
        smooth_l1(student_distances[i][j], teacher_distances[i][j]) for i in range(size) for j in range(size)
    ) / size**2
    angle_term = sum(
        smooth_l1(angle(student, i, j, k), angle(teacher, i, j, k))
        for i in range(size) for j in range(size) for k in range(size)
    ) / size**3
    return distance_weight * distance_term + angle_weight * angle_term


def sp(student, teacher) -> float:
    size = len(student)
    total = 0.0
    for i in range(size):
        student_row = [float(student[i] @ student[j]) for j in range(size)]
        teacher_row = [float(teacher[i] @ teacher[j]) for j in range(size)]
        student_norm = math.sqrt(sum(value**2 for value in student_row))
        teacher_norm = math.sqrt(sum(value**2 for value in teacher_row))
        total += sum((a / student_norm - b / teacher_norm) ** 2 for a, b in zip(student_row, teacher_row))
    return total / size**2


def ada_arc_distill_centres(centres, student, teacher, labels):
    """Centres after one AdaArcDistill update: α' from the centres at the start of the step,
    samples applied in batch order, so a repeated class keeps its last sample's update."""
    updated = centres.clone()
    for s, t, label in zip(student, teacher, labels.tolist()):
        centre_agreement = min(1.0, max(1e-6, cosine(centres[label], t)))
        alpha = min(1.0, max(1e-6, cosine(s, t) * centre_agreement))
        updated[label] = alpha * centres[label] + (1.0 - alpha) * unit(t)
    return updated


def rpsd(student, teacher, labels, dataset_indices, bank, k_neg, variant, temperature) -> float:
    """`bank` is (teacher, student, labels, dataset_indices) or None; k_neg None = no mining."""
    references = [(student[j], teacher[j], int(labels[j]), ("batch", j)) for j in range(len(labels))]
    if bank is not None:
        references += [
            (bank[1][k], bank[0][k], int(bank[2][k]), ("bank", int(bank[3][k]))) for k in range(len(bank[2]))
        ]
    squared_errors, anchor_divergences = [], []
    for i in range(len(labels)):
        pairs = []  # (S_ij, T_ij, is_positive)
        for reference_student, reference_teacher, reference_label, origin in references:
            if origin == ("batch", i) or origin == ("bank", int(dataset_indices[i])):
                continue
            pairs.append(
                (
                    cosine(student[i], reference_student),
                    cosine(teacher[i], reference_teacher),
                    reference_label == int(labels[i]),
                )
            )
        if k_neg is not None:
            positives = [pair for pair in pairs if pair[2]]
            negatives = sorted((pair for pair in pairs if not pair[2]), key=lambda pair: max(pair[0], pair[1]))
            pairs = positives + negatives[::-1][:k_neg]
        if not pairs:
            continue
        squared_errors += [(s_ij - t_ij) ** 2 for s_ij, t_ij, _ in pairs]
        teacher_logits = [t_ij / temperature for _, t_ij, _ in pairs]
        student_logits = [s_ij / temperature for s_ij, _, _ in pairs]
        teacher_normaliser = math.log(sum(math.exp(value) for value in teacher_logits))
        student_normaliser = math.log(sum(math.exp(value) for value in student_logits))
        anchor_divergences.append(
            sum(
                math.exp(t - teacher_normaliser) * ((t - teacher_normaliser) - (s - student_normaliser))
                for t, s in zip(teacher_logits, student_logits)
            )
        )
    if variant == "mse":
        return sum(squared_errors) / len(squared_errors)
    return sum(anchor_divergences) / len(anchor_divergences)
