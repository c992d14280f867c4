"""The served model: an MLflow pyfunc around the exported ONNX session, and a scoring server that protects itself.

:class:`StrokelensModel` is the registered model's ``python_model`` (logged from code, see
:mod:`tracking.serving_model`): its artifacts are the ONNX file and its preprocessing JSON, plus
optionally one relevance ONNX model per LRP method (artifact ``relevance-<method>``,
:mod:`explain.onnx_export`), and it builds its predictor with the factory named by a dotted path in
the MLflow model config (:data:`PREDICTOR_KEY`, e.g. ``benchmark.serving:load_predictor``; called with
``relevance={method: path}`` when the model ships relevance models), so this layer never imports the
benchmark. The predictor answers ``predict(inputs) -> dict`` and lists the exceptions that mean a
bad request in ``client_errors``.

:func:`serve` runs MLflow's own scoring app (:func:`mlflow.pyfunc.scoring_server.init`) under uvicorn
in this process (no ``uvicorn`` on the PATH needed), wrapped in :class:`RequestGuard`, an ASGI
middleware for ``/invocations`` that

* refuses a body larger than ``max_bytes`` with 413 — by its Content-Length before anything is read,
  or while a chunked body streams in (what it read is dropped at once) — MLflow's scoring server has
  no limit of its own;
* replaces every error body with one short JSON line ``{"error_code", "message"}`` (≤ 300
  characters): MLflow's own errors repeat the request (a bad JSON body is echoed whole, a failed
  prediction prints the parsed input);
* lets at most ``concurrency`` requests be read and computed at once (the others wait in line), so
  memory is bounded by ``concurrency × max_bytes`` and onnxruntime's threads are not oversubscribed;
* hands freed heap back to the system after a large request with glibc's ``malloc_trim(0)``: the
  parsed JSON is millions of small Python objects whose memory glibc keeps in its arenas
  (per thread) after they are freed, so the resident size would otherwise stay at the request's peak.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import ctypes.util
import importlib
import json
import logging
import os
from pathlib import Path

import mlflow.pyfunc

from tracking.errors import TrackingError
from tracking.runs import tracking_uri
from tracking.stores import check_reachable

logger = logging.getLogger(__name__)

PREDICTOR_KEY = "predictor"
"""The model-config key holding the predictor factory's dotted path (``module:function``)."""
ARTIFACT_ONNX, ARTIFACT_SIDECAR = "onnx", "sidecar"
ARTIFACT_RELEVANCE = "relevance-"
"""Prefix of the artifacts holding relevance ONNX models: ``relevance-<method>``."""
DEFAULT_MAX_MB = 64
"""Default request-size limit in MiB: a 192×192×19 case in the compact encoding is about 20 MiB, the
same case as JSON numbers about 75 MiB (send it compact); a JSON request costs ~5× its size in memory."""
DEFAULT_CONCURRENCY = 2
DEFAULT_TIMEOUT_S = 120
"""Seconds before an unanswered request gets 504 (MLflow's default, 60 s, is near a large JSON request's time on a
loaded 2-core machine)."""
TRIM_ABOVE = 1 << 20
"""Requests larger than this (bytes) are followed by ``malloc_trim(0)`` (``STROKELENS_MALLOC_TRIM=0`` turns it off,
for measuring what it does: ``python -m benchmark.perf serve``)."""
_MESSAGE_CHARS = 300

_REPLY: contextvars.ContextVar[dict | None] = contextvars.ContextVar("strokelens_reply", default=None)
"""Set per request by :class:`RequestGuard`; the model writes its error's status and message into it
(a mutable dict: ``asyncio.to_thread`` runs the prediction in a copy of the request's context)."""


class RequestRefusedError(ValueError):
    """A bad request (the predictor's ``client_errors``); HTTP 400."""


class ServedModelError(RuntimeError):
    """The model failed on a request for a reason of the server's; HTTP 500, the traceback is logged."""


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MESSAGE_CHARS else text[:_MESSAGE_CHARS - 1] + "…"


def load_factory(path: str):
    """The callable named by ``module:function``."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


class StrokelensModel(mlflow.pyfunc.PythonModel):
    """The pyfunc: ``inputs`` of one case → lesion probability, mask and volume (see :mod:`benchmark.serving`)."""

    # the predictor checks every request itself; MLflow's type-hint validation would only warn that there is none
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        """Build the predictor from the ONNX artifact, its JSON and the factory in the model config."""
        config = context.model_config or {}
        factory = load_factory(config[PREDICTOR_KEY])
        relevance = relevance_artifacts(context.artifacts)
        options = {"relevance": relevance} if relevance else {}
        self.predictor = factory(context.artifacts[ARTIFACT_ONNX], context.artifacts[ARTIFACT_SIDECAR], **options)
        self.client_errors = tuple(getattr(self.predictor, "client_errors", ()))

    def predict(self, context, model_input, params=None):
        """The predictor's answer; a bad request raises :class:`RequestRefusedError` with a short message."""
        reply = _REPLY.get()
        try:
            return self.predictor.predict(model_input)
        except self.client_errors as exc:
            message = _one_line(str(exc))
            if reply is not None:
                reply.update(status=400, message=message)
            raise RequestRefusedError(message) from None
        except Exception as exc:
            logger.exception("the model failed on a request")
            message = f"the model failed on this request ({type(exc).__name__}): see the server's log"
            if reply is not None:
                reply.update(status=500, message=message)
            raise ServedModelError(message) from None


def relevance_artifacts(artifacts: dict) -> dict[str, str]:
    """LRP method → relevance ONNX path, from a pyfunc's artifacts (``relevance-<method>``)."""
    return {k[len(ARTIFACT_RELEVANCE):]: v for k, v in sorted(artifacts.items()) if k.startswith(ARTIFACT_RELEVANCE)}


SERVING_PACKAGES = ("mlflow", "onnxruntime", "onnxruntime-gpu", "onnx", "numpy", "nibabel", "pybase64", "torch",
                    "uvicorn")
"""What the served model imports, pinned at the installed versions in its ``requirements.txt``."""


def pinned_requirements() -> list[str]:
    """``package==version`` of :data:`SERVING_PACKAGES` as installed (a local label such as ``+cpu`` dropped).

    Giving them spares MLflow's requirement inference, which loads the model in a subprocess.
    """
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in SERVING_PACKAGES:
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return pins


def _model_arguments(onnx_path: Path, sidecar: Path, predictor: str, pip_requirements: list[str] | None,
                     relevance: dict[str, Path] | None = None) -> dict:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per copied artifact is noise
    if pip_requirements is None:
        pip_requirements = pinned_requirements()
    artifacts = {ARTIFACT_ONNX: str(onnx_path), ARTIFACT_SIDECAR: str(sidecar)}
    artifacts |= {f"{ARTIFACT_RELEVANCE}{method}": str(path) for method, path in sorted((relevance or {}).items())}
    return {"python_model": str(Path(__file__).with_name("serving_model.py")), "artifacts": artifacts,
            "model_config": {PREDICTOR_KEY: predictor}, "pip_requirements": pip_requirements}


def log_pyfunc_model(name: str, onnx_path: Path, sidecar: Path, predictor: str,
                     pip_requirements: list[str] | None = None, relevance: dict[str, Path] | None = None):
    """Log :class:`StrokelensModel` from code with the ONNX file and its JSON as artifacts; returns MLflow's info.

    ``relevance`` (LRP method → relevance ONNX file) ships those models inside it, for requests asking for relevance.
    """
    return mlflow.pyfunc.log_model(name=name, **_model_arguments(onnx_path, sidecar, predictor, pip_requirements,
                                                                 relevance))


def save_pyfunc_model(path: Path, onnx_path: Path, sidecar: Path, predictor: str,
                      pip_requirements: list[str] | None = None, relevance: dict[str, Path] | None = None) -> Path:
    """The same MLflow model written to a local folder (no tracking store): ``path`` serves as a model URI."""
    mlflow.pyfunc.save_model(str(path), **_model_arguments(onnx_path, sidecar, predictor, pip_requirements,
                                                           relevance))
    return Path(path)


def malloc_trim() -> bool:
    """Return freed heap to the system (glibc's ``malloc_trim(0)``); False where there is no glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False


def _json(status: int, code: str, message: str) -> tuple[dict, bytes]:
    body = json.dumps({"error_code": code, "message": _one_line(message)}).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
    return start, body


_CODES = {400: "BAD_REQUEST", 404: "NOT_FOUND", 413: "REQUEST_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE",
          500: "INTERNAL_ERROR", 503: "UNAVAILABLE", 504: "TIMEOUT"}


def _summary(status: int, body: bytes) -> str:
    """A short message for an error MLflow answered itself (its message's first line, never the payload)."""
    try:
        message = str(json.loads(body).get("message", ""))
    except (ValueError, AttributeError):
        message = body.decode("utf-8", "replace")
    first = message.strip().splitlines()[0] if message.strip() else ""
    if first.startswith("Failed to predict data"):  # MLflow prints the parsed input after these words
        first = "the model could not read the request"
    if "JSON" in first or "json" in first:
        first = ("the body is not a JSON object {\"inputs\": {...}} (see the README's serving section)"
                 if status == 400 else first)
    return first[:200] or f"HTTP {status}"


class RequestGuard:
    """ASGI middleware for MLflow's scoring app (see the module docstring).

    Args:
        app: the scoring app.
        max_bytes: the largest request body accepted.
        concurrency: requests read and computed at once.
    """

    def __init__(self, app, max_bytes: int = DEFAULT_MAX_MB << 20, concurrency: int = DEFAULT_CONCURRENCY):
        self.app, self.max_bytes = app, int(max_bytes)
        self.concurrency = max(1, int(concurrency))
        self._slots: asyncio.Semaphore | None = None

    def _too_large(self, size: str) -> tuple[dict, bytes]:
        return _json(413, _CODES[413], f"request body of {size} exceeds the limit of {self.max_bytes} bytes "
                     f"({self.max_bytes / 2**20:.0f} MiB): send the case's NIfTI files base64-encoded (the compact "
                     "encoding) or start the server with a larger --max-request-mb")

    async def __call__(self, scope, receive, send):
        """Guard ``POST /invocations``; pass everything else through."""
        if scope["type"] != "http" or scope.get("path") != "/invocations":
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope.get("headers", []) if k.lower() == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._drain(receive, int(length))
            await self._send(send, *self._too_large(f"{int(length)} bytes"))
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        async with self._slots:
            await self._guarded(scope, receive, send)

    async def _drain(self, receive, expected: int) -> None:
        """Read and drop a refused body (up to 4× the limit) so the client reads the 413 instead of a reset."""
        seen = 0
        while seen < min(expected, 4 * self.max_bytes):
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body"):
                return

    @staticmethod
    async def _send(send, start: dict, body: bytes) -> None:
        await send(start)
        await send({"type": "http.response.body", "body": body})

    async def _guarded(self, scope, receive, send) -> None:
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                chunks.clear()
                if message.get("more_body"):
                    await self._drain(receive, 4 * self.max_bytes)
                await self._send(send, *self._too_large(f"more than {self.max_bytes} bytes (streamed)"))
                return
            chunks.append(body)
            if not message.get("more_body"):
                break

        async def replay():
            if chunks:
                return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}
            return await receive()

        held: dict = {}
        reply: dict = {}

        async def guarded_send(message):
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held["status"], held["body"] = message["status"], b""
                return
            if "status" in held and message["type"] == "http.response.body":
                held["body"] += message.get("body", b"")
                if not message.get("more_body"):
                    status, text = held["status"], reply.get("message") or _summary(held["status"], held["body"])
                    status = reply.get("status", status)
                    await self._send(send, *_json(status, _CODES.get(status, f"HTTP_{status}"), text))
                return
            await send(message)

        token = _REPLY.set(reply)
        try:
            await self.app(scope, replay, guarded_send)
        finally:
            _REPLY.reset(token)
            chunks.clear()
            if total > TRIM_ABOVE and os.environ.get("STROKELENS_MALLOC_TRIM", "1") != "0":
                malloc_trim()


def scoring_app(model_uri: str, max_bytes: int = DEFAULT_MAX_MB << 20, concurrency: int = DEFAULT_CONCURRENCY):
    """MLflow's scoring app for ``model_uri`` (loaded now) wrapped in :class:`RequestGuard`."""
    from mlflow.pyfunc import scoring_server

    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except Exception as exc:
        raise TrackingError(f"model '{model_uri}' cannot be served ({type(exc).__name__}: "
                            f"{_one_line(str(exc))[:160]}): export a model first (python -m mlproject.export) or "
                            "give another --model") from exc
    return RequestGuard(scoring_server.init(model), max_bytes, concurrency)


def serve(model_uri: str, host: str = "127.0.0.1", port: int = 5000, max_bytes: int = DEFAULT_MAX_MB << 20,
          concurrency: int = DEFAULT_CONCURRENCY, timeout_s: int = DEFAULT_TIMEOUT_S, on_ready=None) -> None:
    """Load ``model_uri`` and serve it with uvicorn until SIGINT/SIGTERM (see the module docstring).

    Args:
        model_uri: ``models:/…``, ``runs:/…`` or a local MLflow model folder.
        host: where to listen (loopback by default: the server has no authentication).
        port: the port.
        max_bytes: the largest request body accepted (413 above it).
        concurrency: requests read and computed at once.
        timeout_s: a request still unanswered after this many seconds gets 504 (MLflow's
            ``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT``).
        on_ready: called with the invocation URL once the model is loaded, before listening.

    Raises:
        TrackingError: the model URI does not resolve or is not a strokelens pyfunc model.
    """
    import uvicorn

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ["MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"] = str(int(timeout_s))  # read by scoring_server.init
    uri = tracking_uri()
    if model_uri.startswith(("models:/", "runs:/")):
        database = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if database and not Path(database).is_file():  # serving reads a store and never creates one
            raise TrackingError(f"there is no MLflow store at '{database}' to find '{model_uri}' in: run from the "
                                "project folder, set MLFLOW_TRACKING_URI, or give a local MLflow model folder")
        check_reachable(uri)
        mlflow.set_tracking_uri(uri)
    elif not Path(model_uri).is_dir():
        raise TrackingError(f"model '{model_uri}' is neither models:/…, runs:/… nor an MLflow model folder: "
                            "give one of those")
    app = scoring_app(model_uri, max_bytes, concurrency)
    if on_ready is not None:
        on_ready(f"http://{host}:{port}/invocations")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
