"""Test-only harness: Beam's portable job service and worker pools, on 127.0.0.1 only,
with the work spread over several separate worker-pool processes.

This is how Flink and Spark run Python: a job service hands bundles to SDK workers that
a worker pool (``worker_pool_main``, the task manager's side) starts as processes. The
stock mains bind every interface and the stock local job service starts one SDK worker,
so this harness:

- ``pool PORT``: a worker pool (Beam's own servicer, workers as processes) on 127.0.0.1;
- ``service PORT PROXY_PORT WORKERS POOL_PORT...``: Beam's local job service on
  127.0.0.1:PORT, running each job with WORKERS SDK workers, plus a tiny pool proxy on
  127.0.0.1:PROXY_PORT that forwards each StartWorker request to the next real pool in
  turn. Jobs use ``--environment_type=EXTERNAL --environment_config=127.0.0.1:PROXY_PORT``.

Pools start workers with the ``python`` first on PATH; the caller puts the project's
interpreter there and the project on PYTHONPATH.
"""

from __future__ import annotations

import itertools
import sys
import threading

import grpc

_grpc_server = grpc.server


def _loopback_server(*args, **kwargs):
    """grpc.server whose ports bind 127.0.0.1 instead of every interface."""
    server = _grpc_server(*args, **kwargs)
    add = server.add_insecure_port

    def add_insecure_port(address: str) -> int:
        host, _, port = address.rpartition(":")
        if host in ("[::]", "0.0.0.0", "", "localhost"):
            address = f"127.0.0.1:{port}"
        return add(address)

    server.add_insecure_port = add_insecure_port
    return server


grpc.server = _loopback_server

from apache_beam.portability.api import beam_fn_api_pb2_grpc  # noqa: E402
from apache_beam.runners.worker.worker_pool_main import (  # noqa: E402
    BeamFnExternalWorkerPoolServicer,
)
from apache_beam.utils import thread_pool_executor  # noqa: E402


def run_pool(port: int) -> None:
    address, server = BeamFnExternalWorkerPoolServicer.start(use_process=True, port=port)
    print(f"pool listening at {address}", flush=True)
    server.wait_for_termination()


class _RoundRobinPool(beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolServicer):
    """Forwards StartWorker/StopWorker to real pools, one after another."""

    def __init__(self, pool_ports: list[int]):
        self.stubs = [
            beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolStub(
                grpc.insecure_channel(f"127.0.0.1:{p}")
            )
            for p in pool_ports
        ]
        self.turn = itertools.cycle(range(len(self.stubs)))
        self.owner: dict[str, int] = {}
        self.lock = threading.Lock()

    def StartWorker(self, request, context):  # noqa: N802 - gRPC method name
        with self.lock:
            i = next(self.turn)
            self.owner[request.worker_id] = i
        print(f"worker {request.worker_id} -> pool {i}", flush=True)
        return self.stubs[i].StartWorker(request)

    def StopWorker(self, request, context):  # noqa: N802
        i = self.owner.get(request.worker_id, 0)
        return self.stubs[i].StopWorker(request)


def run_service(port: int, proxy_port: int, workers: int, pool_ports: list[int]) -> None:
    from apache_beam.runners.portability import local_job_service
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    init = fn_runner.FnApiRunner.__init__

    def with_workers(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self._num_workers = workers  # the stock service never reads direct_num_workers

    fn_runner.FnApiRunner.__init__ = with_workers
    proxy = grpc.server(thread_pool_executor.shared_unbounded_instance())
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(
        _RoundRobinPool(pool_ports), proxy
    )
    proxy.add_insecure_port(f"127.0.0.1:{proxy_port}")
    proxy.start()
    servicer = local_job_service.LocalJobServicer()
    servicer.get_bind_address = lambda: "127.0.0.1"
    bound = servicer.start_grpc_server(port)
    print(f"job service at 127.0.0.1:{bound}, pool proxy at 127.0.0.1:{proxy_port}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    if mode == "pool":
        run_pool(int(rest[0]))
    else:
        run_service(int(rest[0]), int(rest[1]), int(rest[2]), [int(p) for p in rest[3:]])
