"""Sampling with recurrent state (semiseparable) or a KV cache (attention): ``muse generate``.

A prompt is fed in one parallel pass (``MuseLM.prefill``); new tokens come one ``step`` at a
time. On CUDA a step of a small model is a few hundred short kernels, so the host, not the GPU,
sets the pace: :class:`Decoder` captures the step once as a CUDA graph and replays it per token.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable

import torch
from torch import Tensor

from muse.runtime import side_stream_call

__all__ = ["Decoder", "check_request", "check_sampling", "generate", "sample_next"]


def check_sampling(max_new_tokens: int, temperature: float, top_k: int, top_p: float) -> None:
    """Raise ValueError, naming the ``muse generate`` option, for a value outside its range."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be an integer >= 1; got {max_new_tokens!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"--temperature must be a finite number >= 0 (0: greedy); got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"--top-k must be an integer >= 0 (0: no limit); got {top_k!r}")
    if not (isinstance(top_p, (int, float)) and 0 <= top_p <= 1):
        raise ValueError(f"--top-p must lie in [0, 1] (1: no limit; 0: the top token only); got {top_p!r}")


def sample_next(
    logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None
) -> Tensor:
    """logits (B, V) → next ids (B,). temperature 0 is greedy argmax."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token once the mass before it already reaches top_p; the top token always stays
        # (for top_p = 0 the mass before it, 0, reaches top_p too)
        drop = probs.cumsum(-1) - probs >= top_p
        drop[..., 0] = False
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _leaves(layers: list) -> list[Tensor]:
    """The tensors of per-layer mixer states (dicts of tensors, ``muse.mixers.base``), in order."""
    return [t for s in layers for t in s.values()]


_warned_capture = False
_SIDE: dict[torch.device, torch.cuda.Stream] = {}


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    """One warm-up stream per GPU for every Decoder: torch keeps a cuBLAS workspace (tens of MiB)
    for each stream a matmul ever ran on, for the life of the process, so a fresh stream per
    Decoder would hold one more workspace for every generation."""
    if device not in _SIDE:
        _SIDE[device] = torch.cuda.Stream(device=device)
    return _SIDE[device]


class Decoder:
    """``model.step`` for token-by-token decoding, captured as a CUDA graph where it can be.

    ``decoder(idx_t (B,), state) -> (logits (B, V), state)`` returns what ``model.step`` returns.
    With ``cuda_graph`` on (the default on CUDA), the first ``warmup`` calls run eagerly on a side
    stream (they compile and tune the Triton kernels, which a capture cannot do), the next one
    captures ``model.decode_step`` over fixed buffers: the token, the position (a device tensor)
    and the state's tensors, which the decoder adopts as they are, so the given state is updated
    in place; then each call copies the token in, sets the position and replays the graph. A
    state that is not the one the decoder returned last (a new prompt) is copied into the buffers
    when its shapes match, else the decoder starts over with it. Where the capture fails, one
    notice says why and decoding goes on eagerly. The captured path does not range-check token
    ids on the host (a sync per token): they come from sampling over the model's vocabulary.
    """

    def __init__(self, model, cuda_graph: bool | None = None, warmup: int = 1):
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (eager steps before the capture); got {warmup}")
        self.model, self.cuda_graph, self.warmup = model, cuda_graph, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed = False
        self._calls = 0
        self._idx: Tensor | None = None  # (B,) token buffer
        self._pos: Tensor | None = None  # 0-d int64 position buffer
        self._layers: list | None = None  # the adopted state tensors
        self._logits: Tensor | None = None  # the graph's output buffer
        self._side: torch.cuda.Stream | None = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def _use_graph(self, idx_t: Tensor) -> bool:
        if self.failed:
            return False
        if self.cuda_graph is None:
            return idx_t.is_cuda
        if self.cuda_graph and not idx_t.is_cuda:
            raise ValueError("a CUDA-graph decoder needs the model and tokens on a CUDA device")
        return self.cuda_graph

    def __call__(self, idx_t: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        if not self._use_graph(idx_t):
            return self.model.step(idx_t, state)
        pos = state["pos"]
        limit = self.model.max_context
        if limit is not None and pos >= limit:
            raise ValueError(f"position {pos} is past model.max_seq_len={limit}")
        with torch.cuda.device(idx_t.device):  # streams and the capture on the model's GPU
            self._adopt(idx_t, state)
            self._idx.copy_(idx_t)
            self._pos.fill_(pos)
            self._calls += 1
            if self.graph is None and self._calls <= self.warmup:
                logits = self._eager()
            else:
                if self.graph is None:
                    self._capture()
                    if self.graph is None:  # the capture failed: this step, and all after, eagerly
                        return self.model.step(idx_t, {"pos": pos, "layers": self._layers})
                self.graph.replay()
                logits = self._logits.clone()  # the buffer is overwritten by the next replay
        return logits, {"pos": pos + 1, "layers": self._layers}

    def _adopt(self, idx_t: Tensor, state: dict[str, Any]) -> None:
        layers = state["layers"]
        if layers is self._layers and idx_t.shape == self._idx.shape:
            return
        new, old = _leaves(layers), _leaves(self._layers) if self._layers is not None else []
        same = (
            self._idx is not None and idx_t.shape == self._idx.shape and len(new) == len(old)
            and all(a.shape == b.shape and a.dtype == b.dtype and a.device == b.device for a, b in zip(new, old))
        )
        if same:  # the graph reads these buffers: copy the new state into them
            for dst, src in zip(old, new):
                dst.copy_(src)
            return
        self.graph, self._calls = None, 0
        self._idx = idx_t.clone()
        self._pos = torch.zeros((), dtype=torch.int64, device=idx_t.device)
        # contiguous: a prefill's conv state is a view into a larger tensor (copied once here)
        self._layers = [{k: t.contiguous() for k, t in s.items()} for s in layers]

    def _run(self) -> Tensor:
        """One step on the buffers; the new state is written back into them (for the capture)."""
        logits, layers = self.model.decode_step(self._idx, self._layers, self._pos)
        for dst, src in zip(_leaves(self._layers), _leaves(layers)):
            if src is not dst:
                dst.copy_(src)
        return logits

    def _eager(self) -> Tensor:
        if self._side is None:
            self._side = _side_stream(torch.cuda.current_stream().device)
        return side_stream_call(self._run, self._side)

    def _capture(self) -> None:
        global _warned_capture
        torch.cuda.synchronize(self._idx.device)
        main = torch.cuda.current_stream()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._logits = self._run()
        except Exception as e:  # noqa: BLE001 - whatever the capture refuses, decoding goes on eagerly
            # an invalidated capture raises again on ending it, before torch.cuda.graph restores
            # the stream it captured on
            torch.cuda.set_stream(main)
            self.failed = True
            if not _warned_capture:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                warnings.warn(f"muse: decoding without a CUDA graph: the step cannot be captured "
                              f"({type(e).__name__}: {first})", stacklevel=3)
                _warned_capture = True
            return
        self.graph = graph


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_request(model, prompt: Tensor, max_new_tokens: int) -> None:
    """Raise ValueError for what :func:`generate` cannot do with ``model`` and ``prompt``, before
    any work: `muse generate` asks first, so a refused request prints nothing but its error."""
    if prompt.dim() != 2 or prompt.size(0) != 1 or prompt.size(1) == 0:
        raise ValueError(f"prompt must be a (1, T ≥ 1) tensor of token ids; got shape {tuple(prompt.shape)}")
    if not callable(getattr(model, "prefill", None)):  # muse.hf.HFCausalLM: no incremental decoding
        kind = getattr(getattr(model, "cfg", None), "kind", type(model).__name__)
        raise ValueError(f"muse generate decodes MUSE models only (prefill and step); this model is {kind}")
    if model.max_context is not None and prompt.size(1) + max_new_tokens > model.max_context:
        raise ValueError(
            f"prompt ({prompt.size(1)} tokens) + --max-new-tokens ({max_new_tokens}) exceeds "
            f"model.max_seq_len={model.max_context} of this model"
        )


@torch.no_grad()
def generate(
    model,
    prompt: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    eos_id: int | None = None,
    on_token: Callable[[int], None] | None = None,
    cuda_graph: bool | None = None,
    stats: dict[str, Any] | None = None,
) -> list[int]:
    """Continue ``prompt`` (B=1, T ≥ 1); returns the new ids (stops at eos_id).

    The prompt is prefilled in parallel; decoding runs a :class:`Decoder` (``cuda_graph``: None
    captures the step on CUDA). ``stats``, if given, receives prompt_tokens, prompt_s,
    new_tokens, decode_s (clocks read after a device sync), device and cuda_graph (whether the
    step was replayed from a graph).
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    check_request(model, prompt, max_new_tokens)
    was_training = model.training
    model.eval()
    generator = None
    if seed is not None:
        generator = torch.Generator(device=prompt.device).manual_seed(seed)
    decoder = Decoder(model, cuda_graph)
    try:
        _sync(prompt.device)
        t0 = time.perf_counter()
        logits, state = model.prefill(prompt)
        _sync(prompt.device)
        t1 = time.perf_counter()
        out: list[int] = []
        for i in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, top_p, generator)  # (1,)
            tok = int(nxt.item())
            out.append(tok)
            if on_token is not None:
                on_token(tok)
            if (eos_id is not None and tok == eos_id) or i == max_new_tokens - 1:
                break
            logits, state = decoder(nxt, state)
        _sync(prompt.device)
        t2 = time.perf_counter()
    finally:
        model.train(was_training)
    if stats is not None:
        stats.update(prompt_tokens=prompt.size(1), prompt_s=t1 - t0, new_tokens=len(out), decode_s=t2 - t1,
                     device=str(prompt.device), cuda_graph=decoder.captured)
    return out
