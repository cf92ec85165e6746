"""The model and optimizer state a checkpoint holds, whole even where the margin head is sharded.

With a `ShardedMarginHead` every rank holds only its range of the class centres (and of their
momentum: in the optimizer's state, or in the head's own buffer when it samples). Saving gathers
every rank's rows, so the checkpoint that rank 0 writes holds all C centres, in class order, as a
one-process run's does; resuming hands each rank its rows back.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from pipeline.stage_two.losses import ShardedMarginHead
from pipeline.stage_two.student import StudentModel

# A sharded head's tensors with a row per class centre: its weight and, when it samples, its momentum.
ROW_STATE = ("head.weight", "head.momentum")


def gathered_state(model: StudentModel, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model's and the optimizer's state dicts, a sharded head's rows gathered from every rank
    (a collective: every rank must call it)."""
    model_state, optimizer_state = model.state_dict(), optimizer.state_dict()
    head = model.head
    if isinstance(head, ShardedMarginHead):
        for name in ROW_STATE:
            if name in model_state:
                model_state[name] = head.gather_rows(model_state[name])
        _map_row_state(optimizer_state, _state_index(optimizer, head.weight), head.weight.shape, head.gather_rows)
    return model_state, optimizer_state


def load_state(
    model: StudentModel, optimizer: torch.optim.Optimizer, model_state: dict[str, Any], optimizer_state: dict[str, Any]
) -> None:
    """Load what `gathered_state` returned: a sharded head takes its own rows."""
    head = model.head
    if isinstance(head, ShardedMarginHead):
        model_state = {name: head.shard_rows(value) if name in ROW_STATE else value for name, value in model_state.items()}
        optimizer_state = {**optimizer_state, "state": dict(optimizer_state["state"])}
        full_shape = (head.num_classes, head.weight.shape[1])
        _map_row_state(optimizer_state, _state_index(optimizer, head.weight), full_shape, head.shard_rows)
    model.load_state_dict(model_state)
    optimizer.load_state_dict(optimizer_state)


def _state_index(optimizer: torch.optim.Optimizer, parameter: Tensor) -> int:
    """The key of `parameter` in `optimizer.state_dict()["state"]`: its place among all groups' parameters."""
    parameters = [candidate for group in optimizer.param_groups for candidate in group["params"]]
    return next(index for index, candidate in enumerate(parameters) if candidate is parameter)


def _map_row_state(
    optimizer_state: dict[str, Any], index: int, shape: tuple[int, ...], rows: Callable[[Tensor], Tensor]
) -> None:
    """Replace the tensors of parameter `index`'s optimizer state that have its `shape` (SGD's
    momentum) by `rows` of them; a new dict, since `optimizer.state_dict()` shares the live one."""
    state = optimizer_state["state"].get(index)
    if state is not None:
        optimizer_state["state"][index] = {
            key: rows(value) if isinstance(value, Tensor) and value.shape == shape else value for key, value in state.items()
        }
