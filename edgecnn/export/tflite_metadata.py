"""TFLite model metadata: what the input image is, how it is normalized, and the class labels, in the file.

The metadata is the TFLite metadata flatbuffer (``metadata_schema.fbs``, file identifier ``M001``), stored in
the model's ``metadata`` list as ``TFLITE_METADATA``, with ``labels.txt`` zipped onto the end of the file:
the layout MediaPipe Tasks (``ImageClassifier``) reads, as do the TFLite Task Library and ML Kit's custom
models, to classify with the file alone and return class names. LiteRT and TFLite Micro ignore it.

Written by field slot with the ``flatbuffers`` package (a TensorFlow and LiteRT dependency): the writers in
``tflite-support`` (protobuf<4) and MediaPipe (absl-py~=2.3, and a wheel without its C extension) cannot be
installed beside TensorFlow 2.21 and tfmot.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np

from edgecnn.errors import EdgeCNNError

NAME = "TFLITE_METADATA"
IDENTIFIER = b"M001"
LABELS_FILE = "labels.txt"
MIN_PARSER_VERSION = "1.0.0"  # every field written here is in the first metadata schema version

# Enum and union values from metadata_schema.fbs.
TENSOR_AXIS_LABELS = 2
RGB, GRAYSCALE = 1, 2
FEATURE_PROPERTIES, IMAGE_PROPERTIES = 1, 2  # ContentProperties
NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions


def _table(b, fields: list[tuple[int, str, object]]) -> int:
    """One table from (slot, kind, value); kind: 'offset' or 'byte'. Children must be built already."""
    b.StartObject(max((s for s, _, _ in fields), default=-1) + 1)
    for slot, kind, value in fields:
        if value is None:
            continue
        if kind == "byte":
            b.PrependInt8Slot(slot, value, 0)
        else:
            b.PrependUOffsetTRelativeSlot(slot, value, 0)
    return b.EndObject()


def _offsets(b, items: list[int]) -> int:
    b.StartVector(4, len(items), 4)
    for off in reversed(items):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def _floats(b, values) -> int:
    b.StartVector(4, len(values), 4)
    for v in reversed(values):
        b.PrependFloat32(float(v))
    return b.EndVector()


def build(labels: dict, variant: str, input_dtype: str, version: str) -> bytes:
    """The metadata flatbuffer for an image classifier with ``labels`` (edgecnn's labels.json)."""
    import flatbuffers

    h, w, c = labels["input_shape"]
    names = labels["class_names"]
    b = flatbuffers.Builder(1024)
    s = b.CreateString

    # Input: an RGB (or grayscale) image; the model divides by 255 itself, so pixels go in as they are.
    pixels = "pixels minus 128 as int8" if input_dtype == "int8" else f"pixels 0..255 as {input_dtype}"
    in_name, in_desc = s("image"), s(f"{'RGB' if c == 3 else 'grayscale'} image, {h}x{w}, {pixels} (the model "
                                     "scales them itself)")
    image = _table(b, [(0, "byte", RGB if c == 3 else GRAYSCALE)])
    in_content = _table(b, [(0, "byte", IMAGE_PROPERTIES), (1, "offset", image)])
    norm = _table(b, [(0, "offset", _floats(b, [0.0])), (1, "offset", _floats(b, [1.0]))])  # mean, std
    unit = _table(b, [(0, "byte", NORMALIZATION_OPTIONS), (1, "offset", norm)])
    in_units = _offsets(b, [unit])
    in_stats = _table(b, [(0, "offset", _floats(b, [255.0])), (1, "offset", _floats(b, [0.0]))])  # max, min
    tensor_in = _table(b, [(0, "offset", in_name), (1, "offset", in_desc), (3, "offset", in_content),
                           (4, "offset", in_units), (5, "offset", in_stats)])

    # Output: one probability per class, labelled by labels.txt (one name per line, in class order).
    label_file = _table(b, [(0, "offset", s(LABELS_FILE)), (1, "offset", s("class names, one per line, in the "
                                                                           "order of the output")),
                            (2, "byte", TENSOR_AXIS_LABELS)])
    out_name, out_desc = s("probability"), s(f"probabilities of the {len(names)} classes (softmax)")
    feature = _table(b, [])
    out_content = _table(b, [(0, "byte", FEATURE_PROPERTIES), (1, "offset", feature)])
    out_stats = _table(b, [(0, "offset", _floats(b, [1.0])), (1, "offset", _floats(b, [0.0]))])
    out_files = _offsets(b, [label_file])
    tensor_out = _table(b, [(0, "offset", out_name), (1, "offset", out_desc), (3, "offset", out_content),
                            (5, "offset", out_stats), (6, "offset", out_files)])

    inputs, outputs = _offsets(b, [tensor_in]), _offsets(b, [tensor_out])
    subgraph = _table(b, [(0, "offset", s("image_classifier")), (2, "offset", inputs), (3, "offset", outputs)])
    subgraphs = _offsets(b, [subgraph])
    model = _table(b, [(0, "offset", s("edgecnn image classifier")),
                       (1, "offset", s(f"{len(names)}-class image classifier, {variant} ({h}x{w}x{c} input)")),
                       (2, "offset", s(version)), (3, "offset", subgraphs), (4, "offset", s("edgecnn")),
                       (7, "offset", s(MIN_PARSER_VERSION))])
    b.Finish(model, file_identifier=IDENTIFIER)
    return bytes(b.Output())


def populate(model: bytes, labels: dict, variant: str) -> bytes:
    """``model`` (TFLite bytes) with the metadata of :func:`build` and labels.txt zipped onto its end."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    from edgecnn import __version__

    broken = [n for n in labels["class_names"] if "\n" in n or "\r" in n]
    if broken:  # labels.txt holds one name per line: this one would shift every label after it
        raise EdgeCNNError(f"class name {broken[0]!r} has a line break, which labels.txt cannot hold: rename its "
                           "folder, or export with --no-metadata")
    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    if any(m.name.decode() == NAME for m in obj.metadata or []):
        raise EdgeCNNError(f"the TFLite model already has {NAME}")
    it = obj.subgraphs[0].tensors[obj.subgraphs[0].inputs[0]]
    dtype = {schema.TensorType.UINT8: "uint8", schema.TensorType.INT8: "int8"}.get(it.type, "float32")
    buf = schema.BufferT()
    buf.data = np.frombuffer(build(labels, variant, dtype, __version__), np.uint8)
    obj.buffers.append(buf)
    entry = schema.MetadataT()
    entry.name, entry.buffer = NAME.encode(), len(obj.buffers) - 1
    obj.metadata = [*(obj.metadata or []), entry]
    out = io.BytesIO(bytes(flatbuffer_utils.convert_object_to_bytearray(obj)))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as z:  # appended after the flatbuffer
        z.writestr(LABELS_FILE, "\n".join(labels["class_names"]) + "\n")
    return out.getvalue()


class _Table:
    """Read access to a flatbuffer table by field slot (the inverse of :func:`_table`)."""

    def __init__(self, buf: bytes, pos: int):
        from flatbuffers.table import Table

        self.t = Table(bytearray(buf), pos)

    def _at(self, slot: int) -> int:
        return self.t.Offset(4 + 2 * slot)

    def string(self, slot: int) -> str | None:
        o = self._at(slot)
        return self.t.String(o + self.t.Pos).decode() if o else None

    def byte(self, slot: int) -> int:
        from flatbuffers import number_types as nt

        o = self._at(slot)
        return self.t.Get(nt.Int8Flags, o + self.t.Pos) if o else 0

    def table(self, slot: int) -> "_Table | None":
        o = self._at(slot)
        return _Table(self.t.Bytes, self.t.Indirect(o + self.t.Pos)) if o else None

    def tables(self, slot: int) -> list["_Table"]:
        o = self._at(slot)
        if not o:
            return []
        start = self.t.Vector(o)
        return [_Table(self.t.Bytes, self.t.Indirect(start + 4 * i)) for i in range(self.t.VectorLen(o))]

    def floats(self, slot: int) -> list[float]:
        from flatbuffers import number_types as nt

        o = self._at(slot)
        return [float(v) for v in self.t.GetVectorAsNumpy(nt.Float32Flags, o)] if o else []


def read(model: bytes) -> dict | None:
    """The metadata of a TFLite file (None without any): name, version, input normalization and color space,
    the labels file's name and the labels zipped into the file."""
    from ai_edge_litert import schema_py_generated as schema

    m = schema.Model.GetRootAs(model, 0)
    blob = None
    for i in range(m.MetadataLength()):
        if m.Metadata(i).Name() == NAME.encode():
            blob = m.Buffers(m.Metadata(i).Buffer()).DataAsNumpy().tobytes()
    if blob is None:
        return None
    if blob[4:8] != IDENTIFIER:
        raise EdgeCNNError(f"{NAME} is not a TFLite metadata flatbuffer")
    import flatbuffers

    root = _Table(blob, flatbuffers.encode.Get(flatbuffers.packer.uoffset, blob, 0))
    info = {"name": root.string(0), "description": root.string(1), "version": root.string(2),
            "author": root.string(4), "min_parser_version": root.string(7)}
    sub = (root.tables(3) or [None])[0]
    if sub is not None:
        tin, tout = (sub.tables(2) or [None])[0], (sub.tables(3) or [None])[0]
        if tin is not None:
            content = tin.table(3)
            image = content.table(1) if content and content.byte(0) == IMAGE_PROPERTIES else None
            info["color_space"] = {RGB: "RGB", GRAYSCALE: "GRAYSCALE"}.get(image.byte(0) if image else 0)
            for unit in tin.tables(4):
                if unit.byte(0) == NORMALIZATION_OPTIONS:
                    norm = unit.table(1)
                    info["normalization"] = {"mean": norm.floats(0), "std": norm.floats(1)}
        if tout is not None:
            info["label_files"] = [f.string(0) for f in tout.tables(6) if f.byte(2) == TENSOR_AXIS_LABELS]
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as z:
            info["files"] = z.namelist()
            if LABELS_FILE in info["files"]:
                info["labels"] = z.read(LABELS_FILE).decode().splitlines()
    except zipfile.BadZipFile:
        info["files"] = []
    return info
