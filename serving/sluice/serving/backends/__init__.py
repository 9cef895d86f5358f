"""Where inference runs: one Backend implementation per file, chosen by `make_backend`."""
