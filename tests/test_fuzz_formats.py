"""Hostile inputs, fuzzed: Hypothesis fuzzing of the container parser, the record reader, the decoder and the state
reader. Each property: only the package's own error (one line) or a valid result, never another
exception. Bounded (derandomized, fixed example counts, about a minute in all on two CPU cores);
benchmarks/hostile_campaign.py runs the long campaign under a memory limit, in worker processes."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from feds_lab.bitstream import Bitstream, parse_shape
from feds_lab.checkpoint import RECORD_KEY, load_model, read_record
from feds_lab.coding import decode, encode
from feds_lab.errors import BitstreamError, CheckpointError, TrainingStateError
from feds_lab.training.state import load_state

pytestmark = pytest.mark.usefixtures("one_thread")

def fuzz(examples: int) -> settings:
    """Bounded and reproducible: a fixed number of derandomized examples, no example database."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def student(tiny_checkpoints):
    return load_model(tiny_checkpoints["student"])


@pytest.fixture(scope="module")
def good(student):
    return encode(student, torch.rand(1, 3, 45, 77, generator=torch.Generator().manual_seed(5))).data


def _fix_crc(b: bytes) -> bytes:
    return b[:-4] + struct.pack(">I", zlib.crc32(b[:-4])) if len(b) >= 4 else b


def _one_line(e: Exception) -> None:
    assert "\n" not in str(e)


mutation = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8)


def _mutate(data: bytes, edits, cut: int | None, fix: bool) -> bytes:
    b = bytearray(data)
    for pos, val in edits:
        b[pos % len(b)] = val
    if cut is not None:
        b = b[: cut % (len(b) + 1)]
    return _fix_crc(bytes(b)) if fix else bytes(b)


@fuzz(600)
@given(data=st.binary(max_size=300))
def test_parser_takes_any_bytes(data):
    for blob in (data, b"FEDS\x01" + data, _fix_crc(b"FEDS\x01" + data + b"\0\0\0\0")):
        try:
            Bitstream.from_bytes(blob)
        except BitstreamError as e:
            _one_line(e)


@fuzz(150)
@given(text=st.one_of(st.binary(max_size=200), st.recursive(
    st.one_of(st.integers(-2**40, 2**40), st.floats(), st.booleans(), st.none(), st.text(max_size=5)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=20).map(lambda v: json.dumps(v).encode())))
def test_shape_parser_takes_any_json(text):
    try:
        parse_shape(text)
    except BitstreamError as e:
        _one_line(e)


@fuzz(250)
@given(edits=mutation, cut=st.none() | st.integers(0, 10**6), fix=st.booleans())
def test_decoder_takes_any_mutant(student, good, edits, cut, fix):
    data = _mutate(good, edits, cut, fix)
    try:
        out = decode(student, data)
    except BitstreamError as e:
        _one_line(e)
    else:
        assert torch.isfinite(out.x_hat).all() and out.x_hat.dim() == 4


@fuzz(120)
@given(h=st.integers(1, 5000), w=st.integers(1, 5000), shape=st.one_of(
    st.fixed_dictionaries({"y": st.lists(st.integers(1, 5000), min_size=1, max_size=4),
                           "hyper": st.lists(st.integers(1, 5000), min_size=1, max_size=3)}),
    st.lists(st.integers(1, 65536), max_size=3)))
def test_decoder_refuses_headers_the_model_did_not_write(student, good, h, w, shape):
    bs = Bitstream.from_bytes(good)
    bs.height, bs.width, bs.shape = h, w, shape
    try:
        out = decode(student, bs.to_bytes())
    except BitstreamError as e:
        _one_line(e)
    else:  # only a header that matches what the model gives for that size decodes
        assert (h, w) == (45, 77) and out.x_hat.shape[-2:] == (45, 77)


@fuzz(150)
@given(record=st.one_of(st.text(max_size=200), st.recursive(
    st.one_of(st.integers(-2**40, 2**40), st.floats(), st.booleans(), st.none(), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(
        ["format", "model", "family", "role", "preset", "overrides", "N", "M", "x"]), inner, max_size=5)),
    max_leaves=25).map(json.dumps)))
def test_record_reader_takes_any_record(tiny_checkpoints, tmp_path_factory, record):
    path = tmp_path_factory.mktemp("rec") / "c.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={RECORD_KEY: record})
    for fn in (read_record, load_model):
        try:
            fn(path)
        except CheckpointError as e:
            _one_line(e)


@fuzz(120)
@given(edits=mutation, cut=st.none() | st.integers(0, 10**7))
def test_checkpoint_loader_takes_any_mutant(tiny_checkpoints, tmp_path_factory, edits, cut):
    src = Path(tiny_checkpoints["student"]).read_bytes()
    header = struct.unpack("<Q", src[:8])[0] + 8
    edits = [(p % header, v) for p, v in edits]  # mostly the JSON header: where the parser works hardest
    path = tmp_path_factory.mktemp("ck") / "c.safetensors"
    path.write_bytes(_mutate(src, edits, cut, fix=False))
    try:
        load_model(path)
    except CheckpointError as e:
        _one_line(e)


@pytest.fixture(scope="module")
def state_bytes(tmp_path_factory):
    from feds_lab import build_model
    from feds_lab.training.config import TrainConfig
    from feds_lab.training.state import save_state

    cfg = TrainConfig.from_dict({"role": "student", "preset": "tiny", "steps": 10, "baseline": "scratch"})
    model = build_model(cfg.role, preset=cfg.preset, family=cfg.family, **(cfg.model or {}))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    path = tmp_path_factory.mktemp("st") / "state.pt"
    save_state({"format": "feds-lab-train-state/1", "step": 4, "stage": "rate_distortion", "nonfinite": 0,
                "skipped": 0, "seconds": 1.0, "window": {"n": 0, "sums": {}}, "model": model.state_dict(),
                "adapters": {}, "optimizer": opt.state_dict(), "aux_optimizer": opt.state_dict(),
                "rng": [torch.get_rng_state()], "config": cfg.to_dict()}, path)
    load_state(path, steps=10)  # the unmutated state is good
    return path.read_bytes()


@fuzz(80)
@given(edits=mutation, cut=st.none() | st.integers(0, 10**7))
def test_state_reader_takes_any_mutant(state_bytes, tmp_path_factory, edits, cut):
    path = tmp_path_factory.mktemp("stm") / "state.pt"
    path.write_bytes(_mutate(state_bytes, edits, cut, fix=False))
    try:
        load_state(path, steps=10)
    except TrainingStateError as e:
        _one_line(e)
