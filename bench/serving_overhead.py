"""Per-record latency through the real model server vs the same handlers in-process.

Two models, each measured the same way in one run:

- ``frame_features``: S3-reference requests (one record each, ``overwrite``
  true, so every call fetches the clip from the embedded stack, runs the CNN
  and writes the features);
- ``echo``: a trivial model written to a temporary folder (``model_fn``
  returns None, ``transform_fn`` returns the body), so what is left is the
  server's own cost per request.

For each model: ``smserve serve``'s server (multi-model-server, one worker)
is started on a free port, the handlers are loaded in this process too, and
after a warm-up every record goes through both paths, alternating which goes
first: ``POST /invocations`` over one kept-alive ``http.client`` connection,
and :meth:`serving.handler.Handlers.invoke` with the same body. Overhead is
server median minus in-process median. The echo model is also measured
through a ``requests.Session`` (what the batch-transform data plane uses), and
``GET /ping`` gives the floor of the server's HTTP front end alone.

    .venv/bin/python bench/serving_overhead.py [--records 200] [--warmup 20]

The last line of stdout is one JSON object with the figures.
"""

from __future__ import annotations

import http.client
import json
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    BUCKET,
    MODELS,
    OUTPUT_PREFIX,
    Run,
    bench_stack,
    r3,
    say,
    start_script,
    summary_ms,
)

GOAL_OVERHEAD_MS = 2.0
JSONLINES = "application/jsonlines"
INPUT_PREFIX = "bench/clips/"

ECHO_SERVING = '''\
"""Echo: the smallest model there is; what is left is the server's own cost."""


def model_fn(model_dir):
    return None


def transform_fn(model, body, content_type, accept):
    return body, content_type
'''


class Client:
    """``POST /invocations`` over one kept-alive connection; counts connections opened."""

    def __init__(self, port: int, content_type: str, accept: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers = {"Content-Type": content_type, "Accept": accept}
        self.connects = 0

    def _request(self, method: str, path: str, body: bytes | None,
                 headers: dict[str, str]) -> tuple[int, bytes]:
        if self.conn.sock is None:
            self.connects += 1
        self.conn.request(method, path, body=body, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.will_close:
            self.conn.close()
        return resp.status, data

    def invoke(self, body: bytes) -> bytes:
        status, data = self._request("POST", "/invocations", body, self.headers)
        if status != 200:
            raise RuntimeError(f"POST /invocations answered {status}: {data[:300]!r}")
        return data

    def ping(self) -> bytes:
        status, data = self._request("GET", "/ping", None, {})
        if status != 200:
            raise RuntimeError(f"GET /ping answered {status}: {data[:300]!r}")
        return data

    def close(self) -> None:
        self.conn.close()


@dataclass
class Result:
    """Latencies (seconds) per path for one model."""

    name: str
    paths: dict[str, list[float]] = field(default_factory=dict)
    connects: int = 0
    startup_s: float = 0.0

    def add(self, path: str, seconds: float) -> None:
        self.paths.setdefault(path, []).append(seconds)


def same_answer(model: str, inproc: bytes, served: bytes) -> None:
    """Both paths must have done the same thing (same JSON answer, or the same bytes)."""
    ok = inproc == served if model == "echo" else json.loads(inproc) == json.loads(served)
    if not ok:
        raise RuntimeError(f"{model}: in-process and server answers differ:\n"
                           f"  {inproc[:200]!r}\n  {served[:200]!r}")


def measure(name: str, folder: Path, bodies: Sequence[bytes], warmup: int, settings: Any,
            extra_paths: bool) -> Result:
    """Start the server for ``folder``, load it in-process too, time every body both ways."""
    import requests

    from serving.handler import load_handlers
    from serving.ports import free_port
    from serving.server import serve

    handlers = load_handlers(folder, settings.program)
    model = handlers.load_model(folder)
    result = Result(name)
    log: deque[str] = deque(maxlen=200)
    started = time.perf_counter()
    server = serve.start(settings, folder, port=free_port(), echo=log.append)
    result.startup_s = time.perf_counter() - started
    client = Client(int(server.url.rsplit(":", 1)[1]), JSONLINES, JSONLINES)
    session = requests.Session()
    session.trust_env = False
    try:
        def inproc(body: bytes) -> bytes:
            return handlers.invoke(model, body, JSONLINES, JSONLINES).body

        def with_requests(body: bytes) -> bytes:
            resp = session.post(server.url + "/invocations", data=body,
                                headers={"Content-Type": JSONLINES, "Accept": JSONLINES})
            resp.raise_for_status()
            return resp.content

        paths: list[tuple[str, Callable[[bytes], bytes]]] = [("inproc", inproc),
                                                              ("server", client.invoke)]
        if extra_paths:
            paths.append(("server_requests", with_requests))
            paths.append(("ping", lambda _body: client.ping()))
        for body in bodies[:warmup]:
            for _, fn in paths:
                fn(body)
        for i, body in enumerate(bodies[warmup:]):
            # Rotate which path goes first, so drift and caches favour neither.
            shift = i % len(paths)
            answers: dict[str, bytes] = {}
            for path, fn in paths[shift:] + paths[:shift]:
                start = time.perf_counter()
                answers[path] = fn(body)
                result.add(path, time.perf_counter() - start)
            same_answer(name, answers["inproc"], answers["server"])
        result.connects = client.connects
    except BaseException:
        say(f"{name}: server log tail:\n" + "\n".join(list(log)[-30:]))
        raise
    finally:
        session.close()
        client.close()
        server.stop()
        shutil.rmtree(server.run_dir, ignore_errors=True)
    return result


def report(result: Result) -> dict[str, dict[str, float]]:
    stats = {path: summary_ms(values) for path, values in result.paths.items()}
    base = stats["inproc"]
    say(f"{result.name}: {len(result.paths['inproc'])} records, server ready in "
        f"{result.startup_s:.1f} s, {result.connects} connection(s) opened")
    say(f"  {'path':<22} {'median ms':>10} {'p90 ms':>9} {'mean ms':>9} {'min ms':>8} "
        f"{'vs in-process':>14}")
    labels = {"inproc": "in-process invoke", "server": "server (http.client)",
              "server_requests": "server (requests)", "ping": "GET /ping (no worker)"}
    for path, s in stats.items():
        ratio = s["median"] / base["median"] if base["median"] else float("nan")
        say(f"  {labels.get(path, path):<22} {s['median']:>10.3f} {s['p90']:>9.3f} "
            f"{s['mean']:>9.3f} {s['min']:>8.3f} {ratio:>13.2f}x")
    overhead = stats["server"]["median"] - base["median"]
    stats["paired"] = summary_ms([s - i for s, i in zip(result.paths["server"],
                                                         result.paths["inproc"], strict=True)])
    verdict = "meets" if overhead <= GOAL_OVERHEAD_MS else "MISSES"
    say(f"  server overhead: {overhead:.3f} ms median per record "
        f"(p90 difference {stats['server']['p90'] - base['p90']:.3f} ms; median of per-record "
        f"differences {stats['paired']['median']:.3f} ms); goal <= {GOAL_OVERHEAD_MS:g} ms: "
        f"{verdict}")
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    parser = start_script(__doc__, worker_threads=True)
    parser.add_argument("--records", type=int, default=200, help="measured records per model")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured records first")
    parser.add_argument("--clips", type=int, default=8, help="distinct clips the records name")
    parser.add_argument("--workers", type=int, default=1,
                        help="model server workers (SAGEMAKER_MODEL_SERVER_WORKERS)")
    args = parser.parse_args(argv)

    from local_test.clips import upload_clips

    bench = Run("serving_overhead")
    with bench_stack(args.stack, {"SAGEMAKER_MODEL_SERVER_WORKERS": str(args.workers)}) as setup:
        stack, settings, s3 = setup.stack, setup.settings, setup.s3
        keys = upload_clips(s3, BUCKET, INPUT_PREFIX, args.clips)
        total = args.warmup + args.records
        bodies = [json.dumps({
            "bucket": BUCKET, "inputs": {"video": keys[i % len(keys)]},
            "output_path": f"{OUTPUT_PREFIX}bench/overhead/rec-{i:04d}.npy",
            "overwrite": True}).encode() for i in range(total)]
        say(f"embedded stack ({stack.mode}) on {stack.endpoint_url}; {args.clips} clips of "
            f"8x32x32x3 uploaded; {args.warmup} warm-up + {args.records} measured records "
            f"per model, {args.workers} server worker(s)")
        say("")
        features = measure("frame_features", MODELS / "frame_features", bodies, args.warmup,
                           settings, extra_paths=False)
        ff = report(features)
        say("")
        echo_dir = Path(tempfile.mkdtemp(prefix="smserve-bench-echo-"))
        try:
            (echo_dir / "serving.py").write_text(ECHO_SERVING)
            echo = measure("echo", echo_dir, bodies, args.warmup, settings, extra_paths=True)
        finally:
            shutil.rmtree(echo_dir, ignore_errors=True)
        ec = report(echo)
    say("")
    overhead = ff["server"]["median"] - ff["inproc"]["median"]
    echo_overhead = ec["server"]["median"] - ec["inproc"]["median"]
    goal_met = overhead <= GOAL_OVERHEAD_MS and echo_overhead <= GOAL_OVERHEAD_MS
    say(f"summary: frame_features overhead {overhead:.3f} ms (server/in-process "
        f"{ff['server']['median'] / ff['inproc']['median']:.2f}x), echo overhead "
        f"{echo_overhead:.3f} ms; goal <= {GOAL_OVERHEAD_MS:g} ms: "
        f"{'met' if goal_met else 'MISSED'} ({bench.seconds():.0f} s)")
    bench.finish({
        "records": args.records,
        "warmup": args.warmup,
        "workers": args.workers,
        "stack": args.stack,
        "inproc_median_ms": r3(ff["inproc"]["median"]),
        "inproc_p90_ms": r3(ff["inproc"]["p90"]),
        "server_median_ms": r3(ff["server"]["median"]),
        "server_p90_ms": r3(ff["server"]["p90"]),
        "overhead_median_ms": r3(overhead),
        "overhead_paired_median_ms": r3(ff["paired"]["median"]),
        "ratio_median": r3(ff["server"]["median"] / ff["inproc"]["median"]),
        "echo_inproc_median_ms": r3(ec["inproc"]["median"]),
        "echo_server_median_ms": r3(ec["server"]["median"]),
        "echo_server_p90_ms": r3(ec["server"]["p90"]),
        "echo_overhead_median_ms": r3(echo_overhead),
        "echo_overhead_paired_median_ms": r3(ec["paired"]["median"]),
        "echo_requests_overhead_median_ms": r3(ec["server_requests"]["median"]
                                               - ec["inproc"]["median"]),
        "ping_median_ms": r3(ec["ping"]["median"]),
        "server_startup_s": r3(features.startup_s),
        "connections": {"frame_features": features.connects, "echo": echo.connects},
        "goal_overhead_ms": GOAL_OVERHEAD_MS,
        "goal_met": goal_met,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
