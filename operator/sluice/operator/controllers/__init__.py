"""One controller per kind: what Kopf's thin handlers hand each resource to (its loop, bad input, backoff)."""
