"""FrameDecoder: the same frames out however the byte stream is cut."""

from __future__ import annotations

import itertools
import time
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatsecure.errors import RemoteProtocolError
from chatsecure.protocol.codes import ErrorCode
from chatsecure.protocol.frames import FrameDecoder
from chatsecure.protocol.limits import MAX_FRAME

LIMIT = 8
"""A small frame limit so that Hypothesis meets over-long lines often."""

# Lines that may be blank, end in "\r", or hold stray "\r" bytes inside.
line_bodies = st.binary(max_size=LIMIT + 4).map(lambda b: b.replace(b"\n", b""))
streams = st.lists(
    st.tuples(line_bodies, st.sampled_from([b"\n", b"\r\n"])).map(b"".join), max_size=12
).map(b"".join)


Decoded = tuple[list[bytes], bool, int]
"""The frames, whether the stream failed, and how many blank lines were skipped."""


def decode(stream: bytes, cuts: list[int], limit: int = LIMIT) -> Decoded:
    """Feed ``stream`` in pieces cut at ``cuts``; return what came out."""
    decoder = FrameDecoder(limit)
    frames: list[bytes] = []
    edges = [0, *sorted(set(cuts)), len(stream)]
    for start, end in itertools.pairwise(edges):
        if decoder.error is not None:
            break
        frames.extend(decoder.feed(stream[start:end]))
    return frames, decoder.error is not None, decoder.blank_lines


def reference(stream: bytes, limit: int = LIMIT) -> Decoded:
    """What the decoder must produce, written the obvious way."""
    frames: list[bytes] = []
    blank = 0
    *lines, rest = stream.split(b"\n")
    for line in lines:
        frame = line.removesuffix(b"\r")
        if len(frame) > limit:
            return frames, True, blank
        if frame:
            frames.append(frame)
        else:
            blank += 1
    return frames, len(rest.removesuffix(b"\r")) > limit, blank


@given(streams, st.lists(st.integers(min_value=0, max_value=200), max_size=20))
def test_split_anywhere_gives_the_same_frames(stream: bytes, cuts: list[int]) -> None:
    cuts = [c for c in cuts if c <= len(stream)]
    assert decode(stream, cuts) == decode(stream, []) == reference(stream)


@given(streams)
def test_byte_by_byte_gives_the_same_frames_as_whole(stream: bytes) -> None:
    assert decode(stream, list(range(len(stream)))) == decode(stream, [])


@given(st.binary(max_size=64), st.lists(st.integers(min_value=0, max_value=64), max_size=10))
def test_arbitrary_bytes_never_crash_and_agree_with_the_reference(
    stream: bytes, cuts: list[int]
) -> None:
    assert decode(stream, [c for c in cuts if c <= len(stream)]) == reference(stream)


def test_crlf_is_stripped_and_blank_lines_skipped_but_counted() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b'{"a":1}\r\n\n\r\n{"b":2}\n') == [b'{"a":1}', b'{"b":2}']
    assert decoder.blank_lines == 2
    assert decoder.feed(b"\r") == []
    assert decoder.blank_lines == 2, "a blank line counts once its newline is in"
    assert decoder.feed(b"\n\n") == []
    assert decoder.blank_lines == 4


def test_only_the_last_cr_is_stripped() -> None:
    assert FrameDecoder().feed(b"a\r\r\n") == [b"a\r"]


def test_partial_line_is_held_until_its_newline() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b'{"type":') == []
    assert decoder.pending == len(b'{"type":')
    assert decoder.feed(b'"ping"}\n{"x') == [b'{"type":"ping"}']
    assert decoder.pending == 3


def test_line_of_exactly_the_limit_passes_with_lf_and_crlf() -> None:
    decoder = FrameDecoder(MAX_FRAME)
    body = b"x" * MAX_FRAME
    assert decoder.feed(body + b"\n" + body + b"\r\n") == [body, body]
    assert decoder.error is None


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_line_one_byte_over_the_limit_fails(ending: bytes) -> None:
    decoder = FrameDecoder(MAX_FRAME)
    assert decoder.feed(b"x" * (MAX_FRAME + 1) + ending) == []
    assert decoder.error is not None
    assert decoder.error.code is ErrorCode.FRAME_TOO_LONG
    assert decoder.error.fatal


def test_frames_before_an_over_long_line_are_still_returned() -> None:
    decoder = FrameDecoder(4)
    assert decoder.feed(b"ok\r\nfine\n" + b"y" * 5 + b"\nlost\n") == [b"ok", b"fine"]
    assert decoder.error is not None


def test_endless_line_without_newline_fails_once_over_the_limit() -> None:
    decoder = FrameDecoder(MAX_FRAME)
    fed = 0
    chunk = b"z" * 1000
    while decoder.error is None:
        assert decoder.feed(chunk) == []
        fed += len(chunk)
        assert fed <= MAX_FRAME + len(chunk), "the decoder kept buffering past the limit"
    assert decoder.pending == 0, "the over-long line is not kept in memory"


def trickle_seconds(length: int) -> float:
    """The best of three times to feed a line of ``length`` bytes one byte at a time."""
    best = float("inf")
    for _ in range(3):
        decoder = FrameDecoder(0)
        started = time.perf_counter()
        for _ in range(length):
            decoder.feed(b"z")
        assert decoder.feed(b"\n") == [b"z" * length]
        best = min(best, time.perf_counter() - started)
    return best


def test_a_line_trickled_byte_by_byte_costs_its_length_not_its_square() -> None:
    # A hostile peer can send an unfinished frame of up to the limit (a client takes long
    # ones) one byte per TLS record. Joining the whole pending line at each byte made a
    # 1 MB line cost 421 µs a byte. Four times the bytes must cost about four times the time
    # (sixteen if each feed copied what waits).
    short, long = trickle_seconds(30_000), trickle_seconds(120_000)
    assert long < 8 * short, f"{long:.3f} s for 4x the bytes of {short:.3f} s"


def test_a_line_trickled_byte_by_byte_is_held_in_about_its_own_length() -> None:
    # A server holds an unfinished line for each connection: a byte a chunk must not cost an
    # object each (48 bytes of memory a byte).
    decoder = FrameDecoder(MAX_FRAME)
    tracemalloc.start()
    try:
        for _ in range(MAX_FRAME - 1):
            decoder.feed(b"z")
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoder.pending == MAX_FRAME - 1
    assert held < 4 * MAX_FRAME, f"{held} bytes held for {MAX_FRAME - 1} pending"


def test_cr_at_the_limit_waits_for_its_newline() -> None:
    decoder = FrameDecoder(4)
    assert decoder.feed(b"abcd\r") == []
    assert decoder.feed(b"") == []  # (an empty chunk changes nothing)
    assert decoder.error is None
    assert decoder.feed(b"\n") == [b"abcd"]


def test_feed_after_the_error_raises_it_again() -> None:
    decoder = FrameDecoder(4)
    decoder.feed(b"toolong!")
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed(b"ok\n")
    assert info.value is decoder.error


def test_limit_zero_means_unlimited() -> None:
    body = b"w" * (MAX_FRAME * 3)
    assert FrameDecoder(0).feed(body + b"\n") == [body]
