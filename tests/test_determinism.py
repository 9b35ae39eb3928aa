"""Decoding gives the same image whatever the thread count or process, and a decoder that would not
is refused, never silent (feds_lab.entropy_path)."""

import struct
import subprocess
import sys
import zlib

import pytest
import torch
from safetensors.torch import load_file, save_file

from feds_lab.bitstream import Bitstream
from feds_lab.checkpoint import load_model
from feds_lab.coding import decode, encode
from feds_lab.data import builtin_split
from feds_lab.entropy_path import PATH_FLOAT32, PATH_FLOAT64, coder, recording
from feds_lab.errors import BitstreamError, EntropyMismatchError


def _photo(name="astronaut", side=128):
    img = dict(builtin_split("all"))[name]
    return img[:, :side, :side].unsqueeze(0).contiguous()


def _rewrite(data: bytes, edit) -> bytes:
    """A file with its body edited and its CRC made right again: only the digest can catch it."""
    body = bytearray(data[:-4])
    edit(body)
    return bytes(body) + struct.pack(">I", zlib.crc32(bytes(body)))


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_decode_at_any_thread_count_gives_the_same_image(tiny_checkpoints, role):
    model = load_model(tiny_checkpoints[role])
    x = _photo()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        data = encode(model, x).data
        images = {}
        for t in (1, 2, 4):
            torch.set_num_threads(t)
            images[t] = decode(model, data).x_hat
    finally:
        torch.set_num_threads(threads)
    u8 = {t: v.mul(255).round().byte() for t, v in images.items()}
    assert torch.equal(u8[1], u8[2]) and torch.equal(u8[1], u8[4])


def test_the_entropy_parameter_path_is_float64_on_one_thread(tiny_checkpoints):
    model = load_model(tiny_checkpoints["teacher"])
    c = coder(model, PATH_FLOAT64)
    assert next(model.parameters()).dtype == torch.float32  # the model itself is untouched
    assert all(p.dtype == torch.float64 for p in c.latent_codec.parameters())
    assert all(p.dtype == torch.float32 for t in (c.g_a, c.g_s) for p in t.parameters())
    seen = []
    c.latent_codec.hyper.h_s.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    c.g_s.register_forward_pre_hook(lambda *_: seen.append(("g_s", torch.get_num_threads())))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        data = encode(model, _photo(side=64)).data
        decode(model, data, synthesis_threads=None)  # the synthesis on the caller's threads
    finally:
        torch.set_num_threads(threads)
    assert seen and all(s == 1 for s in seen if not isinstance(s, tuple))
    assert ("g_s", 2) in seen  # the synthesis keeps the caller's threads
    assert coder(model, PATH_FLOAT64) is c  # made once per weights


def test_a_file_whose_digest_does_not_come_out_is_refused(tiny_checkpoints):
    model = load_model(tiny_checkpoints["student"])
    data = encode(model, _photo()).data
    assert Bitstream.from_bytes(data).version == 2
    digest_at = 4 + 1 + 8 + 4 + 4 + 1

    def flip(body):
        body[digest_at] ^= 0x01

    with pytest.raises(EntropyMismatchError, match="other entropy parameters than the encoder's.*thread count"):
        decode(model, _rewrite(data, flip))


def test_a_decoder_that_picks_other_tables_is_refused(tiny_checkpoints, monkeypatch):
    """The failure itself, forged: the decoder's scales come out one table lower than the encoder's."""
    from feds_lab.entropy_path import CheckedGaussianConditional

    model = load_model(tiny_checkpoints["teacher"])
    data = encode(model, _photo()).data
    original = CheckedGaussianConditional.build_indexes

    def off_by_one(self, scales):
        return (original(self, scales) - 1).clamp_(min=0)

    monkeypatch.setattr(CheckedGaussianConditional, "build_indexes", off_by_one)
    with pytest.raises(EntropyMismatchError):
        decode(model, data)


def test_a_version_1_file_still_decodes(tiny_checkpoints):
    model = load_model(tiny_checkpoints["teacher"])
    x = _photo(side=96)
    new = Bitstream.from_bytes(encode(model, x, path=PATH_FLOAT32).data)
    old = Bitstream(new.fingerprint, new.height, new.width, new.streams, new.shape, version=1).to_bytes()
    assert old[4] == 1 and len(old) == len(new.to_bytes()) - 9
    assert torch.equal(decode(model, old).x_hat, decode(model, new.to_bytes()).x_hat)


def test_an_unknown_path_is_refused(tiny_checkpoints):
    model = load_model(tiny_checkpoints["student"])
    data = encode(model, _photo(side=64)).data

    def other(body):
        body[4 + 1 + 8 + 4 + 4] = 9

    with pytest.raises(BitstreamError, match="entropy-parameter path 9 is unknown"):
        decode(model, _rewrite(data, other))


def test_both_paths_code_the_same_symbols_on_photographs(tiny_checkpoints):
    """float64 changes how the parameters are computed, not what the model codes: same symbols."""
    model = load_model(tiny_checkpoints["teacher"])
    for side in (64, 128):
        x = _photo("coffee", side)
        digests = []
        for path in (PATH_FLOAT32, PATH_FLOAT64):
            with recording(coder(model, path), "encode") as d:
                coder(model, path).compress(x)
            digests.append(d.digest())
        assert digests[0] == digests[1]


@pytest.mark.slow  # 15 s on two busy cores
def test_decode_in_a_fresh_process_gives_the_same_image_and_latent(tiny_checkpoints, tmp_path):
    model = load_model(tiny_checkpoints["teacher"])
    x = _photo("chelsea", 128)
    (tmp_path / "img.feds").write_bytes(encode(model, x).data)
    here = decode(model, (tmp_path / "img.feds").read_bytes()).x_hat
    code = (
        "import sys, torch; from safetensors.torch import save_file\n"
        "torch.set_num_threads(int(sys.argv[4]))\n"
        "from feds_lab.checkpoint import load_model; from feds_lab.coding import decode\n"
        "m = load_model(sys.argv[1]); d = decode(m, open(sys.argv[2], 'rb').read())\n"
        "save_file({'x': d.x_hat.contiguous()}, sys.argv[3])\n"
    )
    for t in (1, 3):  # the decoder fixes its own threads: a busy caller changes nothing
        subprocess.run([sys.executable, "-c", code, str(tiny_checkpoints["teacher"]), str(tmp_path / "img.feds"),
                        str(tmp_path / "out.safetensors"), str(t)], check=True, timeout=120)
        there = load_file(tmp_path / "out.safetensors")["x"]
        assert torch.equal(here.mul(255).round(), there.mul(255).round())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two trained students (CNN and transformer families, two lambdas): a short budget, real training."""
    from feds_lab.training import TrainConfig, train

    root = tmp_path_factory.mktemp("trained")
    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for family, lmbda, steps in (("cnn", 0.0932, 120), ("transformer", 0.0067, 80)):
            cfg = TrainConfig(role="student", baseline="scratch", family=family, lmbda=lmbda, steps=steps, batch_size=4,
                              val_every=0, ckpt_every=0, progress=False, threads=1, out=str(root / family))
            out[family] = train(cfg)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("family", ["cnn", "transformer"])
def test_trained_models_decode_every_photograph_alike_at_any_thread_count(trained, family):
    """Every built-in photograph, whole, encoded with 2 threads, decoded with 1, 2 and 4: the same 8-bit image."""
    model = load_model(trained[family])
    threads = torch.get_num_threads()
    try:
        for name, img in builtin_split("all"):
            x = img.unsqueeze(0)
            torch.set_num_threads(2)
            data = encode(model, x).data
            decoded = []
            for t in (1, 2, 4):
                torch.set_num_threads(t)
                decoded.append(decode(model, data).x_hat.mul(255).round().byte())
            assert all(torch.equal(decoded[0], d) for d in decoded[1:]), name
    finally:
        torch.set_num_threads(threads)
