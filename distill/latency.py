"""Latency of a policy's model call, measured in its own pass (never inferred from rollout wall time).

    actdistill latency --policy runs/teacher_small
    actdistill latency --policy runs/student_50 --vs runs/teacher_small --device cuda --dtype bfloat16

Protocol: a synthetic observation batch of the checkpoint's shapes (random images, zero proprio, the
longest training instruction) is prepared once; the policy's ``model_call`` (what ``act`` runs when it
queries the model, without tokenisation and host-to-device copies) is called ``warmup`` times, then timed
``iters`` times. CPU: ``time.perf_counter``. CUDA: CUDA events around a CUDA-graph replay of the call
(captured after warm-up on a side stream). A routed student cannot be one graph (its route is read on the
host), so it runs as deployed at batch 1 (:class:`RoutedGraphCall`): one graph for embedding and router,
one host read of the route, then a graph of that route's layers and head, captured on the route's first
use and cached (``capture`` says ``cuda_graph_per_route``). Where torch and the GPU have CUDA graph
conditional nodes, the routed call is instead one graph with an IF node per layer on the route mask, so no
host read happens at all (:class:`ConditionalGraphCall`, ``capture`` says ``cuda_graph_conditional``);
``routed_capture`` picks between the two (default ``auto``: conditional where possible, else per route,
with ``capture_fallback`` saying why). If any capture
fails, every policy of the run is timed eagerly with events, ``capture`` says ``eager`` and
``capture_error`` says why. With ``vs`` both policies are timed
in one run with alternating calls and ``speedup`` = vs median / policy median; :func:`measure_latency_group`
times any number of policies in one interleaved round-robin pass (what a figure comparing them needs: the
speed of a shared machine drifts between passes minutes apart), in rounds whose medians show the spread.

The breakdown times ``embed`` and ``head`` alone with the same timer; ``layers_ms`` is the total median
minus both (it includes any routing).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch

from tasks.base import PRIVILEGED_OBJECTS
from tasks.errors import UserInputError


def synthetic_observations(
    policy, batch: int = 1, seed: int = 0, instruction: str | None = None
) -> list[dict]:
    """``batch`` observations with the shapes ``policy.model`` expects (random uint8 images, zero proprio).

    The instruction defaults to the longest instruction in the checkpoint's ``config.json`` (or, without
    one, twelve vocabulary words), so the token count is the worst case seen in training.
    """
    cfg = policy.model.config
    if instruction is None:
        instructions = _checkpoint_instructions(getattr(policy, "path", None))
        words = [w for w in cfg.vocab[2:] if w.isalnum()]
        instruction = max(instructions, key=len) if instructions else " ".join(words[:12])
    rng = np.random.default_rng(seed)
    shape = (cfg.image_size, cfg.image_size, 3)
    return [
        {
            **{cam: rng.integers(0, 256, shape, dtype=np.uint8) for cam in cfg.cameras},
            **({"objects": np.zeros((PRIVILEGED_OBJECTS, 4), np.float32)} if cfg.vision_encoder == "state" else {}),
            "proprio": np.zeros(cfg.proprio_dim, np.float32),
            "instruction": instruction,
        }
        for _ in range(batch)
    ]


def _checkpoint_instructions(path: str | None) -> list[str]:
    if path is None or not (Path(path) / "config.json").is_file():
        return []
    return list(json.loads((Path(path) / "config.json").read_text()).get("data", {}).get("instructions", []))


class _Timer:
    """Times a zero-argument callable in milliseconds on CPU (perf_counter) or CUDA (events)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3


def _cuda_graph(fn: Callable[[], object], warmup: int) -> Callable[[], object]:
    """Warm ``fn`` up on a side stream, capture it in a CUDA graph, return the replay function."""
    return _capture(fn, (), warmup)


def _capture(fn: Callable[..., object], args: tuple, warmup: int) -> Callable[..., object]:
    """CUDA graph of ``fn(*args)``; the returned replay ignores its arguments and returns the graph's static
    outputs (the tensors of the captured call, overwritten by each replay)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(max(1, warmup)):
            fn(*args)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*args)

    def replay(*_ignored):
        graph.replay()
        return out

    replay.graph = graph  # keeps the graph (and its memory pool) alive with the replay
    return replay


class RoutedGraphCall:
    """A routed student's model call in two parts, so that each can be a CUDA graph.

    ``front``: embedding and router -> (Embedded, (B, L) route mask). The route is then read on the host
    (one synchronisation), and ``back[route]`` runs exactly that route's layers and the head. Every row
    of the batch must take the same route (always true at batch 1, the latency protocol's default).
    With ``graphs=True`` (CUDA) each part is captured once, the back part per distinct route on its first
    use; with ``graphs=False`` the same split runs eagerly (used by the tests to check it against
    ``model_call``). Returns the normalised chunk (B, K, 7) and updates the policy's executed-layer counts.
    """

    def __init__(self, policy, batch: Mapping[str, torch.Tensor], warmup: int = 3, graphs: bool = True):
        self.policy, self.model, self.batch = policy, policy.model, batch
        self.warmup, self.graphs = warmup, graphs
        self.front = self._make(self._front, (batch,))
        self.back: dict[tuple[int, ...], Callable[..., torch.Tensor]] = {}

    def _make(self, fn: Callable[..., object], args: tuple) -> Callable[..., object]:
        return _capture(fn, args, self.warmup) if self.graphs else fn

    def _front(self, batch: Mapping[str, torch.Tensor]):
        emb = self.model.embed(batch)
        return emb, self.model.route(emb)

    def _back(self, route: tuple[int, ...], emb) -> torch.Tensor:
        hidden = emb.hidden
        for idx in route:
            hidden = self.model.run_layer(idx, hidden, emb)
        return self.model.head(hidden, emb)

    def __call__(self) -> torch.Tensor:
        emb, mask = self.front(self.batch)
        rows = mask.cpu()  # the one host read of the route
        if rows.shape[0] > 1 and not bool((rows == rows[0]).all()):
            raise ValueError("RoutedGraphCall needs one route for every row of the batch (use batch 1)")
        route = tuple(rows[0].nonzero().flatten().tolist())
        back = self.back.get(route)
        if back is None:
            back = self.back[route] = self._make(lambda e, r=route: self._back(r, e), (emb,))
        chunk = back(emb)
        self.policy._rows += rows.shape[0]
        self.policy._executed += len(route) * rows.shape[0]
        return chunk


class ConditionalGraphCall:
    """A routed student's whole model call as one CUDA graph, with no host read of the route.

    Embedding and router run in the graph; each decoder layer then sits in a CUDA graph conditional (IF)
    node whose predicate is that layer's entry of the route mask, so the GPU itself skips the layers the
    router turned off, and a skipped layer is the identity (the hidden state is updated in place only
    inside the node). The head follows. This needs CUDA graph conditional nodes (CUDA 12.4+) and a torch
    that exposes them (``CUDAGraph.begin_capture_to_if_node``); without them the constructor raises
    RuntimeError. Batch 1 only (one predicate per layer).

    Executed layers are counted on the device inside the graph (one small add per call) and handed to the
    policy's counts by :meth:`flush`, so the timed call holds no synchronisation. With ``graphs=False`` the
    same body runs eagerly with host-side ``if`` in place of the IF nodes (used by the tests).
    """

    def __init__(self, policy, batch: Mapping[str, torch.Tensor], warmup: int = 3, graphs: bool = True):
        self.policy, self.model, self.batch = policy, policy.model, batch
        rows = next(v for v in batch.values() if isinstance(v, torch.Tensor)).shape[0]
        if rows != 1:
            raise ValueError(f"ConditionalGraphCall needs batch 1 (one route per call), got {rows} rows")
        self.calls = 0
        self.executed = None
        if not graphs:
            self.executed = torch.zeros((), dtype=torch.long)
            self._call = lambda: self._body(capturing=False)
            return
        if not hasattr(torch.cuda.CUDAGraph, "begin_capture_to_if_node"):
            raise RuntimeError(f"torch {torch.__version__} has no CUDA graph conditional nodes")
        with torch.inference_mode():
            device = next(self.model.parameters()).device
            self.executed = torch.zeros((), dtype=torch.long, device=device)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(max(1, warmup)):  # every layer's kernels once, outside capture
                    self._body(capturing=False, every_layer=True)
            torch.cuda.current_stream().wait_stream(stream)
            self.executed.zero_()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self._body(capturing=True)
        self.graph = graph

        def replay():
            graph.replay()
            return out

        self._call = replay

    def _body(self, capturing: bool, every_layer: bool = False) -> torch.Tensor:
        model = self.model
        emb = model.embed(self.batch)
        mask = model.route(emb)  # (1, L) bool
        self.executed += mask.sum()
        hidden = emb.hidden.clone()  # updated in place: a skipped layer leaves it as it is
        graph = torch.cuda.CUDAGraph.get_currently_capturing_graph() if capturing else None
        for idx in range(model.num_layers):
            if capturing:
                graph.begin_capture_to_if_node(mask[0, idx])
                try:
                    hidden.copy_(model.run_layer(idx, hidden, emb))
                finally:
                    graph.end_capture_to_conditional_node()
            elif every_layer or bool(mask[0, idx]):
                hidden.copy_(model.run_layer(idx, hidden, emb))
        return model.head(hidden, emb)

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        return self._call()

    def flush(self) -> None:
        """Add the calls since the last flush to the policy's executed-layer counts (one host read)."""
        executed = int(self.executed)
        self.executed.zero_()
        self.policy._rows += self.calls
        self.policy._executed += executed
        self.calls = 0


ROUTED_CAPTURES = ("auto", "conditional", "per_route")


class _Target:
    """One policy's callables (whole model call, embed, head) on a fixed synthetic batch."""

    def __init__(self, policy, batch: Mapping[str, torch.Tensor]):
        self.policy = policy
        model = policy.model
        with torch.inference_mode():
            emb = model.embed(batch)
        self.tokens = int(emb.hidden.shape[1])
        self.batch = batch
        self.calls = {
            "total": lambda: policy.model_call(batch),
            "embed": lambda: model.embed(batch),
            "head": lambda: model.head(emb.hidden, emb),
        }


BUSY_CORES = 0.25  # other_cpu_load above this: the machine was busy while timing, and the figure is noisy


class OtherCpuLoad:
    """Cores that *other* processes kept busy while timing: the machine's busy CPU time over the window
    (``/proc/stat``) minus this process's own (``getrusage``), per second of wall time.

    ``stop()`` returns it rounded to 0.01, or ``None`` where ``/proc/stat`` is unreadable (not Linux). On a
    quiet machine it is near 0; two rollout workers beside the timing make it about 2.
    """

    def __init__(self):
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float] | None:
        import os
        import resource

        try:
            with open("/proc/stat") as f:
                fields = [float(x) for x in f.readline().split()[1:]]
            tick = float(os.sysconf("SC_CLK_TCK"))
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return (sum(fields) - idle) / tick, usage.ru_utime + usage.ru_stime, time.perf_counter()

    def stop(self) -> float | None:
        end = self._read()
        if self._start is None or end is None or end[2] <= self._start[2]:
            return None
        busy, own, wall = (b - a for a, b in zip(self._start, end))
        return round(max(0.0, (busy - own) / wall), 2)


def busy_warning(result: Mapping) -> str | None:
    """A sentence saying the figure is noisy when ``result["other_cpu_load"]`` exceeds :data:`BUSY_CORES`."""
    load = result.get("other_cpu_load")
    if load is None or load <= BUSY_CORES:
        return None
    return f"other processes kept {load:.2f} cores busy while timing, so the figure is noisy"


def measure_latency(
    policy,
    *,
    batch: int = 1,
    iters: int = 50,
    warmup: int = 10,
    vs=None,
    use_cuda_graph: bool = True,
    routed_capture: str = "auto",
    instruction: str | None = None,
    rounds: int = 5,
) -> dict:
    """Time ``policy.model_call`` (and ``vs``'s, interleaved) as described in the module docstring.

    Returns a JSON-able dict: median_ms, p90_ms, mean_ms, breakdown {embed_ms, layers_ms, head_ms},
    device, dtype, attention, torch_threads, batch, iters, warmup, timer, capture, tokens, num_layers,
    checkpoint_hash, round_medians_ms, mean_executed_fraction (when the policy has it), ``other_cpu_load``
    (see :class:`OtherCpuLoad`), ``pass`` (see :func:`measure_latency_group`) and, with ``vs``, ``vs`` (the
    same fields for it), ``speedup`` and ``speedup_rounds`` ([lowest, highest] over the rounds).
    """
    options = {"batch": batch, "iters": iters, "warmup": warmup, "use_cuda_graph": use_cuda_graph,
               "routed_capture": routed_capture, "instruction": instruction, "rounds": rounds}
    if vs is None:
        return measure_latency_group([policy], reference=None, **options)[0]
    out, ref = measure_latency_group([policy, vs], reference=1, **options)
    for key in ("speedup", "speedup_rounds", "other_cpu_load", "capture_error", "pass"):
        ref.pop(key, None)
    out["vs"] = ref
    return out


def measure_latency_group(
    policies: list,
    *,
    reference: int | None = 0,
    names: list[str] | None = None,
    batch: int = 1,
    iters: int = 50,
    warmup: int = 10,
    use_cuda_graph: bool = True,
    routed_capture: str = "auto",
    instruction: str | None = None,
    rounds: int = 5,
) -> list[dict]:
    """Time every policy's model call in one interleaved round-robin pass, so that their figures compare like
    with like (a machine whose speed drifts between two separate passes moves every policy alike here).

    The ``iters`` timed calls per policy are split into ``rounds`` rounds; within a round the policies are
    called in turn, the starting policy rotating call by call, so no policy always follows the same one.
    Each result (one per policy, in order) holds :func:`measure_latency`'s fields, ``round_medians_ms`` (the
    median of each round: the spread a reader should see), ``pass`` (``id``, shared by every policy of this
    pass, ``policies``, their ``names``, ``reference``, ``rounds``) and, with ``reference`` (an index into
    ``policies``; None for none), ``speedup`` = reference median / this median and ``speedup_rounds`` (its
    lowest and highest value over the rounds), and every result the pass's ``other_cpu_load``.
    """
    import uuid

    if routed_capture not in ROUTED_CAPTURES:
        raise UserInputError(f"routed_capture must be one of {', '.join(ROUTED_CAPTURES)}, got {routed_capture!r}")
    if iters < 1 or warmup < 0 or batch < 1 or rounds < 1:
        raise UserInputError(
            f"need iters >= 1, warmup >= 0, batch >= 1, rounds >= 1; got iters={iters}, warmup={warmup}, "
            f"batch={batch}, rounds={rounds}"
        )
    if not policies:
        raise UserInputError("no policies to time")
    if reference is not None and not 0 <= reference < len(policies):
        raise UserInputError(f"reference must index one of the {len(policies)} policies, got {reference}")
    if names is None:
        names = [str(getattr(p, "path", None) or f"policy{i}") for i, p in enumerate(policies)]
    if len(names) != len(policies):
        raise UserInputError(f"{len(names)} names for {len(policies)} policies")
    rounds = min(rounds, iters)
    devices = {next(p.model.parameters()).device for p in policies}
    if len(devices) != 1:
        raise UserInputError(f"policies of one pass must share a device, got {sorted(map(str, devices))}")
    device = devices.pop()
    obs = synthetic_observations(policies[0], batch, instruction=instruction)
    targets = [_Target(p, p.model.prepare(obs)) for p in policies]
    timer = _Timer(device)
    capture, capture_error = "eager", None
    with torch.inference_mode():
        if device.type == "cuda" and use_cuda_graph:
            try:
                graphs, kinds = [], []
                for t in targets:
                    routed = hasattr(t.policy.model, "route")
                    total, kind = (_routed_graph(t, warmup, routed_capture) if routed
                                   else (_cuda_graph(t.calls["total"], warmup), "cuda_graph"))
                    calls = {k: total if k == "total" else _cuda_graph(fn, warmup) for k, fn in t.calls.items()}
                    calls["total"]()  # a per-route call captures its route's graph on first use
                    graphs.append(calls)
                    kinds.append(kind)
            except (RuntimeError, ValueError) as exc:  # not capturable, or rows that take different routes
                torch.cuda.synchronize()
                capture_error = f"{type(exc).__name__}: {exc}"[:300]
            else:
                for target, graph, kind in zip(targets, graphs, kinds):
                    target.calls, target.capture = graph, kind
        for target in targets:
            for _ in range(warmup):
                for fn in target.calls.values():
                    fn()
        times = [{k: [] for k in t.calls} for t in targets]
        bounds = np.linspace(0, iters, rounds + 1).round().astype(int)  # round r: calls bounds[r]..bounds[r+1]-1
        n = len(targets)
        probe = OtherCpuLoad()
        for r in range(rounds):
            for part in ("total", "embed", "head"):
                for i in range(bounds[r], bounds[r + 1]):
                    for j in range(n):  # round robin, the first policy rotating call by call
                        k = (i + j) % n
                        times[k][part].append(timer(targets[k].calls[part]))
    other_load = probe.stop()
    for target in targets:
        if isinstance(target.calls["total"], ConditionalGraphCall):
            target.calls["total"].flush()
    results = [_summarise(t, rec, device, batch, iters, warmup, capture) for t, rec in zip(targets, times)]
    info = {"id": uuid.uuid4().hex[:12], "names": list(names), "policies": [r.get("policy") for r in results],
            "reference": None if reference is None else names[reference], "rounds": rounds}
    for result, record in zip(results, times):
        total = record["total"]
        result["round_medians_ms"] = [float(np.median(total[a:b])) for a, b in pairwise(bounds)]
        result["other_cpu_load"] = other_load
        result["pass"] = info
        if capture_error is not None:
            result["capture_error"] = capture_error  # why the CUDA graphs were not used
    if reference is not None:
        ref = results[reference]
        for result in results:
            result["speedup"] = ref["median_ms"] / result["median_ms"]
            ratios = [a / b for a, b in zip(ref["round_medians_ms"], result["round_medians_ms"])]
            result["speedup_rounds"] = [min(ratios), max(ratios)]
    return results


def _routed_graph(target: _Target, warmup: int, how: str) -> tuple[Callable[[], object], str]:
    """A routed student's captured call and its ``capture`` name: one graph with conditional nodes where
    this torch and GPU allow it (``auto``, ``conditional``), else per-route graphs (``auto``, ``per_route``).
    ``conditional`` raises where it cannot be built, so the run falls back to eager timing and says so;
    ``auto`` records why in ``target.capture_fallback``."""
    if how in ("auto", "conditional"):
        try:
            return ConditionalGraphCall(target.policy, target.batch, warmup), "cuda_graph_conditional"
        except (RuntimeError, ValueError) as exc:
            if how == "conditional":
                raise
            torch.cuda.synchronize()
            target.capture_fallback = f"{type(exc).__name__}: {exc}"[:300]
    return RoutedGraphCall(target.policy, target.batch, warmup), "cuda_graph_per_route"


def _summarise(
    target: _Target,
    record: dict[str, list[float]],
    device: torch.device,
    batch: int,
    iters: int,
    warmup: int,
    capture: str,
) -> dict:
    policy, model = target.policy, target.policy.model
    total = np.asarray(record["total"])
    embed_ms = float(np.median(record["embed"]))
    head_ms = float(np.median(record["head"]))
    median = float(np.median(total))
    out = {
        "median_ms": median,
        "p90_ms": float(np.percentile(total, 90)),
        "mean_ms": float(total.mean()),
        "breakdown": {
            "embed_ms": embed_ms,
            "layers_ms": max(0.0, median - embed_ms - head_ms),
            "head_ms": head_ms,
        },
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "attention": getattr(model, "attn_implementation", "unknown"),
        "torch_threads": torch.get_num_threads(),
        "batch": batch,
        "iters": iters,
        "warmup": warmup,
        "timer": "cuda_events" if device.type == "cuda" else "perf_counter",
        "capture": getattr(target, "capture", capture),
        **({"capture_fallback": target.capture_fallback} if hasattr(target, "capture_fallback") else {}),
        "tokens": target.tokens,
        "num_layers": model.num_layers,
        "checkpoint_hash": getattr(policy, "checkpoint_hash", ""),
        "policy": getattr(policy, "spec", None) or getattr(policy, "path", None),  # a baseline: its spec
    }
    if hasattr(policy, "mean_executed_fraction"):
        out["mean_executed_fraction"] = float(policy.mean_executed_fraction)
    return out
