"""The margin head sharded over 2 real gloo ranks (processes) against the full head on one process."""
import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.errors import FacekdError
from pipeline.stage_two.distributed import gather_from_all_ranks, norm_over_ranks
from pipeline.stage_two.losses import ShardedMarginHead, margin_head, margin_values
from tests.ranks import free_port, run_forked_ranks

WORLD_SIZE = 2


def run_on_two_ranks(worker, *args) -> None:
    """Run `worker(rank, *args)` in 2 processes of one gloo group; a failed assertion in either fails the test."""
    run_forked_ranks(_in_group, (free_port(), worker, args), nprocs=WORLD_SIZE)


def _in_group(rank: int, port: int, worker, args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        worker(rank, *args)
    finally:
        dist.destroy_process_group()


class Classifier(nn.Module):
    """A linear 'backbone' and a margin head, as StudentModel holds them."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = nn.Linear(6, 8), head

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(inputs), labels)


def _equal_to_the_full_head(rank: int, kind: str) -> None:
    """In float64: the sharded and the full head are the same function, summed in another order, and s = 64
    amplifies float32 rounding (of inputs that another GEMM shape rounds differently, on some CPUs) past 1e-5."""
    num_classes, batch = 11, 12  # shards of 5 and 6 classes; each rank holds 6 of the batch's rows
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(batch, 6, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, num_classes, (batch,), generator=generator)
    mine = slice(rank * batch // WORLD_SIZE, (rank + 1) * batch // WORLD_SIZE)
    torch.manual_seed(1)
    full = margin_head(kind, 8, num_classes).double()
    torch.manual_seed(1)
    sharded = ShardedMarginHead(8, num_classes, rank, WORLD_SIZE, **margin_values(kind)).double()
    shard = slice(sharded.start, sharded.end)
    assert (sharded.start, sharded.end) == ((0, 5), (5, 11))[rank]
    assert torch.equal(sharded.weight, full.weight[shard]), "the shard does not start as the full head's rows"

    # The head alone: same loss; the centres' gradients are the full head's rows; the embeddings'
    # are world_size x the full head's (DDP's average over the ranks divides them again).
    embeddings = torch.randn(batch, 8, generator=generator, dtype=torch.float64)
    full_embeddings, my_embeddings = embeddings.clone().requires_grad_(), embeddings[mine].clone().requires_grad_()
    full_loss, loss = full(full_embeddings, labels), sharded(my_embeddings, labels[mine])
    full_loss.backward()
    loss.backward()
    torch.testing.assert_close(loss, full_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(my_embeddings.grad / WORLD_SIZE, full_embeddings.grad[mine], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sharded.weight.grad, full.weight.grad[shard], rtol=1e-5, atol=1e-5)

    # Under DDP, with the centres ignored: the backbone gets one process's gradient of the whole batch.
    reference = Classifier(full).double()
    model = Classifier(sharded).double()
    model.backbone.load_state_dict(reference.backbone.state_dict())
    full.weight.grad = sharded.weight.grad = None
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ["head.weight"])
    reference(inputs, labels).backward()
    trained = DistributedDataParallel(model)  # held: the gradients are averaged by its hooks during backward
    trained(inputs[mine], labels[mine]).backward()
    for name, parameter in reference.backbone.named_parameters():
        torch.testing.assert_close(model.backbone.get_parameter(name).grad, parameter.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sharded.weight.grad, full.weight.grad[shard], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
def test_sharded_head_at_rate_one_equals_the_full_head(kind: str) -> None:
    run_on_two_ranks(_equal_to_the_full_head, kind)


def _samples_the_batch_classes_of_its_range(rank: int) -> None:
    num_classes = 40
    # 8 rows per rank; classes 3, 7 and 9 in shard 0 (0-19), 22 and 31 in shard 1 (20-39)
    labels = torch.tensor([3, 7, 22, 3, 9, 31, 22, 7, 9, 9, 3, 31, 7, 22, 3, 31])
    embeddings = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    mine = slice(rank * 8, (rank + 1) * 8)
    torch.manual_seed(1)
    full = margin_head("cosface", 8, num_classes)
    torch.manual_seed(1)
    sharded = ShardedMarginHead(8, num_classes, rank, WORLD_SIZE, sample_rate=0.25, **margin_values("cosface"))
    classes = sharded.sample_classes(labels) + sharded.start
    batch_classes = {class_ for class_ in labels.tolist() if sharded.start <= class_ < sharded.end}
    assert len(classes) == 5 and torch.equal(classes, classes.sort().values)  # ⌈0.25 x 20⌉ of the shard's 20
    assert batch_classes <= set(classes.tolist()) and len(batch_classes) < 5  # the others drawn at random

    # The sharded loss is the full head's over the centres both ranks sampled.
    sampled = gather_from_all_ranks(classes)
    subset = margin_head("cosface", 8, len(sampled))
    with torch.no_grad():
        subset.weight.copy_(full.weight[sampled])
    subset_embeddings, my_embeddings = embeddings.clone().requires_grad_(), embeddings[mine].clone().requires_grad_()
    expected, loss = subset(subset_embeddings, torch.searchsorted(sampled, labels)), sharded(my_embeddings, labels[mine])
    expected.backward()
    loss.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(my_embeddings.grad / WORLD_SIZE, subset_embeddings.grad[mine], rtol=1e-5, atol=1e-5)
    mine_in_subset = (sampled >= sharded.start) & (sampled < sharded.end)
    rows, centres = sharded.sampled
    assert sharded.weight.grad is None and torch.equal(rows, classes - sharded.start)
    torch.testing.assert_close(centres.grad, subset.weight.grad[mine_in_subset])
    assert int(sharded.step) == 1 and not torch.equal(sharded.sample_classes(labels) + sharded.start, classes)


def test_sharded_head_samples_every_batch_class_of_its_range() -> None:
    run_on_two_ranks(_samples_the_batch_classes_of_its_range)


def _norm_over_both_ranks(rank: int) -> None:
    replicated = [torch.tensor([3.0, 4.0])]
    sharded = [torch.tensor([[1.0, 2.0]]) if rank == 0 else torch.tensor([[5.0, 0.0], [0.0, 1.0]])]
    expected = torch.linalg.vector_norm(torch.tensor([3.0, 4.0, 1.0, 2.0, 5.0, 0.0, 0.0, 1.0]))
    torch.testing.assert_close(norm_over_ranks(replicated, sharded), expected)
    assert torch.equal(norm_over_ranks(replicated, []), torch.tensor(5.0))


def test_norm_over_ranks_counts_every_shard_once() -> None:
    run_on_two_ranks(_norm_over_both_ranks)


def test_sharded_head_needs_a_class_per_rank() -> None:
    with pytest.raises(FacekdError, match="3 classes cannot be sharded over 4 ranks"):
        ShardedMarginHead(8, 3, 0, 4)
