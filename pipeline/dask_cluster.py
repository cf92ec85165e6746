"""The dask client of the stages that fan work out to worker processes (`facekd embed`, `facekd index`,
`facekd mine`).

Either the cluster at a given scheduler address (the user's; it keeps running afterwards) or a
local cluster of worker processes started for one command and closed with it.
"""
from __future__ import annotations

import logging
import signal
import uuid
from collections import deque
from typing import Any, Callable, Iterable, Iterator, TypeVar

from pipeline.errors import FacekdError

Result = TypeVar("Result")


def dask_client(workers: int, threads_per_worker: int, scheduler: str | None) -> Any:
    """A client of the cluster at `scheduler`, or of a local cluster whose workers leave Ctrl-C to this process."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="10s")
        except OSError as error:
            raise FacekdError(f"cannot reach the dask scheduler at {scheduler} ({error})") from None
    # Worker processes inherit an ignored SIGINT: Ctrl-C in a terminal reaches the whole process group,
    # and only this process should react (by stopping the cluster), not every worker with a traceback.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
            dashboard_address=None, silence_logs=logging.CRITICAL,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    return Client(cluster)


def close_quietly(client: Any) -> None:
    """Close the client and a local cluster without the shutdown chatter of distributed's loggers.

    A cluster given by `--scheduler` belongs to the user and keeps running.
    """
    cluster = client.cluster
    quiet = [logging.getLogger(name) for name in ("distributed", "tornado", "asyncio")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        client.close()
        if cluster is not None:
            cluster.close()
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)


def map_in_order(
    client: Any, function: Callable[..., Result], argument_tuples: Iterable[tuple], name: str
) -> Iterator[Result]:
    """`function(*arguments)` for each tuple, run on the cluster's workers, results yielded in the tuples' order.

    At most two tasks per worker are in flight, so results never pile up in memory. The arguments travel
    inside the task graph: keep them small (paths, row ranges) and let `function` read its data itself.
    """
    window = 2 * max(1, len(client.scheduler_info()["workers"]))
    run_id = uuid.uuid4().hex  # task keys unique on a cluster that other clients share
    in_flight: deque[Any] = deque()
    for position, arguments in enumerate(argument_tuples):
        in_flight.append(client.submit(function, *arguments, key=f"{name}-{position}-{run_id}"))
        if len(in_flight) >= window:
            yield in_flight.popleft().result()
    while in_flight:
        yield in_flight.popleft().result()
