"""Serving the pushed model over gRPC with TensorFlow Serving's API (see README.md here).

`signatures` names what the Trainer exports; `tf_serving` writes and reads what TF Serving reads beside the
pushed versions (warm-up requests, models.config, batching parameters) and `publish` writes them after a
push; `server` is a local PredictionService/ModelService server over the same directories, built from
`model` (one loaded version), `repository` (the watched base directory, its version policy and load
retries) and `batching`; `client` and `examples` send raw CSV rows to either server.
"""
