"""Hostile-input campaign (every crafted input must be refused cleanly): mutated .feds files, crafted
checkpoints and run states, in-process and through the real CLI; prints counts of clean errors,
crashes, hangs, peak memory and lost originals.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/hostile_campaign.py                # 5,000 .feds, 240 checkpoints/states
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/hostile_campaign.py --feds 500 --cli 40   # a quick look

In-process cases run in worker processes (``--worker``) under an address-space limit
(``resource.setrlimit(RLIMIT_AS)``), with an alarm per case: a worker killed by a signal is a crash,
one killed by its alarm a hang; the parent records the case and starts a new worker after it. The
peak memory of each case is measured in its worker (``VmHWM`` after resetting it through
``/proc/self/clear_refs``), above the worker's memory before the case. Every case is a function of
(seed, kind, index): a crash is reproduced with ``--worker --kind K --start I --end I+1``.

CLI cases run ``python -m feds_lab.cli`` in a subprocess under the same limit and timeout; a Python
traceback on stderr counts as a failure, and so does a non-package exception. "Originals lost": every
input file's SHA-256 before and after each CLI call.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

AS_LIMIT = 6 << 30  # address space of a worker / CLI process (torch alone maps about 1-2 GB of it)
CASE_TIMEOUT = 120  # seconds per in-process case (a 45x77 decode takes 0.02 s; a declared 4096x4096 up to 30 s here)
CLI_TIMEOUT = 120


# --- the material: a model, images, good files ---------------------------------------------------

def setup(work: Path, seed: int) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from feds_lab import build_model
    from feds_lab.checkpoint import save_model
    from feds_lab.coding import encode, load_image

    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    paths = {}
    for role in ("student", "teacher"):
        paths[role] = str(save_model(build_model(role, preset="tiny"), work / f"{role}.safetensors", {"lmbda": 0.0067}))
    rng = np.random.default_rng(seed)
    images = []
    for i, (h, w) in enumerate([(45, 77), (64, 64), (100, 130), (17, 9)]):
        yy, xx = np.mgrid[0:h, 0:w]
        a = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), rng.integers(0, 255, (h, w))], -1)
        p = work / f"img{i}.png"
        Image.fromarray(a.astype(np.uint8)).save(p)
        images.append(str(p))
    from feds_lab.checkpoint import load_model

    model = load_model(paths["student"])
    feds = []
    for i, p in enumerate(images):
        f = work / f"img{i}.feds"
        f.write_bytes(encode(model, load_image(p)).data)
        feds.append(str(f))
    # a real run state: three training steps through the CLI
    run = work / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    subprocess.run([sys.executable, "-m", "feds_lab.training.cli", "train", "student", "--baseline", "scratch",
                    "--out", str(run), "--steps", "3", "--batch-size", "2", "--crop", "64", "--set", "ckpt_every=1",
                    "--set", "val_every=0"], check=True, capture_output=True, env=env, cwd=ROOT, timeout=600)
    return {"models": paths, "images": images, "feds": feds, "state": str(run / "state.pt"),
            "config": str(run / "config.yaml")}


# --- .feds mutants ---------------------------------------------------------------------------------

HEAD = struct.Struct(">4sB8sIIB")


def _fix_crc(b: bytes) -> bytes:
    return b[:-4] + struct.pack(">I", zlib.crc32(b[:-4]))


def _parts(b: bytes):
    _, v, fp, h, w, n = HEAD.unpack_from(b)
    pos = HEAD.size
    lengths = list(struct.unpack_from(f">{n}I", b, pos))
    pos += 4 * n
    (slen,) = struct.unpack_from(">H", b, pos)
    shape = b[pos + 2: pos + 2 + slen]
    pos += 2 + slen
    streams = []
    for L in lengths:
        streams.append(b[pos: pos + L])
        pos += L
    return v, fp, h, w, shape, streams


def _pack(v, fp, h, w, shape: bytes, streams, lengths=None) -> bytes:
    lengths = [len(s) for s in streams] if lengths is None else lengths
    out = HEAD.pack(b"FEDS", v, fp, h, w, len(lengths)) + struct.pack(f">{len(lengths)}I", *lengths)
    out += struct.pack(">H", len(shape)) + shape + b"".join(streams)
    return out + struct.pack(">I", zlib.crc32(out))


def _shape_json(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def feds_mutant(good: bytes, r: random.Random) -> tuple[str, bytes]:
    """One mutated file and the name of the mutation."""
    v, fp, h, w, shape, streams = _parts(good)
    op = r.choice(["bitflip", "bytes", "truncate", "extend", "header", "lengths", "shape", "streams", "splice",
                   "bitflip", "shape", "streams", "header", "lengths"] * 3 + ["bomb"])
    b = bytearray(good)
    fix = r.random() < 0.85
    if op == "bitflip":
        for _ in range(r.randint(1, 8)):
            i = r.randrange(len(b) - 4 if fix else len(b))
            b[i] ^= 1 << r.randrange(8)
    elif op == "bytes":
        for _ in range(r.randint(1, 16)):
            b[r.randrange(len(b) - 4)] = r.randrange(256)
    elif op == "truncate":
        b = b[: r.randrange(len(b))] + (b[-4:] if r.random() < 0.5 else b"")
    elif op == "extend":
        b = b[:-4] + bytes(r.randrange(256) for _ in range(r.randint(1, 64))) + b[-4:]
    elif op == "header":
        hh, ww = r.choice([(h, w), (0, w), (h, 0), (65536, 65536), (4096, 4096), (1, 1), (h * 2, w), (2**32 - 1, 7),
                           (r.randrange(1, 5000), r.randrange(1, 5000))])
        return op, (_pack(v, fp, hh, ww, shape, streams) if fix else bytes(b[:9]) + struct.pack(">II", hh, ww) + bytes(b[17:]))
    elif op == "lengths":
        lengths = [max(0, L + r.randint(-20, 20)) if r.random() < 0.5 else r.choice([0, 2**32 - 1, 2**31, L])
                   for L in map(len, streams)]
        if r.random() < 0.3:
            lengths = lengths + [r.randrange(100)]
        return op, _pack(v, fp, h, w, shape, streams, lengths)
    elif op == "shape":
        s = json.loads(shape)
        cands = [
            {"y": [32, r.randrange(1, 5000), r.randrange(1, 5000)], "hyper": [r.randrange(1, 2000), r.randrange(1, 2000)]},
            {"y": [32, 4, 8], "hyper": [1024, 1024]},
            {"y": [-1, 4, 8], "hyper": [1, 2]}, {"y": [32.5, 4, 8], "hyper": [1, 2]}, {"y": "x", "hyper": None},
            [1, 2], [], {}, 5, "s", True, {"y": [[[[[[[[1]]]]]]]], "hyper": [1, 1]},
            {"hyper": s.get("hyper") if isinstance(s, dict) else [1, 1]}, {"y": [True, 4, 8], "hyper": [1, 2]},
            {"y": [32, 4, 8, 9], "hyper": [1, 2]}, {"y": [2**40, 4, 8], "hyper": [1, 2]},
        ]
        raw = r.choice([_shape_json(r.choice(cands)), b"[" * r.randint(10, 60000), b"{" * 3000,
                        b'{"y":[NaN,1,1]}', b"\xff\xfe", b"1e999", b'{"y":[1e5,1,1],"hyper":[1,1]}'])
        return op, _pack(v, fp, h, w, raw[:65535], streams)
    elif op == "bomb":  # coherent: a header size and the latent shapes that go with it
        hh, ww = r.choice([(4096, 4096), (8192, 8192), (16384, 16384), (65536, 2048), (2000, 3000), (13000, 13000),
                           (9000, 12000), (60000, 2900)])
        hp, wp = -(-hh // 64) * 64, -(-ww // 64) * 64
        sh = {"y": [32, hp // 16, wp // 16], "hyper": [hp // 64, wp // 64]}
        sts = list(streams) if r.random() < 0.5 else [s[: r.randrange(len(s) + 1)] for s in streams]
        return op, _pack(v, fp, hh, ww, _shape_json(sh), sts)
    elif op == "streams":
        sts = list(streams)
        k = r.randrange(len(sts))
        choice = r.randrange(5)
        if choice == 0:
            sts[k] = b""
        elif choice == 1:
            sts[k] = bytes(r.randrange(256) for _ in range(r.randint(1, 40)))
        elif choice == 2:
            sts[k] = b"\xff" * r.randint(1, 4000)
        elif choice == 3:
            r.shuffle(sts)
        else:
            s = bytearray(sts[k])
            if s:
                for _ in range(r.randint(1, 4)):
                    s[r.randrange(len(s))] = r.randrange(256)
            sts[k] = bytes(s)
        return op, _pack(v, fp, h, w, shape, sts)
    elif op == "splice":
        i, j = sorted(r.randrange(len(b)) for _ in range(2))
        b = b[:i] + b[j:] + b[i:j]
    data = bytes(b)
    if fix and len(data) >= 8:
        data = _fix_crc(data)
    return op, data


# --- checkpoint and state mutants --------------------------------------------------------------------

def checkpoint_mutant(src: str, r: random.Random, out: Path) -> str:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(src, "pt") as f:
        st = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    rec = json.loads(meta["feds_lab"])
    keys = sorted(st)
    tables = [k for k in keys if k.endswith(("_quantized_cdf", "_offset", "_cdf_length", "scale_table"))]
    floats = [k for k in keys if st[k].is_floating_point() and not k.endswith("scale_table")]
    op = r.choice(["table_zero", "table_cut", "table_huge", "table_random", "nan", "inf", "dtype", "shape", "drop",
                   "extra", "huge_weights", "quantiles", "record_sizes", "record_type", "record_fields", "record_deep",
                   "raw_flip", "truncate", "header_len", "buffers", "scale_table"])
    if op.startswith("table"):
        k = r.choice(tables)
        t = st[k]
        if op == "table_zero":
            st[k] = torch.zeros_like(t)
        elif op == "table_cut":
            st[k] = t[..., : r.randint(0, 2)].contiguous() if t.dim() else t
        elif op == "table_huge":
            st[k] = torch.full_like(t, r.choice([10**6, -10**6, 2**31 - 1, -2**31]))
        else:
            st[k] = torch.randint(-70000, 70000, t.shape, dtype=t.dtype) if not t.is_floating_point() else torch.randn(t.shape)
    elif op in ("nan", "inf", "huge_weights"):
        k = r.choice(floats)
        t = st[k].clone()
        val = {"nan": float("nan"), "inf": float("inf") * r.choice([1, -1]), "huge_weights": 3e38}[op]
        t.view(-1)[r.randrange(t.numel())] = val
        if op == "huge_weights":
            t.fill_(3e38 * r.choice([1, -1]))
        st[k] = t
    elif op == "dtype":
        k = r.choice(keys)
        st[k] = st[k].to(r.choice([torch.int64, torch.float64, torch.float16, torch.int32, torch.uint8]))
    elif op == "shape":
        k = r.choice(floats)
        st[k] = torch.zeros((st[k].numel() + r.randint(1, 5),))
    elif op == "drop":
        st.pop(r.choice(keys))
    elif op == "extra":
        st["evil.weight"] = torch.zeros(3)
    elif op == "quantiles":
        k = next(k for k in keys if k.endswith("quantiles"))
        t = st[k].clone()
        t[..., r.randrange(3)] = r.choice([1e9, -1e9, 1e30, 0.0])
        st[k] = t
    elif op == "buffers":
        cands = [k for k in keys if k.endswith(("mask", "bound", "pedestal", "likelihood_lower_bound.bound", "target"))]
        k = r.choice(cands or keys)
        st[k] = torch.zeros_like(st[k]) if r.random() < 0.5 else st[k] * -1
    elif op == "scale_table":
        k = next((k for k in keys if k.endswith("scale_table")), r.choice(keys))
        st[k] = torch.full((r.choice([1, 64, 100000]),), r.choice([0.0, -1.0, 1e30, float("nan")]))
    elif op == "record_sizes":
        m = rec["model"]
        m.setdefault("overrides", {})[r.choice(["N", "M", "dims", "hyper_channels", "res_blocks", "attn_heads"])] = \
            r.choice([30000, 16000, 2**31, -1, 0, 1.5, "big", [1] * 100, None, True, 200])
    elif op == "record_type":
        meta["feds_lab"] = r.choice(["[1,2]", "null", "1", '"s"', "{", "", json.dumps({"format": 5}),
                                     json.dumps({"format": "feds-lab-checkpoint/1", "model": [1]})])
    elif op == "record_fields":
        m = rec["model"]
        field = r.choice(["family", "role", "preset", "overrides"])
        m[field] = r.choice(["nope", 1, None, {"a": 1}, "x" * 1000, "../../etc", "compressai:bmshj2018-hyperprior"])
    elif op == "record_deep":
        meta["feds_lab"] = "[" * r.randint(1000, 200000) + "]" * r.randint(0, 10)
    if not op.startswith("record_type") and not op == "record_deep" and op.startswith("record"):
        meta["feds_lab"] = json.dumps(rec)
    path = out / f"ck_{r.randrange(10**9)}.safetensors"
    save_file(st, str(path), metadata=meta)
    if op in ("raw_flip", "truncate", "header_len"):
        b = bytearray(path.read_bytes())
        if op == "raw_flip":
            for _ in range(r.randint(1, 20)):
                i = r.randrange(min(len(b), 8 + struct.unpack("<Q", b[:8])[0] + 64) if r.random() < 0.7 else len(b))
                b[i] = r.randrange(256)
        elif op == "truncate":
            b = b[: r.randrange(len(b))]
        else:
            b[:8] = struct.pack("<Q", r.choice([0, 2**63, len(b) * 2, 10**8, 7]))
        path.write_bytes(bytes(b))
    return op, str(path)


def state_mutant(src: str, r: random.Random, out: Path) -> tuple[str, str]:
    import torch

    path = out / f"state_{r.randrange(10**9)}" / "state.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    op = r.choice(["step", "nan_model", "nan_opt", "shape", "drop", "types", "config", "evil", "raw", "truncate",
                   "rng", "stage", "window", "list", "step", "optimizer"])
    if op in ("raw", "truncate"):
        b = bytearray(Path(src).read_bytes())
        if op == "raw":
            for _ in range(r.randint(1, 30)):
                b[r.randrange(len(b))] = r.randrange(256)
        else:
            b = b[: r.randrange(len(b))]
        path.write_bytes(bytes(b))
        return op, str(path)
    s = torch.load(src, weights_only=True)
    if op == "step":
        s["step"] = r.choice([10**9, -1, 4, 2**63 - 1, 3.5, True, "3", None])
    elif op == "nan_model":
        k = r.choice([k for k, v in s["model"].items() if v.is_floating_point()])
        s["model"][k] = s["model"][k].clone()
        s["model"][k].view(-1)[0] = float("nan")
    elif op == "nan_opt":
        st = s["optimizer"]["state"]
        if st:
            k = r.choice(list(st))
            for name, v in st[k].items():
                if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel():
                    st[k][name] = torch.full_like(v, float("inf"))
    elif op == "shape":
        k = r.choice(list(s["model"]))
        s["model"][k] = torch.zeros(s["model"][k].numel() + 3)
    elif op == "drop":
        s.pop(r.choice(list(s)))
    elif op == "types":
        s[r.choice(list(s))] = r.choice([None, 1, "x", [1, 2], {"a": 1}])
    elif op == "config":
        c = s["config"]
        c[r.choice(list(c))] = r.choice([None, -5, "nope", [1], {"x": 1}, 10**12])
    elif op == "evil":
        class Evil:
            def __reduce__(self):
                return (os.system, ("echo PWNED > /tmp/feds_pwned",))
        s["window"] = Evil()
    elif op == "rng":
        s["rng"] = [torch.zeros(r.choice([0, 10, 5056]), dtype=r.choice([torch.uint8, torch.float32]))]
    elif op == "stage":
        s["stage"] = r.choice(["nope", "", "fine_tuning "])
    elif op == "window":
        s["window"] = r.choice([{"n": -1, "sums": {}}, {"n": 1, "sums": {"loss": torch.zeros(5)}}, {"n": "x"}])
    elif op == "list":
        s = [s]
    elif op == "optimizer":
        s["optimizer"] = r.choice([{"state": {}, "param_groups": [{"params": [0, 0]}]}, {"state": 1},
                                   {"state": {}, "param_groups": [{"params": [0], "lr": float("nan")}]}])
    torch.save(s, path)
    return op, str(path)


# --- the worker: one kind of case, in-process, under a memory limit ----------------------------------

def _mem_kb(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def worker(args) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    import torch

    torch.set_num_threads(1)
    from feds_lab.checkpoint import load_model
    from feds_lab.coding import decode, encode, load_image
    from feds_lab.errors import FedsLabError
    from feds_lab.training.state import load_state

    mat = json.loads(Path(args.material).read_text())
    model = load_model(mat["models"]["student"])
    goods = [Path(p).read_bytes() for p in mat["feds"]]
    x = load_image(mat["images"][0])
    genuine = encode(model, x).data
    decode(model, goods[0])  # warm: the layout probe, first-call costs
    scratch = Path(tempfile.mkdtemp(prefix="hostile_", dir=args.scratch))
    progress = open(args.progress, "a")
    results = open(args.results, "a")
    for i in range(args.start, args.end):
        r = random.Random(f"{args.seed}-{args.kind}-{i}")
        progress.write(f"{i}\n")
        progress.flush()
        if args.kind == "feds":
            op, data = feds_mutant(r.choice(goods), r)
        elif args.kind == "checkpoint":
            op, path = checkpoint_mutant(mat["models"]["student"], r, scratch)
        else:
            op, path = state_mutant(mat["state"], r, scratch)
        Path("/proc/self/clear_refs").write_text("5")
        base = _mem_kb("VmRSS")
        t0 = time.perf_counter()
        signal.alarm(CASE_TIMEOUT)  # default action: the process dies of SIGALRM, the parent calls it a hang
        outcome, note = "accepted", ""
        try:
            if args.kind == "feds":
                out = decode(model, data)
                if not bool(torch.isfinite(out.x_hat).all()):
                    outcome, note = "nonfinite", "decoded to non-finite pixels"
            elif args.kind == "checkpoint":
                m = load_model(path)
                enc = encode(m, x)
                decode(m, enc.data)
                if enc.data[13:] != genuine[13:] and op.startswith("table"):
                    note = "table mutant codes differently from the genuine model"
            else:
                load_state(Path(path), steps=3)
        except FedsLabError as e:
            outcome, note = "refused", str(e)
            if "\n" in note:
                outcome = "multiline"
        except BaseException as e:  # noqa: BLE001 - counted, never hidden
            outcome, note = "escaped", f"{type(e).__name__}: {e}"
        signal.alarm(0)
        peak = max(_mem_kb("VmHWM") - base, 0) * 1024
        results.write(json.dumps({"kind": args.kind, "i": i, "op": op, "outcome": outcome, "peak": peak,
                                  "s": round(time.perf_counter() - t0, 3), "note": note[:200]}) + "\n")
        results.flush()
        if args.kind == "checkpoint":
            Path(path).unlink(missing_ok=True)
        elif args.kind == "state":
            shutil.rmtree(Path(path).parent, ignore_errors=True)
    shutil.rmtree(scratch, ignore_errors=True)


def run_kind(kind: str, n: int, material: Path, work: Path, seed: int) -> list[dict]:
    """All n cases of one kind, in workers; a dead worker's current case is recorded, the rest go on."""
    results, progress = work / f"{kind}.jsonl", work / f"{kind}.progress"
    results.unlink(missing_ok=True)
    progress.unlink(missing_ok=True)
    start, events = 0, []
    while start < n:
        cmd = [sys.executable, __file__, "--worker", "--kind", kind, "--start", str(start), "--end", str(n),
               "--seed", str(seed), "--material", str(material), "--results", str(results), "--progress",
               str(progress), "--scratch", str(work)]
        p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        done = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
        last_done = max((d["i"] for d in done), default=start - 1)
        if p.returncode == 0:
            break
        begun = [int(x) for x in progress.read_text().split()] if progress.exists() else [start]
        current = max(begun)
        if current <= last_done:  # died outside a case (start-up): report and stop
            print(f"worker for {kind} failed outside a case (rc {p.returncode}): {p.stderr[-2000:]}", file=sys.stderr)
            break
        sig = -p.returncode if p.returncode < 0 else None
        outcome = "hang" if sig == signal.SIGALRM else "crash"
        events.append({"kind": kind, "i": current, "op": "?", "outcome": outcome, "peak": 0, "s": 0,
                       "note": f"rc {p.returncode} ({signal.Signals(sig).name if sig else 'exit'}) {p.stderr[-300:]}"})
        start = current + 1
    done = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    return done + events


# --- the CLI sample -----------------------------------------------------------------------------------

def _sha(p: Path) -> str | None:
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None


#: feds_lab.cli's main, reporting the process's peak RSS on the way out (the CLI's own output is untouched)
_CLI_WRAPPER = ("import atexit, resource, sys\n"
                "atexit.register(lambda: sys.stderr.write("
                "'\\nCAMPAIGN-MAXRSS %d\\n' % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
                "sys.argv = ['feds-lab'] + sys.argv[1:]\n"
                "from feds_lab.cli import main\n"
                "sys.exit(main())\n")


def _limit():
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def cli_call(argv: list[str], cwd: Path, guard: list[Path]) -> dict:
    before = {str(p): _sha(p) for p in guard}
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    try:
        p = subprocess.Popen([sys.executable, "-c", _CLI_WRAPPER, *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, preexec_fn=_limit)
        out, err = p.communicate(timeout=CLI_TIMEOUT)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        rc = "timeout"
    m = re.search(r"\n?CAMPAIGN-MAXRSS (\d+)\n?", err)
    peak = int(m.group(1)) * 1024 if m else 0
    err = err[: m.start()] + err[m.end():] if m else err
    lost = [k for k, v in before.items() if v is not None and _sha(Path(k)) != v]
    if rc == "timeout":
        outcome = "hang"
    elif isinstance(rc, int) and rc < 0:
        outcome = "crash"
    elif "Traceback" in err or (rc != 0 and "feds-lab" not in err):
        outcome = "escaped"
    elif rc == 0:
        outcome = "accepted"
    else:
        lines = [line for line in err.strip().splitlines() if not line.startswith("note:")]
        outcome = "refused" if len(lines) == 1 else "multiline"
    return {"argv": argv, "rc": rc, "outcome": outcome, "lost": lost, "s": round(time.perf_counter() - t0, 2),
            "err": err.strip()[-300:], "peak_children": peak}


def run_cli(n: int, mat: dict, work: Path, seed: int) -> list[dict]:
    r = random.Random(f"{seed}-cli")
    d = work / "cli"
    d.mkdir(exist_ok=True)
    model = mat["models"]["student"]
    photo = d / "photo.png"
    shutil.copy(mat["images"][0], photo)
    out = []
    # file handling: outputs that would replace inputs or existing files; every one must leave the inputs as they were
    shutil.copy(mat["feds"][0], d / "photo.feds")
    guard = [photo, d / "photo.feds", Path(model)]
    fixed = [
        ["decompress", "photo.feds", "-m", model],  # the default name: photo.decoded.png, never photo.png
        ["decompress", "photo.feds", "-m", model],  # again: the output exists now, refused without -f
        ["decompress", "photo.feds", "-m", model, "-f"],
        ["compress", "photo.png", "-m", model, "-o", "photo.png"],
        ["compress", "photo.png", "-m", model, "-o", "photo.png", "-f"],
        ["compress", "photo.png", "-m", model, "-o", model, "-f"],
        ["decompress", "photo.feds", "-m", model, "-o", "photo.feds", "-f"],
        ["decompress", "photo.feds", "-m", model, "-o", "x.xyz"],
        ["decompress", "photo.feds", "-m", model, "-o", "photo.png", "-f"],  # an explicit -f over another file: allowed
        ["compress", "photo.png", "-m", model],  # photo.feds exists: refused
    ]
    for argv in fixed:
        res = cli_call(argv, d, guard if argv[-2:] != ["photo.png", "-f"] else [d / "photo.feds", Path(model)])
        res["group"] = "files"
        out.append(res)
        shutil.copy(mat["images"][0], photo)  # the one case that may replace photo.png, restored
    n_feds, n_ck = int(n * 0.6), int(n * 0.3)
    goods = [Path(p).read_bytes() for p in mat["feds"]]
    for i in range(n_feds):
        op, data = feds_mutant(r.choice(goods), r)
        f = d / f"m{i}.feds"
        f.write_bytes(data)
        res = cli_call(["decompress", f.name, "-m", model, "-o", f"m{i}.png"], d, [f, Path(model)])
        res.update(group="feds", op=op)
        out.append(res)
        f.unlink()
        (d / f"m{i}.png").unlink(missing_ok=True)
    for i in range(n_ck):
        op, path = checkpoint_mutant(model, r, d)
        res = cli_call(["compress", "photo.png", "-m", path, "-o", f"c{i}.feds"], d, [photo, Path(path)])
        res.update(group="checkpoint", op=op)
        out.append(res)
        Path(path).unlink(missing_ok=True)
        (d / f"c{i}.feds").unlink(missing_ok=True)
    for i in range(n - n_feds - n_ck):
        op, path = state_mutant(mat["state"], r, d)
        run_dir = Path(path).parent
        shutil.copy(mat["config"], run_dir / "config.yaml")
        res = cli_call(["train", "student", "--baseline", "scratch", "--out", str(run_dir), "--steps", "3",
                        "--batch-size", "2", "--crop", "64", "--set", "ckpt_every=1", "--set", "val_every=0"], d,
                       [Path(model)])
        res.update(group="state", op=op)
        out.append(res)
        shutil.rmtree(run_dir, ignore_errors=True)
    return out


# --- the report ------------------------------------------------------------------------------------

def summarise(name: str, rows: list[dict]) -> None:
    from collections import Counter

    c = Counter(r["outcome"] for r in rows)
    refused_peak = max((r["peak"] for r in rows if r["outcome"] == "refused"), default=0)
    any_peak = max((r["peak"] for r in rows), default=0)
    print(f"{name:28s} {len(rows):6d} cases: refused cleanly {c['refused']}, accepted {c['accepted']}, "
          f"crashes {c['crash']}, hangs {c['hang']}, non-package exceptions {c['escaped']}, "
          f"multi-line errors {c['multiline']}, non-finite outputs {c['nonfinite']}; "
          f"peak memory of a refused case {refused_peak / 2**20:.1f} MiB (of any case {any_peak / 2**20:.1f} MiB)")
    ops = Counter((r.get("op", "?"), r["outcome"]) for r in rows)
    print("    by mutation: " + ", ".join(f"{op}/{o} {k}" for (op, o), k in sorted(ops.items())))
    for r in rows:
        if r["outcome"] in ("crash", "hang", "escaped", "multiline", "nonfinite"):
            print(f"    !! {r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--feds", type=int, default=5000)
    ap.add_argument("--checkpoints", type=int, default=160)
    ap.add_argument("--states", type=int, default=80)
    ap.add_argument("--cli", type=int, default=120, help="CLI cases besides the 10 file-handling ones")
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--work", default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for a in ("--kind", "--material", "--results", "--progress", "--scratch"):
        ap.add_argument(a, help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--end", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    work = Path(args.work or tempfile.mkdtemp(prefix="feds_hostile_"))
    t0 = time.perf_counter()
    mat = setup(work, args.seed)
    material = work / "material.json"
    material.write_text(json.dumps(mat))
    print(f"material in {work} ({time.perf_counter() - t0:.0f} s); address-space limit {AS_LIMIT >> 30} GiB, "
          f"{CASE_TIMEOUT} s per in-process case, {CLI_TIMEOUT} s per CLI call")
    rows = {}
    for kind, n in (("feds", args.feds), ("checkpoint", args.checkpoints), ("state", args.states)):
        t = time.perf_counter()
        rows[kind] = run_kind(kind, n, material, work, args.seed)
        print(f"[{kind}: {n} in-process cases in {time.perf_counter() - t:.0f} s]", flush=True)
    t = time.perf_counter()
    cli = run_cli(args.cli, mat, work, args.seed) if args.cli >= 0 else []
    print(f"[CLI: {len(cli)} calls in {time.perf_counter() - t:.0f} s]")
    print()
    print("in-process (worker processes under the limit):")
    for kind in rows:
        summarise(kind, rows[kind])
    print("through the CLI (python -m feds_lab.cli, one process per case):")
    for group in ("files", "feds", "checkpoint", "state"):
        g = [dict(r, peak=r["peak_children"]) for r in cli if r.get("group") == group]
        summarise(f"cli {group}", g)
    print("    (CLI peak memory is the whole process's peak RSS: Python, torch, the model, the decode)")
    lost = sorted({p for r in cli for p in r["lost"]})
    print(f"originals lost: {len(lost)} {lost if lost else ''}")
    print(f"largest peak RSS of any CLI process (whole process: torch, model, decode): "
          f"{max((r['peak_children'] for r in cli), default=0) / 2**20:.0f} MiB")
    files = [r for r in cli if r.get("group") == "files"]
    for r in files:
        print(f"    {' '.join(a if '/' not in a else Path(a).name for a in r['argv']):70s} -> rc {r['rc']}: {r['err'][:110]}")
    print(f"pwned marker present: {Path('/tmp/feds_pwned').exists()}")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
