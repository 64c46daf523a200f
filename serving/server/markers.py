"""Files a model worker writes into the server's run directory.

The ``serve`` supervisor (and the process runner of the local transform)
read them to tell "the model is loaded" from "``model_fn`` failed", which
multi-model-server's own ``/ping`` does not say.
"""

MODEL_ERROR_FILE = "model_error.txt"
MODEL_READY_FILE = "model_ready.txt"
