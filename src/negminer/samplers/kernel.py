"""The fused CPU kernels (``_topk_stream.c``: the running top-k of a pass, and a chunk's softmax for log Z
and draws with replacement), compiled on first use with the system C compiler.

Why C: on a CPU with bf16 matrix units the score matmul at d = 128 costs less than two separate
torch passes over its [B, c] output (a mixed-dtype add and a topk), or than torch's CPU generator
drawing one uniform per target, so the sampler could not stay within 1.5x of the bare matmul. The
kernel reads the scores once, and draws the Gumbel noise with a vectorised counter-based generator. It has no dependency (plain C,
loaded with ctypes, about a second to build; on Linux it uses torch's own OpenMP threads, see
``_torch_gomp``), is cached per source, compiler and CPU under
``$NEGMINER_CACHE/kernels`` (default ``~/.cache/negminer``), and where no compiler works, or with
``NEGMINER_KERNEL=0``, the samplers use the equivalent torch ops (tests run both).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SRC = Path(__file__).with_name("_topk_stream.c")
_lib = None
_tried = False
_error = ""


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _torch_gomp() -> bool:
    """Whether torch runs on GNU OpenMP here (Linux wheels): then a kernel built with -fopenmp binds to
    the libgomp.so.1 torch has loaded, one runtime and one thread pool, whose threads are still
    spinning from the last matmul. (Python threads, or a second OpenMP runtime, fight those threads
    for the cores instead: tried, slower than one thread.)"""
    try:
        return any("libgomp" in line for line in Path("/proc/self/maps").read_text().splitlines())
    except OSError:
        return False


def _compile(cc: str, flags: list[str]) -> Path:
    key = hashlib.sha256("\0".join([SRC.read_text(), cc, *flags, _cpu_flags(), platform.machine()]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("NEGMINER_CACHE", Path.home() / ".cache" / "negminer")) / "kernels"
    out = cache / f"topk_stream-{key}.so"
    if not out.exists():
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache, prefix=".topk_stream.", suffix=".tmp")
        os.close(fd)
        try:
            r = subprocess.run([cc, *flags, str(SRC), "-o", tmp, "-lm"], capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                raise RuntimeError(f"{cc} failed: {r.stderr.strip()[:500]}")
            os.replace(tmp, out)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return out


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    base = ["-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno"]
    err = ""
    for flags in ([*base, "-fopenmp"], base) if _torch_gomp() else (base,):
        try:
            lib = ctypes.CDLL(str(_compile(cc, flags)))
            break
        except (RuntimeError, OSError) as e:
            err = str(e)
    else:
        raise RuntimeError(err)
    i64, f32, ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    for name in ("topk_stream_bf16", "topk_stream_f32"):
        fn = getattr(lib, name)
        fn.argtypes = [ptr, i64, i64, i64, i64, ptr, i64, f32, i64, ctypes.c_int, ptr, ptr, ptr]
        fn.restype = None
    lib.funcs = {torch.bfloat16: lib.topk_stream_bf16, torch.float32: lib.topk_stream_f32}
    for name in ("mark_bf16", "mark_f32"):
        fn = getattr(lib, name)
        fn.argtypes = [ptr, i64, i64, f32, ptr, ptr, i64, ptr, ptr, ptr, i64]
        fn.restype = None
    lib.marks = {torch.bfloat16: lib.mark_bf16, torch.float32: lib.mark_f32}
    for name in ("softmax_stream_bf16", "softmax_stream_f32"):
        fn = getattr(lib, name)
        fn.argtypes = [ptr, i64, i64, i64, f32, ptr, ctypes.c_int, ptr, ptr, i64, ctypes.c_uint64, ptr]
        fn.restype = None
    lib.softmaxes = {torch.bfloat16: lib.softmax_stream_bf16, torch.float32: lib.softmax_stream_f32}
    lib.gumbel_fill.argtypes = [ptr, i64, ctypes.c_uint64]
    lib.gumbel_fill.restype = None
    return lib


def get():
    """The loaded kernel library, or None (no compiler, build failed, or ``NEGMINER_KERNEL=0`` when
    first asked)."""
    global _lib, _tried, _error
    if not _tried:
        _tried = True
        if os.environ.get("NEGMINER_KERNEL", "1") == "0":
            _error = "NEGMINER_KERNEL=0"
        else:
            try:
                _lib = _build()
            except Exception as e:  # noqa: BLE001 - any failure means: use the torch path
                _error = f"{type(e).__name__}: {e}"
    return _lib


def status() -> str:
    return "compiled" if get() is not None else f"torch fallback ({_error or 'disabled'})"


def topk_chunk(scores: torch.Tensor, noise: torch.Tensor, stride: int, scale: float, start: int,
               keys: torch.Tensor, pos: torch.Tensor, logits: torch.Tensor) -> bool:
    """Fold one chunk into the running lists in place; False if the kernel cannot take these tensors."""
    lib = get()
    if lib is None or scores.device.type != "cpu" or scores.dtype not in (torch.bfloat16, torch.float32):
        return False
    if scores.stride(1) != 1 or not (keys.is_contiguous() and pos.is_contiguous() and logits.is_contiguous()):
        return False
    b, c = scores.shape
    fn = lib.funcs[scores.dtype]
    fn(scores.data_ptr(), 0, b, c, scores.stride(0), noise.data_ptr(), stride, scale, start, keys.shape[1],
       keys.data_ptr(), pos.data_ptr(), logits.data_ptr())
    return True


def mark(scores: torch.Tensor, start: int, scale: float, watch_q: torch.Tensor, watch_p: torch.Tensor,
         out: torch.Tensor, excl_q: torch.Tensor, excl_p: torch.Tensor) -> bool:
    """out[i] = scale * scores[watch_q[i], watch_p[i] - start], then scores at the excluded pairs = -inf
    (in place); False if the kernel cannot take these tensors."""
    lib = get()
    if lib is None or scores.device.type != "cpu" or scores.dtype not in (torch.bfloat16, torch.float32):
        return False
    ts = (watch_q, watch_p, excl_q, excl_p)
    if scores.stride(1) != 1 or out.dtype != torch.float32 or not out.is_contiguous() or not all(
            t.dtype == torch.long and t.is_contiguous() for t in ts):
        return False
    lib.marks[scores.dtype](scores.data_ptr(), scores.stride(0), start, scale, watch_q.data_ptr(), watch_p.data_ptr(),
                            len(watch_q), out.data_ptr(), excl_q.data_ptr(), excl_p.data_ptr(), len(excl_q))
    return True


def softmax_chunk(scores: torch.Tensor, scale: float, log_z: torch.Tensor,
                  work: torch.Tensor, start: int = 0, seed: int = 0, pos: torch.Tensor | None = None,
                  logits: torch.Tensor | None = None) -> bool:
    """Fold one chunk's softmax (scale x scores; -inf: no mass) into the running ``log_z`` [B] in place;
    with ``pos``/``logits`` [B, K], each slot takes a draw from the chunk with probability Z_chunk / Z
    (weighted reservoir sampling; uniforms a function of ``seed``, row, ``start`` and slot). ``work``:
    a float32 [B, c] scratch. False if the kernel cannot take these tensors."""
    lib = get()
    if lib is None or scores.device.type != "cpu" or scores.dtype not in (torch.bfloat16, torch.float32):
        return False
    b, c = scores.shape
    k = 0 if pos is None else pos.shape[1]
    outs = [log_z, work] + ([] if pos is None else [pos, logits])
    if scores.stride(1) != 1 or work.numel() < b * c or not all(t.is_contiguous() for t in outs) or any(
            t.dtype != torch.float32 for t in (log_z, work)) or (pos is not None and pos.dtype != torch.long):
        return False
    lib.softmaxes[scores.dtype](scores.data_ptr(), b, c, scores.stride(0), scale, log_z.data_ptr(), k,
                                None if pos is None else pos.data_ptr(), None if logits is None else logits.data_ptr(),
                                start, seed % 2**64, work.data_ptr())
    return True


def gumbel(n: int, generator: torch.Generator, skip: int = 0) -> torch.Tensor | None:
    """n Gumbel(0, 1) values from the kernel's counter-based generator (seeded from ``generator``),
    or None without the kernel; about ten times faster than torch's CPU generator and two logs.
    ``skip``: values skip..skip+n-1 of the sequence this seed gives (value i depends only on the seed
    and i, so a rank makes just its slice of a pass's noise)."""
    lib = get()
    if lib is None:
        return None
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    seed = (seed + skip * 0x9E3779B97F4A7C15) % 2**64  # value i is a hash of seed + (i + 1) x golden
    out = torch.empty(n)
    lib.gumbel_fill(out.data_ptr(), n, seed)
    return out
