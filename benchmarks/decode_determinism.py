"""Does a ``.feds`` file decode to the same image whatever the thread count? Measured per entropy path.

For each checkpoint, photograph and entropy-parameter path (``float32``: the path of format 1;
``float64``: the default, :mod:`feds_lab.entropy_path`), the image is encoded with ``--encode-threads``
threads and decoded with each of ``--decode-threads``. Each decode is counted as

- ``same``: the decoded 8-bit image equals the one decoded at the encoder's thread count;
- ``near``: decoded, a few 8-bit values differ (float noise in the synthesis, not in the coding);
- ``refused``: the decoder found that it did not reproduce the encoder's symbols and refused;
- ``wrong``: decoded without error into another image (PSNR against the encoder's decode under 40 dB).

Then the rate and the coding time of each path, side by side: bytes of the whole files, PSNR against
the original, encode and decode seconds (medians over the photographs)::

    python benchmarks/decode_determinism.py --checkpoints a.safetensors b.safetensors \\
        --data ../photos --split val --out benchmarks/out/determinism.csv

Without ``--data`` the built-in photographs are used. Say which machine printed the table.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from feds_lab.checkpoint import load_model, read_record
from feds_lab.coding import decode, encode
from feds_lab.data import builtin_split, list_images, split_files, read_image, to_float
from feds_lab.entropy_path import PATHS
from feds_lab.errors import EntropyMismatchError


def images(data: str | None, split: str, limit: int | None):
    if data is None:
        out = [(n, x.unsqueeze(0)) for n, x in builtin_split(split)]
    else:
        files = split_files(list_images(data), split)
        out = [(Path(f).stem, to_float(read_image(f)).unsqueeze(0)) for f in files]
    return out[:limit] if limit else out


def u8(x: torch.Tensor) -> np.ndarray:
    return x.clamp(0, 1).mul(255).round().byte().numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", nargs="+", required=True)
    p.add_argument("--data", help="image folder (default: the built-in photographs)")
    p.add_argument("--split", default="all")
    p.add_argument("--limit", type=int, help="at most this many photographs")
    p.add_argument("--encode-threads", type=int, default=2)
    p.add_argument("--decode-threads", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    p.add_argument("--synthesis-threads", nargs="+", default=["fixed", "caller"], choices=["fixed", "caller"],
                   help="fixed: the decoder's default (coding.SYNTHESIS_THREADS); caller: the decode's own threads")
    p.add_argument("--out", help="CSV of every decode")
    p.add_argument("--timing", type=int, default=0, metavar="N",
                   help="also time both paths on the first photograph, N interleaved repetitions (median of paired "
                        "ratios: robust to a load that drifts), at --encode-threads threads")
    a = p.parse_args(argv)

    imgs = images(a.data, a.split, a.limit)
    rows, summary = [], []
    for ck in a.checkpoints:
        model = load_model(ck)
        rec = read_record(ck)
        spec = rec.get("model") or {}
        name = f"{spec.get('family', rec.get('family', '?'))} {spec.get('role', rec.get('role', '?'))} λ={rec.get('lmbda', '?')}"
        # format 1's float32 path decoded as it always was: on the caller's threads
        variants = [(p_, s_) for p_ in a.paths for s_ in a.synthesis_threads if p_ != "float32" or s_ == "caller"]
        for path_name, synth in variants:
            path = PATHS[path_name]
            kw = {} if synth == "fixed" else {"synthesis_threads": None}
            count = {"same": 0, "near": 0, "refused": 0, "wrong": 0}
            nbytes, quality, enc_s, dec_s = 0, [], [], []
            for img_name, x in imgs:
                torch.set_num_threads(a.encode_threads)
                r = encode(model, x, path=path)
                nbytes += len(r.data)
                enc_s.append(r.seconds)
                ref = decode(model, r.data, **kw)  # at the encoder's own thread count
                dec_s.append(ref.seconds)
                ref8 = u8(ref.x_hat)
                quality.append(psnr(ref8, u8(x)))
                for t in a.decode_threads:
                    torch.set_num_threads(t)
                    try:
                        got8 = u8(decode(model, r.data, **kw).x_hat)
                    except EntropyMismatchError:
                        verdict, diff = "refused", -1
                    else:
                        diff = int((got8 != ref8).sum())
                        verdict = "same" if diff == 0 else ("near" if psnr(got8, ref8) >= 40 else "wrong")
                    count[verdict] += 1
                    rows.append(dict(model=name, checkpoint=ck, path=path_name, synthesis=synth, image=img_name,
                                     encode_threads=a.encode_threads, decode_threads=t, verdict=verdict,
                                     values_differing=diff, bytes=len(r.data)))
            pixels = sum(x.shape[-1] * x.shape[-2] for _, x in imgs)
            summary.append(dict(model=name, path=path_name, synthesis=synth, images=len(imgs), decodes=sum(count.values()), **count,
                                bpp=8 * nbytes / pixels, psnr=statistics.mean(quality),
                                encode_s=statistics.median(enc_s), decode_s=statistics.median(dec_s)))
            s = summary[-1]
            print(f"{name:32s} {path_name:8s} {synth:6s} decodes {s['decodes']:4d}: same {s['same']:4d} near {s['near']:3d} "
                  f"refused {s['refused']:3d} wrong {s['wrong']:3d} | {s['bpp']:.4f} bpp {s['psnr']:.3f} dB | "
                  f"encode {s['encode_s']:.3f} s decode {s['decode_s']:.3f} s", flush=True)
    by = {(s["model"], s["path"], s["synthesis"]): s for s in summary}
    for ck_name in dict.fromkeys(s["model"] for s in summary):
        if (ck_name, "float32", "caller") in by and (ck_name, "float64", "fixed") in by:
            o, n = by[ck_name, "float32", "caller"], by[ck_name, "float64", "fixed"]
            print(f"{ck_name:32s} default (float64, fixed synthesis threads) against format 1's (float32, caller's threads): rate {100 * (n['bpp'] / o['bpp'] - 1):+.3f} %, "
                  f"PSNR {n['psnr'] - o['psnr']:+.4f} dB, encode time x{n['encode_s'] / o['encode_s']:.2f}, "
                  f"decode time x{n['decode_s'] / o['decode_s']:.2f}")
    if a.timing:
        _, x = imgs[0]
        torch.set_num_threads(a.encode_threads)
        for ck in a.checkpoints:
            model = load_model(ck)
            t = {"float32": ([], []), "float64": ([], [])}
            for _ in range(a.timing):
                for name in ("float32", "float64"):
                    r = encode(model, x, path=PATHS[name])
                    kw = {"synthesis_threads": None} if name == "float32" else {}
                    t[name][0].append(r.seconds)
                    t[name][1].append(decode(model, r.data, **kw).seconds)
            enc = statistics.median(b / a_ for a_, b in zip(t["float32"][0], t["float64"][0]))
            dec = statistics.median(b / a_ for a_, b in zip(t["float32"][1], t["float64"][1]))
            print(f"timing {Path(ck).parent.name or ck}: default against format 1's path, median of {a.timing} paired "
                  f"ratios: encode x{enc:.2f} ({statistics.median(t['float64'][0]):.3f} s against "
                  f"{statistics.median(t['float32'][0]):.3f} s), decode x{dec:.2f} ({statistics.median(t['float64'][1]):.3f} s "
                  f"against {statistics.median(t['float32'][1]):.3f} s)", flush=True)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        with open(a.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        with open(Path(a.out).with_suffix(".summary.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(summary[0]))
            w.writeheader()
            w.writerows(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
