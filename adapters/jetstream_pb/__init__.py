"""Generated protobuf messages of ``adapters/jetstream.proto`` (grpcio-tools 1.85.1); do not edit.

Regenerate from the repository root with::

    python -m grpc_tools.protoc -I adapters --python_out=adapters/jetstream_pb \
        --pyi_out=adapters/jetstream_pb adapters/jetstream.proto

No service stubs are generated: the adapter calls the two methods by path on a
``grpc.aio`` channel, so only the message classes are needed.
"""
