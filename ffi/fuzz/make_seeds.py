#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs (small, valid examples of each format) into
corpus/<target>/seed-*. The fuzzers grow the corpus from them; see FUZZING.md.
Standard library only (PNG written by hand), plus Pillow for the JPEG seeds when it is
installed."""
import json, os, struct, zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# ---- descriptors: selector byte (low 3 bits: which create call; bit 7: keep the
# input's struct_size), then the descriptor's bytes as a C caller lays them out.
def conv(n, h, w, ci, co, gs, k, s, p):
    fields = [n, h, w, ci, co, gs, k, k, s, s, 1, 1, p, p, p, p]
    return struct.pack("<Q16qII", 144, *fields, 0, 0)


def norm(n, h, w, c, groups, kind, act=0, affine=1, grouping=0):
    return struct.pack("<Q5qfIIIII", 72, n, h, w, c, groups, 0.0, kind, grouping, act, affine, 0)


def proxy(c, k=0, variant=0, act=3):
    return struct.pack("<QqqfIII", 40, c, k, 0.0, variant, act, 0)


for i, d in enumerate([conv(2, 9, 9, 32, 32, 1, 3, 2, 1), conv(1, 8, 8, 32, 32, 16, 3, 1, 1),
                       conv(2, 4, 4, 16, 24, 16, 1, 1, 0), conv(1, 17, 17, 3, 8, 3, 3, 2, 1)]):
    put("descriptors", f"conv{i}", b"\x00" + d)
for i, d in enumerate([norm(2, 3, 4, 8, 0, 0), norm(2, 3, 4, 8, 2, 1, 3),
                       norm(2, 3, 4, 8, 4, 1, 1, 0, 1), norm(1, 5, 5, 16, 1, 2, 3, 0)]):
    put("descriptors", f"norm{i}", b"\x01" + d)
put("descriptors", "proxy0", b"\x02" + struct.pack("<Q", 24) + proxy(8, 16, 1))
put("descriptors", "proxy1", b"\x02" + struct.pack("<Q", 8 * 1000) + proxy(8))
fused = norm(2, 3, 4, 8, 1, 2, 0, 1)
put("descriptors", "fused0", b"\x03" + fused.ljust(128, b"\0") + proxy(8, 16, 2))
put("descriptors", "fused1", b"\x83" + norm(1, 2, 2, 16, 4, 1).ljust(128, b"\0") + proxy(16))
put("descriptors", "nhwc0", b"\x04" + struct.pack("<Q4q", 40, 2, 7, 7, 32))
put("descriptors", "loss0", b"\x05" + struct.pack("<QQ", 16, 1000))


# ---- npy: version 1 headers, the dtypes the reader takes.
def npy(descr, shape, body, version=1):
    dims = ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "")
    header = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (descr, dims)
    pre = 6 + 2 + (2 if version == 1 else 4)
    header += " " * ((64 - (pre + len(header) + 1) % 64) % 64) + "\n"
    size = struct.pack("<H", len(header)) if version == 1 else struct.pack("<I", len(header))
    return b"\x93NUMPY" + bytes([version, 0]) + size + header.encode() + body


put("npy", "f4", npy("<f4", [2, 3], struct.pack("<6f", *range(6))))
put("npy", "f8", npy("<f8", [3], struct.pack("<3d", 0.5, -1, 2)))
put("npy", "i8", npy("<i8", [4], struct.pack("<4q", 0, 7, 2, 1)))
put("npy", "i4", npy("<i4", [1, 2, 1], struct.pack("<2i", 3, -4), version=2))
put("npy", "scalar", npy("<f4", [], struct.pack("<f", 1.5)))
put("npy", "images", npy("<f4", [1, 3, 2, 2], struct.pack("<12f", *[i / 12 for i in range(12)])))


# ---- safetensors: an 8-byte header length, the JSON header, the data.
def safetensors(tensors, metadata=None):
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data


put("safetensors", "timm", safetensors({
    "classifier.bias": ("F32", [3], struct.pack("<3f", 0.1, 0.2, 0.3)),
    "classifier.weight": ("F16", [3, 2], b"\x00\x3c" * 6),
    "bn1.num_batches_tracked": ("I64", [], struct.pack("<q", 5)),
}))
put("safetensors", "checkpoint", safetensors({
    "model.classifier.bias": ("F32", [2], struct.pack("<2f", 1, 2)),
    "opt.step": ("F64", [1], struct.pack("<d", 3)),
}, {"format": "effnet-checkpoint", "cfg.arch": "tiny_g16_lnpn"}))
put("safetensors", "bf16", safetensors({"x": ("BF16", [2, 2], b"\x80\x3f" * 4)}))


# ---- image: a PNG written here (RGB and grey+alpha), JPEGs by ImageMagick.
def png(w, h, color_type, channels, bit_depth=8):
    rows = b"".join(b"\0" + bytes((x * 37 + y * 11 + c * 5) % 256 for x in range(w)
                                  for c in range(channels)) for y in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


put("image", "rgb.png", png(7, 5, 2, 3))
put("image", "ga.png", png(3, 4, 4, 2))
put("image", "grey.png", png(9, 2, 0, 1))
try:  # JPEG seeds with Pillow, when it is installed (pip install pillow)
    import io
    from PIL import Image

    for name, mode, size, kw in [("rgb.jpg", "RGB", (8, 6), {}),
                                 ("grey.jpg", "L", (5, 9), {}),
                                 ("progressive.jpg", "RGB", (16, 16), {"progressive": True}),
                                 ("cmyk.jpg", "CMYK", (4, 4), {})]:
        img = Image.new(mode, size)
        img.putdata([tuple((x * 41 + y * 13 + c * 70) % 256 for c in range(len(mode)))
                     if len(mode) > 1 else (x * 41 + y * 13) % 256
                     for y in range(size[1]) for x in range(size[0])])
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=50, **kw)
        put("image", name, buf.getvalue())
except ImportError:
    pass
