"""Entropy coding of a layer's mask bits against its kept fraction (the `slt-mask/2` streams).

A layer of n weights that keeps m of them is coded as if its bits were independent
Bernoulli(p = m/n) draws: the packed bytes (numpy `packbits` order, 8 bits each) are the
symbols, each byte v with probability p^popcount(v) (1-p)^(8-popcount(v)), range-coded by
`constriction`. That costs about n H(p) bits: 0.469 bits per weight at p = 0.1 instead of 1.
The model is rebuilt from the integers (n, m) alone, so encoder and decoder agree exactly; a
layer that keeps none or all of its weights needs no stream.
"""
from __future__ import annotations

import numpy as np

CODER = "constriction-range/bernoulli-bytes/1"
_POPCOUNT = np.array([bin(v).count("1") for v in range(256)], dtype=np.float64)


class CodingError(ValueError):
    """A stream that cannot be decoded into the layer it claims to hold."""


def _model(n: int, kept: int):
    import constriction

    p = kept / n
    probs = np.exp(_POPCOUNT * np.log(p) + (8 - _POPCOUNT) * np.log1p(-p))  # [256], sums to 1
    return constriction.stream.model.Categorical(probs, perfect=False)


def encode_layer(packed: np.ndarray, n: int, kept: int) -> np.ndarray:
    """packed uint8 [ceil(n/8)] with `kept` bits set -> the coded stream as uint8 bytes."""
    import constriction

    if kept in (0, n):
        return np.zeros(0, np.uint8)
    enc = constriction.stream.queue.RangeEncoder()
    enc.encode(packed.astype(np.int32), _model(n, kept))
    words = enc.get_compressed().astype("<u4")  # uint32 words; little-endian bytes on file
    return words.view(np.uint8)


def decode_layer(stream: np.ndarray, n: int, kept: int) -> np.ndarray:
    """The coded stream -> packed uint8 [ceil(n/8)]; CodingError when it cannot be one."""
    import constriction

    size = (n + 7) // 8
    if kept == 0 or kept == n:
        if stream.size:
            raise CodingError("a layer that keeps none or all of its weights has no stream")
        out = np.zeros(size, np.uint8) if kept == 0 else np.full(size, 255, np.uint8)
        if kept and n % 8:
            out[-1] = (0xFF << (8 - n % 8)) & 0xFF  # padding bits stay zero
        return out
    if stream.size == 0 or stream.size % 4:
        raise CodingError(f"stream of {stream.size} bytes is not a whole number of 32-bit words")
    words = np.frombuffer(stream.tobytes(), dtype="<u4").astype(np.uint32)
    try:
        dec = constriction.stream.queue.RangeDecoder(words)
        symbols = dec.decode(_model(n, kept), size)
    except Exception as e:  # the library's own checks on a damaged stream
        raise CodingError(f"stream does not decode ({type(e).__name__}: {e})") from None
    return np.asarray(symbols, dtype=np.uint8)
