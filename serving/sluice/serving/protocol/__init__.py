"""Open Inference Protocol (KServe v2): the REST JSON codec, input validation and the transport-free data plane."""
