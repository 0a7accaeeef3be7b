"""Container HEALTHCHECK: the standard gRPC health check on 127.0.0.1:$MEDSERL_GRPC_PORT (default 50051).

Kubernetes ignores HEALTHCHECK and probes the same endpoint natively (grpc probes in the manifests);
this makes ``docker run`` and compose report health too. Exit 0 when SERVING, 1 otherwise.
"""

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

port = os.environ.get("MEDSERL_GRPC_PORT", "50051")
try:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=4)
    sys.exit(0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1)
except grpc.RpcError:
    sys.exit(1)
