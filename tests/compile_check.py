"""Shared check for the Triton ops under torch.compile (the kernels as opaque torch.ops.muse nodes)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch._dynamo.testing


def assert_one_graph_matching_eager(fn: Callable, run: Callable, op: str, tol: float) -> None:
    """``run(f)`` -> list of tensors (outputs and gradients) for f = fn and f = fn compiled with
    fullgraph=True on the "aot_eager" backend (AOTAutograd traces the ops' fakes, then runs the
    real kernels): one graph, containing ``op``, whose results match eager mode's to ``tol``."""
    eager = run(fn)
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = run(torch.compile(fn, backend=counter, fullgraph=True))
    assert counter.frame_count == 1
    targets = {str(n.target) for gm in counter.graphs for m in gm.modules() if isinstance(m, torch.fx.GraphModule)
               for n in m.graph.nodes}
    assert op in targets, sorted(targets)
    for a, c in zip(eager, compiled, strict=True):
        torch.testing.assert_close(c, a, rtol=tol, atol=tol)
