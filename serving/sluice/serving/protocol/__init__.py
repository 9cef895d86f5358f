"""Open Inference Protocol (KServe v2) codecs: REST JSON with the binary tensor extension, and gRPC messages."""
