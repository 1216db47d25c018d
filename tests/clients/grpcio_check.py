"""Calls grpc.health.v1.Health/Check through grpcio (Python's gRPC, not tonic) and
prints the status code's name and the length of its details: `OK 0` on success.

    python3 grpcio_check.py 127.0.0.1:50051 ak_key
"""

import sys

import grpc

target, key = sys.argv[1], sys.argv[2]
with grpc.insecure_channel(target) as channel:
    # No serializers: the empty request (a HealthCheckRequest with no fields) as bytes.
    check = channel.unary_unary("/grpc.health.v1.Health/Check")
    try:
        check(b"", metadata=[("x-api-key", key)], timeout=10)
        print("OK 0")
    except grpc.RpcError as error:
        print(error.code().name, len(error.details() or ""))
