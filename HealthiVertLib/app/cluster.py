"""dask.distributed as the scale-out executor of ``healthivert batch --dask [ADDRESS]``.

Without an address (``local``) a ``distributed.LocalCluster`` of ``--workers`` single-threaded
processes runs on this machine; with ``tcp://host:port`` the cases go to an existing scheduler (many
machines sharing a file system; ``dask-jobqueue`` starts one on SLURM or PBS). Each task is
``casework.process_case``: it grades one case and writes straight into ``OUT`` with the completion
marker; the client gathers only the small per-case rows. A task that fails (its worker died) is
retried once, then its case is marked ``failed`` with the error. A worker plugin builds the engine
once per worker process. dask is imported only here, and this module only with ``--dask``
(``pip install 'healthivert[cluster]'``).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import HealthiVertError
from ..io.discover import CaseFiles
from .casework import prepare_worker, process_case, row

LOCAL = "local"  # --dask without an address
_ADDRESS = re.compile(r"(?:[a-z][a-z0-9+]*://)?(?:\[[0-9A-Fa-f:.]+\]|[\w.-]+):\d{1,5}")
PLUGIN_NAME = "healthivert-engine"


def check_address(address: str) -> str:
    """``address`` when it is ``local`` or a scheduler address (``tcp://host:port``, ``host:port``)."""
    if address == LOCAL or _ADDRESS.fullmatch(address):
        return address
    raise HealthiVertError(
        f"--dask '{address}' is not a dask scheduler address such as tcp://10.0.0.5:8786. Give --dask after INPUT "
        "(or as --dask=ADDRESS), and without an address for a cluster on this machine."
    )


def engine_plugin(options: dict):
    """A ``distributed.WorkerPlugin`` that readies each worker (``casework.prepare_worker``): the engine is
    built once per worker process, figures are drawn in it, and it exits when its parent process dies."""
    from distributed import WorkerPlugin

    class HealthiVertWorker(WorkerPlugin):
        """Builds the batch's engine once in every worker that joins."""

        name = PLUGIN_NAME

        def __init__(self, options: dict):
            self.options = options

        def setup(self, worker) -> None:
            prepare_worker(self.options, own_signals=False)

    return HealthiVertWorker(options)


def run_on_dask(cases: Sequence[CaseFiles], out: Path, options: dict, workers: int, address: str,
                on_row: Callable[[dict], None]) -> None:
    """Grade ``cases`` on dask (a new local cluster of ``workers`` processes, or the scheduler at
    ``address``), ``on_row`` called as each case ends. An interruption cancels the tasks (and closes a
    local cluster, ending its workers) before it propagates."""
    try:
        import dask
        import distributed
    except ImportError:
        raise HealthiVertError("--dask needs dask.distributed: pip install 'healthivert[cluster]'.") from None

    cluster = None
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):  # a worker death: one retry, then failed
        if address == LOCAL:
            cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                               dashboard_address=None, silence_logs=logging.ERROR)
            client = distributed.Client(cluster)
        else:
            try:
                client = distributed.Client(address, timeout="30s")
            except (OSError, TimeoutError) as err:
                raise HealthiVertError(f"Cannot reach the dask scheduler at {address}: {err}") from None
    futures: list = []
    try:
        try:
            client.register_plugin(engine_plugin(options), name=PLUGIN_NAME)
        except Exception as err:  # noqa: BLE001 - what a remote worker raised, as one line
            raise HealthiVertError(f"The dask workers could not prepare the engine: {err}") from None
        token = uuid.uuid4().hex[:8]
        futures = [client.submit(process_case, c, str(out), options, key=f"healthivert-{c.folder}-{token}",
                                 retries=1, pure=False) for c in cases]
        case_of = {f.key: c for f, c in zip(futures, cases)}
        for future in distributed.as_completed(futures):
            try:
                result = future.result()
            except Exception as err:  # noqa: BLE001 - the task failed twice (worker died, lost): the others go on
                result = row(case_of[future.key], "failed", 0, "", f"dask task failed after one retry: {err!r}")
            on_row(result)
            future.release()
    except BaseException:
        if futures:
            client.cancel(futures)
        raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
