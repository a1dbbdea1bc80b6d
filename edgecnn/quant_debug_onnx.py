"""Per-layer error of an int8 ONNX file (Q/DQ), the file itself: ``edgecnn quant-debug --format onnx``.

ONNX Runtime's CPU kernels fuse DequantizeLinear -> op -> QuantizeLinear into one integer kernel. With its graph
optimizations off, the file runs as written instead: each op in float32 on its inputs' dequantized int8 values,
then its QuantizeLinear. That makes both halves of a layer's error visible:

- its own error: the QuantizeLinear's output (dequantized) against the same op on the same dequantized inputs
  with the float32 weights of the run's model (added to the graph beside it), as the TFLite table measures;
- drift: the same tensor against the float32 model (the run's model converted as ``edgecnn export`` converts
  it) on the same image, the error piled up to there.

Float weights are found by the names tf2onnx and ONNX Runtime's quantizer give them, float tensors also by the
float op reading the same weights or by the Keras layer a name holds. A QAT file's weights have no float original
(BatchNorm is folded into them): its rows use the file's own int8 weights. A last check runs the file in ONNX
Runtime's integer kernels and compares its outputs. Float trials score the file with one layer's ops on their
float32 weights (trial_model).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from edgecnn import runs
from edgecnn.errors import EdgeCNNError, first_line
from edgecnn.quant_debug import ROUNDING, accumulate, label, layer_names, lowest, summarize, trials_note

RESULT_FILE = "quant_debug_onnx.json"
FILE = "model_int8.onnx"
REF = "_edgecnn_float"  # suffix of the float-weight copies added to the debug graph
NUMBERED = re.compile(r"__\d+(:\d+)?$")  # tf2onnx's numbered names ('Conv__42:0'): its counter runs on
# ONNX Runtime's optimizer quantizes the float32 weights of an op between DequantizeLinear and QuantizeLinear
# itself (its WeightBiasQuantization transformer): a float trial turns it off to keep that layer's weights float.
KEEP_FLOAT_WEIGHTS = ["WeightBiasQuantization"]
# Ops that move, copy or select values (and the shape arithmetic beside them: a flip's ReverseSequence), computing
# none: a tensor made by them alone from inputs on its own grid has no error of its own.
MOVE_OPS = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Concat", "ReverseSequence",
            "Gather", "Slice", "Expand", "Tile", "Shape")


def debug_model(proto, ref_proto, known=()) -> tuple[object, list[dict]]:
    """The int8 file ``proto`` with every quantized activation, its float32 input and a float32-weights copy of
    the ops between them as outputs; one row per quantized activation, in graph order.

    ``ref_proto``: the float32 ONNX model of the same network, for the float weights and the drift tensors, found
    by name, or by the Keras layer (``known``) a tensor's name holds (a QAT file's 'core/quant_relu3/Relu:0' is the
    float model's 'core_1/relu3_1/Relu:0': the last float tensor of that layer)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    debug = onnx.ModelProto()
    debug.CopyFrom(proto)
    graph = debug.graph
    inits = {t.name: t for t in graph.initializer}
    ref_inits = {t.name: t for t in ref_proto.graph.initializer}
    ref_producer = {o: n for n in ref_proto.graph.node for o in n.output}
    ref_consumers = {}
    for n in ref_proto.graph.node:
        for i in n.input:
            ref_consumers.setdefault(i, []).append(n)
    by_layer = {}
    for o in ref_producer:  # graph order: the last tensor of each layer wins
        by_layer[label(o, list(known))] = o
    producer = {o: n for n in graph.node for o in n.output}
    position = {id(n): i for i, n in enumerate(graph.node)}
    inputs = {i.name for i in graph.input}

    def const(name):
        return numpy_helper.to_array(inits[name]) if name in inits else None

    def weight_source(dq):  # the initializer a constant DequantizeLinear reads, directly or through a Quantize
        src = dq.input[0]
        if src in inits:
            return src, inits[src]
        q = producer.get(src)
        if q is not None and q.op_type == "QuantizeLinear" and q.input[0] in inits:
            return q.input[0], inits[q.input[0]]
        return None, None

    const_dq = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear" and weight_source(n)[0]}
    added, new_nodes, memo = [], [], {}

    def float_names(t: str) -> tuple[str, ...]:
        """Names the float32 original of the constant ``t`` (a DequantizeLinear output) may have."""
        return t, t.removesuffix("_DequantizeLinear_Output"), weight_source(const_dq[t])[0].removesuffix("_quantized")

    def float_weight(t: str) -> str:
        """A float32 original of the constant ``t`` (a DequantizeLinear output), or ``t`` when none is found."""
        name, stored = weight_source(const_dq[t])
        if stored.data_type == TensorProto.FLOAT:  # a float initializer quantized as the model loads
            return name
        for cand in float_names(t):
            w = ref_inits.get(cand)
            if w is not None and w.data_type == TensorProto.FLOAT and list(w.dims) == list(stored.dims):
                tensor = onnx.TensorProto()
                tensor.CopyFrom(w)
                tensor.name = t + REF
                added.append(tensor)
                return tensor.name
        return t

    def float_tensor(x: str, island: list) -> str | None:
        """The float32 model's tensor that ``x`` quantizes: the same name, unless tf2onnx numbered it (its
        counter runs on through a process); else the output of the float op reading the same weights, followed
        through the rest of the island's ops; else the last tensor of the Keras layer its name holds."""
        plain = x.removesuffix("_QuantizeLinear_Input")
        if plain in ref_producer and not NUMBERED.search(plain):
            return plain
        for k, node in enumerate(island):
            for c in (i for i in node.input if i in const_dq):
                op = next((ref_consumers[n][0] for n in float_names(c) if len(ref_consumers.get(n, ())) == 1), None)
                if op is None or op.op_type != node.op_type:
                    continue
                t = op.output[0]
                for after in island[k + 1:]:
                    nxt = [n for n in ref_consumers.get(t, ()) if n.op_type == after.op_type]
                    if len(nxt) != 1:
                        return None
                    t = nxt[0].output[0]
                return t
        layer = label(plain, list(known))
        if layer in known:
            return by_layer.get(layer)
        return plain if plain in ref_producer else None

    def reference(t: str) -> str:
        """A tensor equal to ``t`` but computed with float32 weights: ``t`` itself where no int8 weight lies
        between it and the dequantized activations."""
        if t in memo:
            return memo[t]
        if t in const_dq:
            memo[t] = float_weight(t)
            return memo[t]
        p = producer.get(t)
        if p is None or p.op_type in ("DequantizeLinear", "QuantizeLinear"):
            memo[t] = t
            return t
        ins = [reference(i) if i else i for i in p.input]
        if ins == list(p.input):
            memo.update({o: o for o in p.output})
        else:
            clone = onnx.NodeProto()
            clone.CopyFrom(p)
            clone.name = (p.name or p.output[0]) + REF
            clone.input[:] = ins
            clone.output[:] = [o + REF if o else o for o in p.output]
            new_nodes.append(clone)
            memo.update({o: o + REF for o in p.output})
        return memo[t]

    rows, seen = [], set()
    for q in list(graph.node):
        if q.op_type != "QuantizeLinear" or q.input[0] in inits or q.input[0] in seen:
            continue
        x = q.input[0]
        p = producer.get(x)
        dq = next((n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0]), None)
        scale = const(q.input[1])
        zp_tensor = inits.get(q.input[2]) if len(q.input) > 2 and q.input[2] else None
        if (p is None and x not in inputs) or dq is None or scale is None or scale.size != 1 or (
                len(q.input) > 2 and q.input[2] and zp_tensor is None):
            continue  # not an activation quantized per tensor by constants
        zp = int(numpy_helper.to_array(zp_tensor).reshape(-1)[0]) if zp_tensor is not None else 0
        signed = zp_tensor is not None and zp_tensor.data_type == TensorProto.INT8
        if p is not None and p.op_type in MOVE_OPS:
            island = _island(x, producer, const_dq)
            sources = [producer[i] for n in island for i in n.input
                       if i in producer and producer[i].op_type == "DequantizeLinear" and i not in const_dq]
            if sources and all(n.op_type in MOVE_OPS for n in island) and all(
                    list(d.input[1:]) == list(q.input[1:]) or (np.array_equal(const(d.input[1]), scale) and (
                        len(d.input) < 3 or np.array_equal(const(d.input[2]), const(q.input[2]))))
                    for d in sources):
                continue  # values moved on the same grid: no error to measure
        seen.add(x)
        row = {"dq": dq.output[0], "scale": float(scale.reshape(-1)[0]), "zero_point": zp,
               "qmin": -128 if signed else 0, "qmax": 127 if signed else 255}
        if p is None:  # the model's input: pixels quantized on their calibrated grid
            ident = helper.make_node("Identity", [x], [x + REF], name=x + REF)
            new_nodes.append(ident)
            rows.append(row | {"x": ident.output[0], "ref": ident.output[0], "op": "input", "names": ["input"],
                               "float_weights": True, "drift": ref_proto.graph.input[0].name})
            continue
        ref = reference(x)
        island = sorted(_island(x, producer, const_dq), key=lambda n: position[id(n)])
        constants = [i for n in island for i in n.input if i in const_dq]
        names = [x] + constants
        drift = float_tensor(x, island)
        act = ref_producer.get(drift)
        if act is not None and act.op_type in ("Relu", "Clip") and p.op_type != act.op_type:
            # The quantizer folded the float model's ReLU into this tensor's range (its QuantizeLinear clips at
            # the zero point): the reference applies it.
            node = helper.make_node(act.op_type, [ref] + [_copy_const(i, ref_inits, added) for i in act.input[1:]],
                                    [x + REF + "_" + act.op_type], name=x + REF + "_" + act.op_type)
            node.attribute.extend(act.attribute)
            new_nodes.append(node)
            ref = node.output[0]
            names.append(act.input[0])  # the float op it follows names the layer too ('add13' of add13+relu14)
        rows.append(row | {"x": x, "ref": ref, "op": "+".join(n.op_type for n in island), "names": names,
                           "float_weights": not constants or memo.get(x) != x, "drift": drift})
    graph.initializer.extend(added)
    graph.node.extend(new_nodes)  # after every original node, each after what it reads: still in order
    have = {o.name for o in graph.output}
    for name in dict.fromkeys(n for r in rows for n in (r["x"], r["dq"], r["ref"])):
        if name not in have:
            graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return debug, rows


def _copy_const(name: str, inits: dict, added: list) -> str:
    """``name`` (an optional input, or a constant of the float model) made available in the debug graph."""
    import onnx

    if not name or name not in inits:
        return name
    tensor = onnx.TensorProto()
    tensor.CopyFrom(inits[name])
    tensor.name = name + REF
    if all(t.name != tensor.name for t in added):
        added.append(tensor)
    return tensor.name


def _island(x: str, producer: dict, const_dq: dict) -> list:
    """The nodes computing ``x`` from dequantized activations and constants (the op of a layer, and a ReLU kept
    apart from it)."""
    out, todo, done = [], [x], set()
    while todo:
        t = todo.pop()
        p = producer.get(t)
        if t in done or p is None or p.op_type in ("DequantizeLinear", "QuantizeLinear") or t in const_dq:
            continue
        done.add(t)
        out.append(p)
        todo += [i for i in p.input if i]
    return out


def _with_outputs(proto, names: list[str]):
    import onnx
    from onnx import TensorProto, helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    have = {o.name for o in out.graph.output}
    out.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in have)
    return out


def _session(proto, optimized: bool, disabled: list[str] = ()):
    import onnxruntime as ort

    from edgecnn.runners.onnx import session_options

    opts = session_options()
    if not optimized:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(proto.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=list(disabled))
    except Exception as exc:
        raise EdgeCNNError(f"ONNX Runtime cannot load the debug model ({first_line(exc, 200)})") from None


def layer_errors(proto, ref_proto, debug, rows: list[dict], images: np.ndarray, known=()) -> tuple[list[dict], dict]:
    """Rows of the int8 ONNX ``proto`` on ``images`` (uint8, N x H x W x C) against the float32 ``ref_proto``
    (``debug`` and ``rows``: debug_model's), and how closely the file run as written matched ONNX Runtime's
    integer kernels."""
    if not rows:
        raise EdgeCNNError("the ONNX file holds no quantized activation to compare (no QuantizeLinear nodes)")
    inp = proto.graph.input[0]
    out_name = proto.graph.output[0].name
    ref_input = ref_proto.graph.input[0].name
    drift_names = sorted({r["drift"] for r in rows if r["drift"] and r["drift"] != ref_input})
    ref_sess = _session(_with_outputs(ref_proto, drift_names), optimized=True) if drift_names else None
    dbg_sess, real_sess = _session(debug, optimized=False), _session(proto, optimized=True)
    names = [o.name for o in debug.graph.output]
    acc = [{"n": 0, "f2": 0.0, "e": 0.0, "e2": 0.0, "max": 0.0, "clipped": 0} for _ in rows]
    agree, max_dp, count = 0, 0.0, 0
    for x, _, n in batches(proto, images):
        feed_q = {inp.name: x}
        got = dict(zip(names, dbg_sess.run(names, feed_q)))
        real = real_sess.run([out_name], feed_q)[0][:n]
        floats = {ref_input: x.astype(np.float32)}
        if ref_sess:
            floats.update(zip(drift_names, ref_sess.run(drift_names, {ref_input: x.astype(np.float32)})))
        mine = got[out_name][:n]
        agree += int((mine.argmax(-1) == real.argmax(-1)).sum())
        max_dp, count = max(max_dp, float(np.abs(mine - real).max())), count + n
        for r, a in zip(rows, acc):
            ref = got[r["ref"]][:n].astype(np.float64).ravel()
            q = got[r["dq"]][:n].astype(np.float64).ravel()
            f = floats[r["drift"]][:n].astype(np.float64).ravel() if r["drift"] else None
            if f is not None and f.size != q.size:  # the float model's tensor of that name holds something else
                r["drift"] = f = None
            accumulate(a, q, ref, r["scale"], r["zero_point"], r["qmin"], r["qmax"], f)
            r["shape"] = list(got[r["dq"]].shape[1:])
    out = []
    for r, a in zip(rows, acc):
        row = summarize({**a, "name": ";".join(r["names"]), "float_name": r["ref"], "op": r["op"],
                        "shape": r["shape"], "scale": r["scale"], "zero_point": r["zero_point"],
                        "drift": r["drift"]}, known)
        row["float_weights"] = r["float_weights"]
        out.append(row)
    return out, {"images": count, "top1_agreement": agree / count, "max_abs_dp": max_dp}


def batches(proto, images: np.ndarray):
    """``images`` (uint8, N x H x W x C) as ``proto``'s input takes them, one batch at a time: (input, start, count),
    in its layout and dtype, a fixed batch size padded with zeros."""
    from edgecnn.export.onnx import input_layout

    inp = proto.graph.input[0].type.tensor_type
    fixed = inp.shape.dim[0].dim_value
    batch = fixed if fixed > 0 else 64
    nchw = input_layout(proto, images.shape[1:]) == "NCHW"
    for i in range(0, len(images), batch):
        x = images[i:i + batch]
        n = len(x)
        if n < batch and fixed > 0:
            x = np.concatenate([x, np.zeros((batch - n, *x.shape[1:]), x.dtype)])
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if nchw else x
        yield (x if inp.elem_type == 2 else x.astype(np.float32)), i, n  # 2: TensorProto.UINT8


def trial_model(debug, proto, layer: dict):
    """The int8 file with ``layer`` (a row of layer_errors) computed by the float32-weight copy of its ops in
    ``debug`` (debug_model's graph), then quantized for the next layer as before, as TFLite's selective
    quantization leaves a layer in float32 between int8 ones."""
    import onnx

    x, ref = layer["tensor"].split(";")[0], layer["float_tensor"]
    model = onnx.ModelProto()
    model.CopyFrom(debug)
    graph = model.graph
    for n in graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] == x:
            n.input[0] = ref
    del graph.output[:]
    graph.output.extend(proto.graph.output)
    _prune(graph)
    return model


def _prune(graph) -> None:
    """Keep the nodes the graph's outputs need, each after what it reads, and the initializers they read."""
    producer = {o: n for n in graph.node for o in n.output if o}
    order, done = [], set()
    stack = [(producer[o.name], False) for o in graph.output if o.name in producer]
    while stack:
        node, expanded = stack.pop()
        if id(node) in done:
            continue
        if expanded:
            done.add(id(node))
            order.append(node)
            continue
        stack.append((node, True))
        stack += [(producer[i], False) for i in node.input if i in producer and id(producer[i]) not in done]
    read = {i for n in order for i in n.input}
    for field, keep in ((graph.node, order), (graph.initializer, [t for t in graph.initializer if t.name in read])):
        copies = [type(m)() for m in keep]  # copied out before the field is cleared under them
        for c, m in zip(copies, keep):
            c.CopyFrom(m)
        del field[:]
        field.extend(copies)


def float_trials(proto, ref_proto, debug, layers: list[dict], images: np.ndarray, labels: np.ndarray) -> dict:
    """Test accuracy on ``images`` of the float32 model, of the int8 file, and of the file with each of ``layers``
    (rows of layer_errors) alone left out of quantization (trial_model on debug_model's ``debug``): whether
    keeping that layer in float would win accuracy back. A layer without float32 weights (a QAT file's) has
    nothing to try."""

    def accuracy(model, disabled=()) -> float:
        session = _session(model, optimized=True, disabled=disabled)
        name = model.graph.input[0].name
        right = 0
        for x, i, n in batches(model, images):
            right += int((session.run(None, {name: x})[0][:n].argmax(-1) == labels[i:i + n]).sum())
        return right / len(images)

    return {"images": int(len(images)), "float_accuracy": accuracy(ref_proto), "int8_accuracy": accuracy(proto),
            "layers": [{"layer": r["layer"], "accuracy": accuracy(trial_model(debug, proto, r), KEEP_FLOAT_WEIGHTS)
                        if r["float_weights"] and r["float_tensor"] != r["tensor"].split(";")[0] else None}
                       for r in layers]}


def float_reference(core, proto, input_shape, tta: bool = False):
    """The run's model as float32 ONNX, converted as ``edgecnn export`` converts it for ``proto``'s layout and
    opset (so its tensors carry the names of the int8 file's)."""
    from edgecnn import model as model_mod
    from edgecnn.export import onnx as onx

    deploy = model_mod.fold_pooled_batchnorm(core)
    if tta:
        deploy = model_mod.with_flip_tta(deploy)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), onx.DEFAULT_OPSET)
    layout = onx.input_layout(proto, input_shape).lower()
    return onx.convert_float(deploy, min(max(opset, 9), 21), layout, None)


def quant_debug_onnx(run: str | None, runs_dir: str = runs.DEFAULT_RUNS_DIR, data: str | None = None,
                     samples: int = 256, trials: int = 0) -> dict:
    """Per-layer error of ``RUN/exports/model_int8.onnx``; writes ``RUN/quant_debug_onnx.json`` and returns it.
    ``trials``: also score the file with each of the ``trials`` lowest-SQNR layers left in float32
    (float_trials)."""
    import onnx

    from edgecnn import model as model_mod
    from edgecnn.export import load_data, source
    from edgecnn.fsutil import sha256, write_json
    from edgecnn.runners.onnx import check_external_data

    if samples < 1:
        raise EdgeCNNError(f"--samples must be at least 1, got {samples}")
    if trials < 0:
        raise EdgeCNNError(f"--float-trials must be 0 or more, got {trials}")
    base, model_path, _ = source(run, runs_dir)
    path = base / "exports" / FILE
    if not path.is_file():
        raise EdgeCNNError(f"{path} does not exist: run `edgecnn export {base.name} --format onnx` first")
    check_external_data(path)
    proto = onnx.load(str(path))
    core = model_mod.load_keras(model_path)
    ds = load_data(base, data, labelled=trials > 0)  # trials score accuracy: classes matched to the model's
    if tuple(ds.input_shape) != tuple(core.input_shape[1:]):
        raise EdgeCNNError(f"data images are {ds.input_shape} but the model takes {tuple(core.input_shape[1:])}")
    meta = {p.key: p.value for p in proto.metadata_props}
    tta = "flip TTA" in meta.get("edgecnn_variant", "")
    ref = float_reference(core, proto, ds.input_shape, tta)
    images = ds.x_test[:samples]
    known = layer_names(core)
    debug, rows = debug_model(proto, ref, known)
    layers, check = layer_errors(proto, ref, debug, rows, images, known)
    run_cfg = runs.config(base) if (base / "config.json").is_file() else {}
    result = {
        "format": "onnx",
        "file": str(path),
        "file_sha256": sha256(path),  # the report leaves out a table of a file since replaced
        "model": str(model_path),
        "qat": (run_cfg.get("finetune") or {}).get("mode") == "qat",
        "images": {"split": "test", "count": int(len(images))},
        "rounding_rmse_over_scale": ROUNDING,
        "layers": layers,
        "lowest_sqnr": [r["layer"] for r in lowest(layers)],
        "runtime_check": check,
    }
    if trials:
        result["float_trials"] = float_trials(proto, ref, debug, lowest(layers, trials), images, ds.y_test[:samples])
    result["path"] = str(write_json(base / RESULT_FILE, result))
    return result


def notes(result: dict) -> list[str]:
    """The lowest-SQNR layers, how to read the columns, and how closely the analysis matched the real kernels."""
    layers = result["layers"]
    lines = ["lowest SQNR: " + (", ".join(f"{r['layer']} {r['sqnr_db']:.1f} dB" for r in lowest(layers)) or "-"),
             f"{Path(result['file']).name} on {result['images']['count']} test images, run as written (ONNX "
             f"Runtime's graph optimizations off: each op in float32 on dequantized int8 inputs). Each row is one "
             f"quantized tensor: its own error against the same op with float32 weights, in steps of its scale "
             f"(rounding alone: {result['rounding_rmse_over_scale']:.3f}); drift: SQNR against the float32 model "
             f"there, the error piled up to that layer. Shapes are ONNX's (channels first)."]
    own = [r["layer"] for r in layers if not r["float_weights"]]
    if own:
        lines.append(f"no float32 weights found by name for {', '.join(own)}"
                     + (" (a quantization-aware training file)" if result.get("qat") else "")
                     + ": those rows measure the output's rounding with the file's own int8 weights")
    ft = result.get("float_trials")
    if ft:
        lines.append(trials_note(ft, "float32", ft["float_accuracy"]))
    c = result["runtime_check"]
    lines.append(f"against ONNX Runtime's integer kernels (the file as deployed): top-1 agreement "
                 f"{100 * c['top1_agreement']:.2f}%, max |dp| {c['max_abs_dp']:.2g} on {c['images']} images")
    return lines


def file_matches(result: dict) -> bool:
    """Whether the analysed file is still the one on disk."""
    from edgecnn.fsutil import sha256

    path = Path(result.get("file", ""))
    return path.is_file() and sha256(path) == result.get("file_sha256")
