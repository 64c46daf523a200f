"""Files a model worker writes into the server's run directory.

The ``serve`` supervisor (and the process runner of the local transform)
read them to tell "the model is loaded" from "``model_fn`` failed", which
multi-model-server's own ``/ping`` does not say.
"""

MODEL_ERROR_FILE = "model_error.txt"
MODEL_READY_FILE = "model_ready.txt"

#: The last line of the worker's log record for a request it did not answer
#: with 200 (after the traceback, for a 5xx): a reader of the log waits for it
#: instead of waiting a while, since MMS forwards the worker's log on its own
#: thread and the client can have the answer before the log has the traceback.
ANSWERED = "smserve: request {index} answered {status}"
#: What :data:`ANSWERED` looks like in a log line.
ANSWERED_MARK = "smserve: request "
