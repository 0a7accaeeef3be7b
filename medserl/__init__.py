"""MedSeRL's API, the ground floor: ``medserl.v1`` holds the protobuf/gRPC stubs generated from
``protos/medserl/v1`` (``make protos``). Every service and the CLI import down to it; it imports
nothing of ours."""
