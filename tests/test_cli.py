import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gainedvae
from gainedvae import cli, codec
from gainedvae.checkpoint import DEFAULT_CHECKPOINT
from gainedvae.cli import main

LAMBDAS = (0.0035, 0.013, 0.0483, 0.18)
REPO = Path(__file__).resolve().parents[1]




def _model(seed):
    torch.manual_seed(seed)
    net = gainedvae.get_model("gained-mbt2018-mean", N=16, M=16, lambdas=LAMBDAS)
    net.gain.init_from_lambdas(net.lambdas, reference=1e-4)
    net.update(force=True)
    return net


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    gainedvae.save_checkpoint(_model(0), d / "tiny.pt")
    gainedvae.save_checkpoint(_model(1), d / "other.pt")
    plain = gainedvae.get_model("mbt2018-mean", N=16, M=16)
    plain.update(force=True)
    gainedvae.save_checkpoint(plain, d / "plain.pt")
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.random((6, 8, 3)), np.ones((8, 8, 1)))[:40, :56]
    Image.fromarray((255 * smooth).astype(np.uint8)).save(d / "img.png")
    (d / "notes.txt").write_text("hello")
    return d


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, out, err, match=None):
    assert rc == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gainedvae: error: "), err
    assert "Traceback" not in err and out == ""
    if match is not None:
        assert match in lines[0], lines[0]
    return lines[0]


def test_compress_info_decompress_roundtrip(files, tmp_path, capsys):
    out = tmp_path / "a.gvae"
    rc, stdout, err = run(capsys, "compress", files / "img.png", "-o", out, "-c", files / "tiny.pt", "-q", 2.5)
    assert rc == 0 and err == "" and out.is_file()
    assert len(stdout.splitlines()) == 1 and f"{out.stat().st_size} bytes" in stdout
    assert "bpp" in stdout and "quality 2.5" in stdout

    rc, stdout, err = run(capsys, "info", out)
    net = gainedvae.load_checkpoint(files / "tiny.pt")
    assert rc == 0 and err == ""
    for text in ["gained-mbt2018-mean", net.weights_hash[:32], "56x40", "quality:     2.5", f"version {codec.FORMAT_VERSION}",
                 f"{out.stat().st_size} bytes", "flags 0x00", "streams:     2 (y="]:
        assert text in stdout, (text, stdout)

    png = tmp_path / "a.png"
    rc, stdout, err = run(capsys, "decompress", out, "-o", png, "-c", files / "tiny.pt")
    assert rc == 0 and err == "" and len(stdout.splitlines()) == 1
    expect = codec.tensor_to_image(codec.decode(net, out.read_bytes()))
    assert np.array_equal(codec.load_image(png), expect)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gvae", "a.png"]  # no temp files left


def test_default_quality_is_the_middle_and_rate_control_reports(files, tmp_path, capsys):
    rc, stdout, _ = run(capsys, "compress", files / "img.png", "-o", tmp_path / "m.gvae", "-c", files / "tiny.pt")
    assert rc == 0 and "quality 2.5" in stdout
    assert codec.read_container(tmp_path / "m.gvae").quality == 2.5

    rc, stdout, _ = run(capsys, "compress", files / "img.png", "-o", tmp_path / "b.gvae", "-c", files / "tiny.pt", "--bpp", 0.8)
    c = codec.read_container(tmp_path / "b.gvae")
    assert rc == 0 and abs(c.bpp / 0.8 - 1) <= 0.02
    assert "iterations" in stdout and "reached" in stdout and f"{c.nbytes} bytes" in stdout

    rc, stdout, _ = run(capsys, "compress", files / "img.png", "-o", tmp_path / "c.gvae", "-c", files / "tiny.pt", "--bpp", 99)
    assert rc == 0 and "clamped to quality 4" in stdout and codec.read_container(tmp_path / "c.gvae").quality == 4

    rc, stdout, _ = run(capsys, "compress", files / "img.png", "-o", tmp_path / "p.gvae", "-c", files / "tiny.pt", "--psnr", 80)
    assert rc == 0 and "dB" in stdout and "clamped" in stdout


def test_existing_output_needs_force(files, tmp_path, capsys):
    out = tmp_path / "x.gvae"
    out.write_bytes(b"precious")
    args = ["compress", files / "img.png", "-o", out, "-c", files / "tiny.pt"]
    assert_one_line_error(*run(capsys, *args), match="already exists (use --force")
    assert out.read_bytes() == b"precious"
    rc, _, _ = run(capsys, *args, "--force")
    assert rc == 0 and out.read_bytes()[:4] == b"GVAE"

    png = tmp_path / "x.png"
    png.write_bytes(b"precious")
    assert_one_line_error(*run(capsys, "decompress", out, "-o", png, "-c", files / "tiny.pt"), match="--force")
    assert png.read_bytes() == b"precious"
    assert run(capsys, "decompress", out, "-o", png, "-c", files / "tiny.pt", "-f")[0] == 0
    assert codec.load_image(png).shape == (40, 56, 3)


def _hostile(sample: bytes):
    def recrc(body):
        return body + struct.pack(">I", zlib.crc32(body))

    rng = np.random.default_rng(0)
    flipped = bytearray(sample)
    flipped[len(sample) // 2] ^= 0x10
    return {
        "truncated": (sample[: len(sample) // 2], "truncated"),
        "bit-flipped": (bytes(flipped), "CRC32"),
        "random": (rng.bytes(300), "not a gainedvae file"),
        "empty": (b"", "empty"),
        "wrong-magic": (b"RIFF" + sample[4:], "not a gainedvae file"),
        "newer-version": (recrc(sample[:4] + b"\x07" + sample[5:-4]), f"file format version 7 is newer than this gainedvae supports ({codec.FORMAT_VERSION})"),
        "crc-mismatch": (sample[:-4] + bytes(4), "CRC32 mismatch"),
    }


@pytest.fixture(scope="module")
def sample(files):
    return codec.encode(gainedvae.load_checkpoint(files / "tiny.pt"), codec.load_image(files / "img.png"), 2)


@pytest.mark.parametrize("case", ["truncated", "bit-flipped", "random", "empty", "wrong-magic", "newer-version", "crc-mismatch"])
def test_hostile_files_give_one_line_errors(files, sample, tmp_path, capsys, case):
    data, match = _hostile(sample)[case]
    bad = tmp_path / "bad.gvae"
    bad.write_bytes(data)
    out = tmp_path / "out.png"
    assert_one_line_error(*run(capsys, "decompress", bad, "-o", out, "-c", files / "tiny.pt"), match=match)
    assert not out.exists()
    assert_one_line_error(*run(capsys, "info", bad), match=match)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gvae"]


def test_other_weights_are_refused(files, sample, tmp_path, capsys):
    (tmp_path / "s.gvae").write_bytes(sample)
    line = assert_one_line_error(*run(capsys, "decompress", tmp_path / "s.gvae", "-o", tmp_path / "o.png", "-c", files / "other.pt"))
    tiny = gainedvae.load_checkpoint(files / "tiny.pt").weights_hash[:32]
    other = gainedvae.load_checkpoint(files / "other.pt").weights_hash[:32]
    assert tiny in line and other in line
    assert not (tmp_path / "o.png").exists()


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_checkpoint_is_refused(files, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "gainedvae-checkpoint", "payload": Evil(marker)}, evil)
    out = tmp_path / "o.gvae"
    assert_one_line_error(*run(capsys, "compress", files / "img.png", "-o", out, "-c", evil), match="refusing to load")
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize(
    "argv,match",
    [
        (["compress", "{d}/missing.png", "-o", "{t}/o.gvae", "-c", "{d}/tiny.pt"], "does not exist"),
        (["compress", "{d}/notes.txt", "-o", "{t}/o.gvae", "-c", "{d}/tiny.pt"], "not an image"),
        (["compress", "{d}/img.png", "-o", "{t}/o.gvae", "-c", "{d}/missing.pt"], "does not exist"),
        (["compress", "{d}/img.png", "-o", "{t}/o.gvae", "-c", "{d}/notes.txt"], "cannot read checkpoint"),
        (["compress", "{d}/img.png", "-o", "{t}/o.gvae", "-c", "{d}/plain.pt"], "single-rate"),
        (["compress", "{d}/img.png", "-o", "{t}/o.gvae", "-c", "{d}/tiny.pt", "--qmap", "{d}/img.png"], "gained-scgain"),
        (["compress", "{d}/img.png", "-o", "{t}/o.gvae", "-c", "{d}/tiny.pt", "-q", "7"], "outside the trained range"),
        (["compress", "{d}/img.png", "-o", "{t}/o.gvae", "-c", "{d}/tiny.pt", "-q", "2", "--bpp", "1"], "not allowed"),
        (["compress", "{d}/img.png", "-o", "{t}/o.gvae", "-c", "{d}/tiny.pt", "--bpp", "-1"], "positive"),
        (["compress", "{d}/img.png", "-o", "{t}/o.gvae", "-c", "{d}/tiny.pt", "-q", "abc"], "invalid float"),
        (["compress", "{d}/img.png", "-o", "{t}/o.gvae", "-c", "{d}/tiny.pt", "--refine", "-2"], "expected steps >= 0, got -2"),
        (["compress", "{d}/img.png", "-o", "{t}/o.gvae", "-c", "{d}/tiny.pt", "--refine", "x"], "expected a whole number of steps"),
        (["compress", "{d}/img.png", "-c", "{d}/tiny.pt"], "required: -o"),
        (["compress", "{d}/img.png", "-o", "{d}", "-c", "{d}/tiny.pt"], "is a directory"),
        (["decompress", "{d}/missing.gvae", "-o", "{t}/o.png", "-c", "{d}/tiny.pt"], "does not exist"),
        (["info", "{d}"], "is a directory"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_usage_and_input_errors_are_one_line(files, tmp_path, capsys, argv, match):
    argv = [a.format(d=files, t=tmp_path) for a in argv]
    assert_one_line_error(*run(capsys, *argv), match=match)
    assert list(tmp_path.iterdir()) == []


def test_refined_compress_decompresses_with_the_plain_decoder(files, tmp_path, capsys):
    out, png = tmp_path / "r.gvae", tmp_path / "r.png"
    rc, stdout, _ = run(capsys, "compress", files / "img.png", "-o", out, "-c", files / "tiny.pt", "-q", 2, "--refine", 3)
    assert rc == 0 and stdout.strip().endswith("quality 2, refined 3 steps"), stdout
    rc, _, _ = run(capsys, "decompress", out, "-o", png, "-c", files / "tiny.pt")
    net = gainedvae.load_checkpoint(files / "tiny.pt")
    assert rc == 0 and np.array_equal(np.asarray(Image.open(png)), codec.decode_image(net, out.read_bytes()))


def test_rate_control_with_refinement_on_the_command_line(files, tmp_path, capsys):
    out = tmp_path / "r.gvae"
    rc, stdout, _ = run(capsys, "compress", files / "img.png", "-o", out, "-c", files / "tiny.pt", "--bpp", 1.0, "--refine", 2)
    net = gainedvae.load_checkpoint(files / "tiny.pt")
    quality = codec.Container.from_bytes(out.read_bytes()).quality
    assert rc == 0 and "refined 2 steps" in stdout, stdout
    assert out.read_bytes() == codec.encode(net, np.asarray(Image.open(files / "img.png")), quality, refine=2)


def test_refinement_progress_bar_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    with cli._refine_bar("dir/photo.png", 3) as progress:
        for trial in range(2):  # two refined trials of rate control: the bar starts again
            for step in range(3):
                progress(step, 1.0 - step / 10)
    shown = err.getvalue()
    assert "photo.png: refining" in shown and "/3 " in shown and "loss=0.8000" in shown  # redrawn at most every 0.1 s
    with cli._refine_bar("photo.png", 0) as progress:
        assert progress is None


def test_missing_default_model_is_a_clear_error(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("gainedvae.checkpoint.DEFAULT_CHECKPOINT", tmp_path / "absent.pt")
    assert_one_line_error(*run(capsys, "compress", files / "img.png", "-o", tmp_path / "o.gvae"), match="no shipped default model")


def test_shipped_default_model_round_trips(tmp_path, capsys):
    """The shipped model (no --checkpoint): compress and decompress a real photograph."""
    from gainedvae.evaluate import default_images

    assert DEFAULT_CHECKPOINT.is_file() and DEFAULT_CHECKPOINT.stat().st_size <= 20 * 2**20
    src = tmp_path / "photo.png"
    Image.open(default_images()[0][0]).convert("RGB").crop((128, 64, 384, 256)).save(src)
    results = []
    for q in (1, 8):
        rc, out, err = run(capsys, "compress", src, "-o", tmp_path / f"q{q}.gvae", "-q", q)
        assert rc == 0, err
        rc, out, err = run(capsys, "decompress", tmp_path / f"q{q}.gvae", "-o", tmp_path / f"q{q}.png")
        assert rc == 0, err
        a = np.asarray(Image.open(src).convert("RGB"), dtype=np.float64)
        b = np.asarray(Image.open(tmp_path / f"q{q}.png"), dtype=np.float64)
        psnr = 10 * np.log10(255**2 / np.mean((a - b) ** 2))
        results.append(((tmp_path / f"q{q}.gvae").stat().st_size, psnr))
    (small, low), (large, high) = results
    assert small < large and low + 2 < high and low > 22


def test_alpha_warning_is_one_line(files, tmp_path, capsys):
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (20, 12), (10, 20, 30, 40)).save(rgba)
    rc, out, err = run(capsys, "compress", rgba, "-o", tmp_path / "o.gvae", "-c", files / "tiny.pt")
    assert rc == 0 and err.splitlines() == [f"gainedvae: warning: {rgba}: dropping the alpha channel (RGBA image coded as RGB)"]


def test_help_and_version(capsys):
    assert main(["--help"]) == 0 and "compress" in capsys.readouterr().out
    assert main(["--version"]) == 0 and gainedvae.__version__ in capsys.readouterr().out


@pytest.mark.slow
def test_subprocess_python_m_gainedvae(files, sample, tmp_path):
    """One real process (imports take seconds here): a hostile file through
    ``python -m gainedvae`` gives one error line, status 2, no traceback, no output."""
    bad = tmp_path / "bad.gvae"
    bad.write_bytes(sample[:-10])
    png = tmp_path / "o.png"
    proc = subprocess.run(
        [sys.executable, "-m", "gainedvae", "decompress", str(bad), "-o", str(png), "-c", str(files / "tiny.pt")],
        capture_output=True, text=True, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gainedvae: error: ") and "truncated" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not png.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.gvae"]


def test_cli_qmap_with_scgain(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    net = gainedvae.get_model("gained-scgain", N=16, M=16, lambdas=(0.0067, 0.025, 0.0932))
    ckpt = gainedvae.save_checkpoint(net, tmp_path / "sc.pt")
    img = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype("uint8")).save(img)
    mask = tmp_path / "mask.png"
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(mask)
    out = tmp_path / "o.gvae"
    assert main(["compress", str(img), "-o", str(out), "-c", str(ckpt), "--qmap", str(mask), "--quality", "2"]) == 0
    assert main(["info", str(out)]) == 0 and "flags 0x01" in capsys.readouterr().out
    assert main(["decompress", str(out), "-o", str(tmp_path / "o.png"), "-c", str(ckpt)]) == 0
    assert Image.open(tmp_path / "o.png").size == (56, 40)
    assert main(["compress", str(img), "-o", str(tmp_path / "p.gvae"), "-c", str(ckpt), "--qmap", "nope.png"]) == 2
    assert "--qmap nope.png" in capsys.readouterr().err


# --------------------------------------------------------------------------- issue 18


def test_max_pixels_option_on_compress_and_decompress(files, sample, tmp_path, capsys):
    src = tmp_path / "s.gvae"
    src.write_bytes(sample)  # 40x56: 4096 pixels when padded to 64
    args = ["-c", files / "tiny.pt", "--max-pixels"]
    assert_one_line_error(*run(capsys, "compress", files / "img.png", "-o", tmp_path / "o.gvae", *args, 4095),
                          match="is 40x56 pixels (4096 when padded to multiples of 64), more than max_pixels=4095")
    assert_one_line_error(*run(capsys, "decompress", src, "-o", tmp_path / "o.png", *args, 4095), match="max_pixels=4095")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.gvae"]
    assert run(capsys, "decompress", src, "-o", tmp_path / "o.png", *args, 4096)[0] == 0
    assert run(capsys, "compress", files / "img.png", "-o", tmp_path / "o.gvae", *args, 0)[0] == 0  # 0: no limit
    assert_one_line_error(*run(capsys, "decompress", src, "-o", tmp_path / "p.png", *args, -5), match="0 (no limit)")


def test_compress_refuses_a_header_claiming_a_huge_image(files, tmp_path, capsys):
    """Reported: a 185-byte PNG claiming 9000x9000 ran 22 s to 7.9 GB."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 9000, 9000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    assert_one_line_error(*run(capsys, "compress", bomb, "-o", tmp_path / "o.gvae", "-c", files / "tiny.pt"),
                          match="is 9000x9000 pixels")
    assert not (tmp_path / "o.gvae").exists()


def test_info_refuses_devices(capsys):
    """Reported: ``info /dev/zero`` grew to 5 GB, then "MemoryError:" with an empty message."""
    assert_one_line_error(*run(capsys, "info", "/dev/zero"), match="/dev/zero is not a regular file")


def test_checkpoint_directory_is_named_as_such(files, tmp_path, capsys):
    assert_one_line_error(*run(capsys, "compress", files / "img.png", "-o", tmp_path / "o.gvae", "-c", tmp_path),
                          match="is a directory, not a checkpoint file")


def test_malformed_checkpoint_is_not_an_internal_error(files, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    torch.save({"format": "gainedvae-checkpoint", "version": 1, "model": "nope", "state_dict": {}}, bad)
    line = assert_one_line_error(*run(capsys, "compress", files / "img.png", "-o", tmp_path / "o.gvae", "-c", bad),
                                 match="unknown model 'nope'")
    assert "internal error" not in line and str(bad) in line


def test_missing_output_folder_is_refused(files, tmp_path, capsys):
    out = tmp_path / "no" / "such" / "o.gvae"
    assert_one_line_error(*run(capsys, "compress", files / "img.png", "-o", out, "-c", files / "tiny.pt"),
                          match=f"folder {out.parent} does not exist")
    assert not (tmp_path / "no").exists()


def test_unwritable_output_is_named(files, tmp_path, capsys, monkeypatch):
    """Reported: the error named the temporary file, not the output."""
    import tempfile

    def refuse(prefix, suffix, dir):
        raise PermissionError(13, "Permission denied", os.path.join(dir, prefix + "x1y2" + suffix))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    out = tmp_path / "o.gvae"
    line = assert_one_line_error(*run(capsys, "compress", files / "img.png", "-o", out, "-c", files / "tiny.pt"),
                                 match=f"Permission denied: {out}")
    assert ".tmp" not in line


def test_quality_is_reported_with_all_digits(files, tmp_path, capsys):
    assert_one_line_error(*run(capsys, "compress", files / "img.png", "-o", tmp_path / "o.gvae", "-c", files / "tiny.pt",
                               "-q", "0.9999999999"), match="quality 0.9999999999 is outside")


def test_animated_gif_warns_with_frame_count(files, tmp_path, capsys):
    gif = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (16, 8), (v, v, v)) for v in (0, 100, 200, 250)]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=40)
    rc, out, err = run(capsys, "compress", gif, "-o", tmp_path / "o.gvae", "-c", files / "tiny.pt")
    assert rc == 0 and err.splitlines() == [f"gainedvae: warning: {gif}: animated image with 4 frames; only the first frame is coded"]


def test_decode_errors_name_the_input(files, sample, tmp_path, capsys):
    n = sample[6]
    body = sample[: 23 + n] + struct.pack(">II", 4096, 4096) + sample[31 + n : -4]
    bomb = tmp_path / "bomb.gvae"
    bomb.write_bytes(body + struct.pack(">I", zlib.crc32(body)))
    line = assert_one_line_error(*run(capsys, "decompress", bomb, "-o", tmp_path / "o.png", "-c", files / "tiny.pt"))
    assert line.startswith(f"gainedvae: error: {bomb}: a stream of ") and "cannot code" in line, line
    assert not (tmp_path / "o.png").exists()


# --------------------------------------------------------------------------- issue 20: many files per call, instant start


@pytest.fixture(scope="module")
def second_image(files):
    rng = np.random.default_rng(1)
    path = files / "b.jpg"
    Image.fromarray((255 * np.kron(rng.random((6, 9, 3)), np.ones((8, 8, 1)))).astype(np.uint8)).save(path, quality=95)
    return path


def _lines(text):
    return text.splitlines()


def test_batch_codes_every_file_and_isolates_errors(files, second_image, sample, tmp_path, capsys, monkeypatch):
    """One model load for the whole call; a bad file gives one error line naming it, the others
    are still coded; the summary counts both; exit status 2; nothing is written for a failed file."""
    import gainedvae.cli as cli

    loads = []
    real = cli._load_model
    monkeypatch.setattr(cli, "_load_model", lambda c: loads.append(c) or real(c))
    comp = tmp_path / "comp"
    comp.mkdir()
    inputs = [files / "img.png", files / "notes.txt", second_image, files / "missing.png"]
    rc, out, err = run(capsys, "compress", *inputs, "-o", comp, "-c", files / "tiny.pt", "-q", 3)
    assert rc == 2 and len(loads) == 1
    errors = _lines(err)
    assert len(errors) == 2 and all(e.startswith("gainedvae: error: ") for e in errors), err
    assert str(files / "notes.txt") in errors[0] and "not an image" in errors[0]
    assert str(files / "missing.png") in errors[1] and "does not exist" in errors[1]
    assert sorted(p.name for p in comp.iterdir()) == ["b.gvae", "img.gvae"]  # nothing for the failures, no temp files
    *per_file, summary = _lines(out)
    assert [line.split(":")[0] for line in per_file] == [str(comp / "img.gvae"), str(comp / "b.gvae")]
    sizes = [(comp / n).stat().st_size for n in ("img.gvae", "b.gvae")]
    bpps = [codec.read_container(comp / n).bpp for n in ("img.gvae", "b.gvae")]
    assert summary.startswith(f"4 files: 2 ok, 2 failed; {sum(sizes)} bytes, mean {sum(bpps) / 2:.4f} bpp; ")
    assert summary.endswith(" s")
    net = gainedvae.load_checkpoint(files / "tiny.pt")
    assert (comp / "img.gvae").read_bytes() == codec.encode(net, codec.load_image(files / "img.png"), 3)

    bad = tmp_path / "bad.gvae"
    bad.write_bytes(sample[:-10])
    dec = tmp_path / "dec"
    dec.mkdir()
    rc, out, err = run(capsys, "decompress", comp / "img.gvae", bad, comp / "b.gvae", "-o", dec, "-c", files / "tiny.pt")
    assert rc == 2 and len(loads) == 2
    (error,) = _lines(err)
    assert error.startswith(f"gainedvae: error: {bad}") and "truncated" in error
    assert sorted(p.name for p in dec.iterdir()) == ["b.png", "img.png"]
    expect = codec.tensor_to_image(codec.decode(net, (comp / "img.gvae").read_bytes()))
    assert np.array_equal(codec.load_image(dec / "img.png"), expect)
    assert _lines(out)[-1].startswith(f"3 files: 2 ok, 1 failed; {sum(sizes)} bytes, mean {sum(bpps) / 2:.4f} bpp; ")

    rc, out, err = run(capsys, "decompress", comp / "img.gvae", comp / "b.gvae", "-o", tmp_path, "-c", files / "tiny.pt")
    assert rc == 0 and err == "" and _lines(out)[-1].startswith("2 files: 2 ok, 0 failed; ")


def test_batch_force_and_rate_control_are_per_file(files, second_image, tmp_path, capsys):
    (tmp_path / "img.gvae").write_bytes(b"precious")
    args = ["compress", files / "img.png", second_image, "-o", tmp_path, "-c", files / "tiny.pt", "--bpp", 0.8]
    rc, out, err = run(capsys, *args)
    assert rc == 2 and (tmp_path / "img.gvae").read_bytes() == b"precious"
    (error,) = _lines(err)
    assert f"output {tmp_path / 'img.gvae'} already exists (use --force" in error
    assert codec.read_container(tmp_path / "b.gvae").nbytes > 0
    assert _lines(out)[-1].startswith("2 files: 1 ok, 1 failed; ")

    rc, out, err = run(capsys, *args, "--force")
    assert rc == 0 and err == ""
    qualities = set()
    for name in ("img.gvae", "b.gvae"):
        c = codec.read_container(tmp_path / name)
        assert abs(c.bpp / 0.8 - 1) <= 0.02  # the target, file by file
        qualities.add(c.quality)
    assert len(qualities) == 2 and sum("reached" in line for line in _lines(out)) == 2


def test_batch_refuses_clashes_and_bad_folders_before_any_work(files, second_image, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    Image.open(files / "img.png").save(other / "img.jpg")
    out = tmp_path / "out"
    out.mkdir()
    c = ["-c", files / "tiny.pt"]
    line = assert_one_line_error(*run(capsys, "compress", files / "img.png", second_image, other / "img.jpg", "-o", out, *c),
                                 match="would both be written to")
    assert str(files / "img.png") in line and str(other / "img.jpg") in line and str(out / "img.gvae") in line
    assert_one_line_error(*run(capsys, "compress", files / "img.png", files / "img.png", "-o", out, *c), match="would both")
    assert_one_line_error(*run(capsys, "compress", files / "img.png", second_image, "-o", tmp_path / "no", *c),
                          match="-o must be an existing folder")
    assert_one_line_error(*run(capsys, "decompress", "a.gvae", "b.gvae", "-o", files / "img.png", *c), match="is not a directory")
    assert_one_line_error(*run(capsys, "compress", files / "img.png", "-o", out, *c), match="end it with / to write NAME.gvae")
    assert list(out.iterdir()) == [] and not (tmp_path / "no").exists()
    assert_one_line_error(*run(capsys, "compress", files / "img.png", second_image, "-o", out, "-c", files / "plain.pt"),
                          match="single-rate")  # a model error stops the whole call
    assert list(out.iterdir()) == []

    rc, stdout, err = run(capsys, "compress", files / "img.png", "-o", f"{out}/", *c)  # a trailing /: into the folder
    assert rc == 0 and err == "" and [p.name for p in out.iterdir()] == ["img.gvae"]
    assert _lines(stdout)[-1].startswith("1 files: 1 ok, 0 failed; ")


@pytest.mark.slow
def test_help_version_and_info_do_not_import_torch(sample, tmp_path):
    """One process: ``python -m gainedvae --help`` / ``--version`` / ``info FILE`` (and the console
    script's ``gainedvae.cli.main``) leave torch, CompressAI and numpy unimported."""
    gvae = tmp_path / "s.gvae"
    gvae.write_bytes(sample)
    script = f"""
import contextlib, io, runpy, sys
codes = []
for argv, expect in ((["--help"], "usage"), (["--version"], "gainedvae 0"), (["info", {str(gvae)!r}], "56x40"),
                     (["compress", "--help"], "--bpp"), (["decompress", "--help"], "--max-pixels")):
    sys.argv = ["gainedvae", *argv]
    with contextlib.redirect_stdout(io.StringIO()) as buf:
        try:
            runpy.run_module("gainedvae", run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            codes.append(exc.code)
    assert expect in buf.getvalue(), buf.getvalue()
import gainedvae, gainedvae.cli
print(codes, [m for m in ("torch", "compressai", "numpy", "PIL") if m in sys.modules])
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[0, 0, 0, 0, 0] []", proc.stdout + proc.stderr


def test_public_api_is_imported_on_first_use():
    namespace = {}
    exec("from gainedvae import *", namespace)
    assert set(gainedvae.__all__) <= set(namespace) and set(gainedvae.__all__) <= set(dir(gainedvae))
    assert namespace["MODELS"] is gainedvae.MODELS and namespace["load_checkpoint"] is gainedvae.checkpoint.load_checkpoint
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        gainedvae.nope


def test_widen_writes_a_wider_model_and_refuses_with_one_line(files, tmp_path, capsys):
    out = tmp_path / "wide.pt"
    rc, text, _ = run(capsys, "widen", files / "tiny.pt", "-M", "24", "-o", out)
    assert rc == 0 and "M 16 -> 24" in text
    wide = gainedvae.load_checkpoint(out)
    assert wide.M == 24 and wide.lambdas == LAMBDAS
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = gainedvae.load_checkpoint(files / "tiny.pt")(x, level=3)["x_hat"]
        torch.testing.assert_close(wide(x, level=3)["x_hat"], ref, rtol=0, atol=1e-5)
    assert_one_line_error(*run(capsys, "widen", files / "tiny.pt", "-M", "24", "-o", out), match="exists")
    assert_one_line_error(*run(capsys, "widen", files / "tiny.pt", "-M", "8", "-o", tmp_path / "n.pt"),
                          match="only be widened: the model has M=16, asked for M=8")
    assert not (tmp_path / "n.pt").exists()
