"""Fuzz the ``.gvae`` decoder with hostile files whose CRC is valid (issue 18).

Small files are coded with the shipped model, then mutated (truncation, bit
flips, random bytes, header-field edits: sizes, quality, stream count and
lengths, model name and hash, version, flags) and the CRC-32 is recomputed
after every mutation, as an attacker would. Each file is decoded by
``gainedvae.codec.decode`` in a worker subprocess, watched by this process:
a worker that dies is a *crash*, one that takes longer than ``--timeout`` a
*hang*, one whose resident memory passes ``--rss-limit`` is killed and counted
as *memory*; an exception other than ``CodecError`` is a *traceback*. Prints a
markdown table and writes JSON.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/fuzz.py --cases 3000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import select
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUTCOMES = ("error", "image", "traceback", "crash", "hang", "memory")


# --------------------------------------------------------------------------- worker


def worker(checkpoint: str) -> None:
    """Decode length-prefixed files from stdin; one JSON line per file on stdout."""
    import torch

    torch.set_num_threads(1)
    import gainedvae
    from gainedvae import codec

    net = gainedvae.load_checkpoint(checkpoint or None)
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing else may write to the protocol stream
    stdin = sys.stdin.buffer
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    while True:
        head = stdin.read(4)
        if len(head) < 4:
            return
        data = stdin.read(struct.unpack(">I", head)[0])
        start = time.perf_counter()
        try:
            x = codec.decode(net, data)
            ok = bool(torch.isfinite(x).all()) and float(x.min()) >= 0 and float(x.max()) <= 1
            result = {"outcome": "image" if ok else "traceback", "detail": "" if ok else "invalid image values",
                      "size": list(x.shape[-2:])}
        except codec.CodecError as err:
            result = {"outcome": "error", "detail": str(err)[:160]}
        except Exception as err:  # noqa: BLE001 - what the benchmark counts
            result = {"outcome": "traceback", "detail": f"{type(err).__name__}: {str(err)[:160]}"}
        result["seconds"] = time.perf_counter() - start
        result["hwm"] = _status_bytes(os.getpid(), "VmHWM:")
        out.write(json.dumps(result) + "\n")
        out.flush()


def _status_bytes(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Worker:
    """A decoding subprocess with a per-file timeout and an RSS cap."""

    def __init__(self, checkpoint: str, timeout: float, rss_limit: int):
        self.timeout, self.rss_limit = timeout, rss_limit
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", "--checkpoint", checkpoint],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
        )
        self.peak = 0
        line = self._readline(300)
        if not line or not json.loads(line).get("ready"):
            raise RuntimeError("the fuzz worker did not start")

    def _readline(self, timeout: float):
        """A line from the worker, None when it died, "hang" / "memory" when it was killed."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        buf = b""
        while True:
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                buf += chunk
                if buf.endswith(b"\n"):
                    return buf.decode()
                continue
            rss = _status_bytes(self.proc.pid, "VmRSS:")
            self.peak = max(self.peak, rss, _status_bytes(self.proc.pid, "VmHWM:"))
            if rss > self.rss_limit:
                self.kill()
                return "memory"
            if time.monotonic() > deadline:
                self.kill()
                return "hang"

    def decode(self, data: bytes) -> dict:
        try:
            self.proc.stdin.write(struct.pack(">I", len(data)) + data)
            self.proc.stdin.flush()
        except BrokenPipeError:
            return {"outcome": "crash", "detail": "worker gone", "seconds": 0.0}
        start = time.perf_counter()
        line = self._readline(self.timeout)
        elapsed = time.perf_counter() - start
        if line in (None, "hang", "memory"):
            if line is None:
                self.proc.wait()
            outcome = {None: "crash", "hang": "hang", "memory": "memory"}[line]
            detail = f"exit status {self.proc.returncode}" if line is None else f"killed after {elapsed:.1f} s"
            return {"outcome": outcome, "detail": detail, "seconds": elapsed}
        result = json.loads(line)
        self.peak = max(self.peak, result.get("hwm", 0))
        return result

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


# --------------------------------------------------------------------------- mutations


def recrc(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


def seed_files(checkpoint: str):
    """Small real files: synthetic 8-bit images coded at several qualities."""
    import torch

    torch.set_num_threads(1)
    import gainedvae
    from gainedvae import codec

    net = gainedvae.load_checkpoint(checkpoint or None)
    rng = np.random.default_rng(0)
    seeds = []
    for (h, w), q in [((32, 48), 1.0), ((64, 64), 4.5), ((17, 80), 8.0), ((48, 40), 2.25)]:
        smooth = np.kron(rng.random((h // 8 + 1, w // 8 + 1, 3)), np.ones((8, 8, 1)))[:h, :w]
        img = (255 * np.clip(smooth + 0.03 * rng.standard_normal((h, w, 3)), 0, 1)).astype(np.uint8)
        seeds.append(codec.encode(net, img, q))
    return seeds


class Fields:
    """Offsets of a container's header fields (format version 2)."""

    def __init__(self, data: bytes):
        self.n = data[6]
        self.dims = 23 + self.n
        self.quality = 31 + self.n
        self.count = 39 + self.n
        self.k = data[self.count]
        self.table = 40 + self.n
        self.lengths = list(struct.unpack_from(f">{self.k}I", data, self.table))


def _edit(data: bytes, pos: int, raw: bytes) -> bytes:
    return recrc(data[:pos] + raw + data[pos + len(raw) : -4])


HUGE = [0, 1, 2, 63, 65, 4096, 131200, 262140, 262141, 65535 * 4, 2**31, 2**32 - 1]
QUALITIES = [math.nan, math.inf, -math.inf, 0.0, 0.5, 0.9999999999, 1.0, 8.0, 8.0000001, 9.0, -1.0, 1e308, 5e-324]


def mutate(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    f = Fields(data)
    body = data[:-4]
    if kind == "truncate":
        return recrc(body[: int(rng.integers(0, len(body)))])
    if kind == "bitflip":
        b = bytearray(body)
        for _ in range(int(rng.integers(1, 9))):
            pos = int(rng.integers(0, len(b)))
            b[pos] ^= 1 << int(rng.integers(0, 8))
        return recrc(bytes(b))
    if kind == "random-bytes":
        b = bytearray(body)
        pos = int(rng.integers(0, len(b)))
        n = int(rng.integers(1, 32))
        b[pos : pos + n] = rng.bytes(n)
        return recrc(bytes(b))
    if kind == "random-file":
        return recrc(b"GVAE" + bytes([2]) + rng.bytes(int(rng.integers(0, 600))))
    if kind == "size":
        h, w = struct.unpack_from(">II", data, f.dims)
        pick = lambda: int(HUGE[int(rng.integers(0, len(HUGE)))])  # noqa: E731
        r = rng.random()
        h, w = (pick(), w) if r < 0.3 else (h, pick()) if r < 0.6 else (pick(), pick()) if r < 0.8 else (
            h * int(rng.integers(1, 5)), w * int(rng.integers(1, 5)))
        return _edit(data, f.dims, struct.pack(">II", min(h, 2**32 - 1), min(w, 2**32 - 1)))
    if kind == "quality":
        q = QUALITIES[int(rng.integers(0, len(QUALITIES)))] if rng.random() < 0.7 else float(rng.uniform(-2, 12))
        return _edit(data, f.quality, struct.pack(">d", q))
    if kind == "stream-count":
        k = int([0, 1, 3, 255, f.k + 1, max(0, f.k - 1)][int(rng.integers(0, 6))])
        rest = data[f.count + 1 : -4]
        return recrc(data[: f.count] + bytes([k]) + rest)
    if kind == "stream-lengths":
        lengths = list(f.lengths)
        i = int(rng.integers(0, len(lengths)))
        r = rng.random()
        if r < 0.3:  # move bytes between the streams (total unchanged: the container still parses)
            j = (i + 1) % len(lengths)
            d = int(rng.integers(-lengths[i], lengths[j] + 1))
            lengths[i] += d
            lengths[j] -= d
        elif r < 0.5:
            lengths.reverse()
        elif r < 0.75:
            lengths[i] += int(rng.integers(-3, 4))
        else:
            lengths[i] = int([0, 2**31, 2**32 - 1][int(rng.integers(0, 3))])
        lengths = [min(max(v, 0), 2**32 - 1) for v in lengths]
        return _edit(data, f.table, struct.pack(f">{len(lengths)}I", *lengths))
    if kind == "streams":  # well-formed container, garbage or damaged streams
        start = f.table + 4 * f.k
        streams, pos = [], start
        for n in f.lengths:
            streams.append(data[pos : pos + n])
            pos += n
        new = []
        for s in streams:
            r = rng.random()
            if r < 0.3:
                s = rng.bytes(int(rng.integers(0, 2 * len(s) + 8)))
            elif r < 0.5:
                s = s[: int(rng.integers(0, len(s) + 1))]
            elif r < 0.7 and s:
                b = bytearray(s)
                b[int(rng.integers(0, len(b)))] ^= 1 << int(rng.integers(0, 8))
                s = bytes(b)
            elif r < 0.8:
                s = b"\xff" * int(rng.integers(0, 3 * len(s) + 8))
            new.append(s)
        table = struct.pack(f">{len(new)}I", *map(len, new))
        return recrc(data[: f.table] + table + b"".join(new))
    if kind == "model":
        r = rng.random()
        if r < 0.4:  # another (registered or not) name
            name = [b"gained-bmshj2018-hyperprior", b"mbt2018-mean", b"x", b"\xff\xfe", b"gained-mbt2018-meaN", b"\x00"][
                int(rng.integers(0, 6))]
            return recrc(data[:6] + bytes([len(name)]) + name + data[7 + f.n : -4])
        if r < 0.7:  # name length byte
            return recrc(data[:6] + bytes([int(rng.integers(0, 256))]) + data[7:-4])
        b = bytearray(body)  # weights hash
        b[7 + f.n + int(rng.integers(0, 16))] ^= 1 << int(rng.integers(0, 8))
        return recrc(bytes(b))
    if kind == "version-flags":
        if rng.random() < 0.6:
            return _edit(data, 4, bytes([int([0, 1, 3, 255, 2][int(rng.integers(0, 5))])]))
        return _edit(data, 5, bytes([int(rng.integers(0, 256))]))
    raise ValueError(kind)


KINDS = ("truncate", "bitflip", "random-bytes", "random-file", "size", "quality", "stream-count", "stream-lengths",
         "streams", "model", "version-flags")


# --------------------------------------------------------------------------- driver


def run(args) -> dict:
    seeds = seed_files(args.checkpoint)
    rng = np.random.default_rng(args.seed)
    timeout, cap = args.timeout, int(args.rss_limit * 2**30)
    w = Worker(args.checkpoint, timeout, cap)
    counts = defaultdict(Counter)
    examples = defaultdict(list)
    slowest = (0.0, "")
    largest = defaultdict(list)  # largest decoded image (H, W) per mutation kind
    peak = 0
    start = time.perf_counter()
    for i in range(args.cases):
        kind = KINDS[i % len(KINDS)]
        data = mutate(seeds[int(rng.integers(0, len(seeds)))], kind, rng)
        if not w.alive:
            peak = max(peak, w.peak)
            w = Worker(args.checkpoint, timeout, cap)
        r = w.decode(data)
        counts[kind][r["outcome"]] += 1
        if r["outcome"] not in ("error", "image") and len(examples[r["outcome"]]) < 5:
            examples[r["outcome"]].append({"kind": kind, "detail": r.get("detail"), "bytes": data.hex()[:400]})
        if r["outcome"] == "image" and math.prod(r["size"]) > math.prod(largest[kind] or (0, 0)):
            largest[kind] = r["size"]
        if r.get("seconds", 0) > slowest[0]:
            slowest = (r["seconds"], f"{kind}: {r.get('detail', '')[:100]}")
        if args.progress and (i + 1) % 250 == 0:
            print(f"{i + 1}/{args.cases} cases, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    peak = max(peak, w.peak)
    w.close()
    total = Counter()
    for c in counts.values():
        total.update(c)
    return {
        "cases": args.cases,
        "seed": args.seed,
        "timeout_s": timeout,
        "rss_limit_gib": args.rss_limit,
        "seconds": time.perf_counter() - start,
        "peak_rss_bytes": peak,
        "slowest_case_s": slowest[0],
        "slowest_case": slowest[1],
        "totals": {k: total.get(k, 0) for k in OUTCOMES},
        "by_kind": {k: {o: counts[k].get(o, 0) for o in OUTCOMES} for k in KINDS},
        "largest_decoded": {k: largest.get(k) for k in KINDS},
        "examples": examples,
        "seed_file_bytes": [len(s) for s in seeds],
        "command": " ".join(["python", "benchmarks/fuzz.py", *sys.argv[1:]]),
        "platform": platform.platform(),
        "passed": total["crash"] == total["hang"] == total["traceback"] == total["memory"] == 0 and peak < 2 * 2**30,
    }


def markdown(res: dict) -> str:
    head = "| mutation | " + " | ".join(OUTCOMES) + " | largest image decoded |"
    lines = [head, "|" + "---|" * (len(OUTCOMES) + 2)]
    for kind, c in res["by_kind"].items():
        big = res["largest_decoded"].get(kind)
        lines.append(f"| {kind} | " + " | ".join(str(c[o]) for o in OUTCOMES) + f" | {'x'.join(map(str, big)) if big else '-'} |")
    lines.append("| **total** | " + " | ".join(f"**{res['totals'][o]}**" for o in OUTCOMES) + " | |")
    lines += [
        "",
        f"Seed files: {', '.join(map(str, res['seed_file_bytes']))} bytes. "
        f"{res['cases']} cases in {res['seconds']:.0f} s; peak worker RSS {res['peak_rss_bytes'] / 2**30:.2f} GiB "
        f"(limit {res['rss_limit_gib']} GiB); slowest case {res['slowest_case_s']:.2f} s ({res['slowest_case']}); "
        f"done-criterion (0 crashes, 0 hangs over {res['timeout_s']:g} s, 0 tracebacks, peak < 2 GiB): "
        f"{'met' if res['passed'] else 'NOT met'}",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=3000, help="number of mutated files to decode (default 3000)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the mutations (default 0)")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds after which a decode counts as a hang (default 20)")
    p.add_argument("--rss-limit", type=float, default=2.0,
                   help="GiB of worker resident memory at which a decode is killed and counted as 'memory' (default 2)")
    p.add_argument("--checkpoint", default="", help="model checkpoint (default: the shipped model)")
    p.add_argument("--json", default=str(ROOT / "results" / "benchmarks" / "fuzz.json"), help="where to write the JSON results")
    p.add_argument("--md", default=str(ROOT / "results" / "benchmarks" / "fuzz.md"), help="where to write the markdown table")
    p.add_argument("--progress", action="store_true", help="print progress to stderr every 250 cases")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.checkpoint)
        return 0
    res = run(args)
    table = markdown(res)
    print(table)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    Path(args.md).write_text(
        "# Fuzzing the .gvae decoder (issue 18)\n\n"
        "Hostile files with a valid CRC (mutations of small files coded with the shipped model), each decoded\n"
        "by `gainedvae.codec.decode` in a watched worker subprocess (see `benchmarks/fuzz.py`).\n\n"
        f"```\nOMP_NUM_THREADS=1 nice -n 10 {res['command']}\n```\n\n{table}\n"
    )
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
