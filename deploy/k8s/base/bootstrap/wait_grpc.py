"""Block until a gRPC server answers SERVING: ``python wait_grpc.py HOST:PORT [SERVICE] [TIMEOUT_S]``."""

import json
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    target = sys.argv[1]
    service = sys.argv[2] if len(sys.argv) > 2 else ""
    deadline = time.monotonic() + (float(sys.argv[3]) if len(sys.argv) > 3 else 7200.0)
    while time.monotonic() < deadline:
        try:
            with grpc.insecure_channel(target) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=5)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return 0
        except grpc.RpcError:
            pass
        print(json.dumps({"level": "INFO", "logger": "medserl.bootstrap", "message": f"waiting for {target}"}),
              flush=True)
        time.sleep(10)
    return 1


if __name__ == "__main__":
    sys.exit(main())
