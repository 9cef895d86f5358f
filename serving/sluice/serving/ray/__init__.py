"""Sluice on Ray Serve: the router as ingress deployment, one ONNX deployment per model version.

`app.build_app(args)` is the import path a Serve config (and a RayService serveConfigV2) points at;
`app.serve_application(config)` returns that application entry for a ServingConfig.
"""
