"""Compact architecture specs, e.g. ``"C: 32n 32n d0.2 64n 64n d0.2 | D: 128 d0.3 | L2: 1e-4"``.

Grammar (sections separated by ``|``, tokens by spaces)::

    C: tokens   convolutional part
        WIDTH     3x3 Conv + ReLU            (``32``)
        WIDTHn    3x3 Conv + BatchNorm + ReLU (``32n``)
        WIDTHnp   3x3 Conv, 2x2 max-pooling, then BatchNorm + ReLU (``32np``): ``32n p`` with
                  the pooling moved ahead of BatchNorm, so BN and ReLU see a quarter of the pixels
        rWIDTH    residual block: two 3x3 Conv-BN, add, ReLU; stride 2 when the width grows (``r32``)
        rrWIDTH   residual block with the ReLUs inside the branch, none after the add (Page's ResNet-9):
                  x + ReLU(BN(Conv(ReLU(BN(Conv(x))))))  (``rr32``)
        rWIDTHse, rrWIDTHse
                  either residual block with squeeze-and-excitation on its branch before the add
                  (Hu et al.): the branch's channels scaled by sigmoid(Conv1x1(ReLU(Conv1x1(GAP)))),
                  WIDTH/8 channels in between (``r120se``)
        ...z      any residual block whose branch's last BatchNorm starts at gamma 0, so the block starts
                  as its shortcut ("zero-gamma", Goyal et al.; ``r32z``, ``rr32sez``)
        p         2x2 max-pooling
        dRATE     dropout (``d0.25``)
        gap       global average pooling instead of flatten at the end
        gmp       global max pooling instead of flatten at the end (Page's ResNet-9, airbench)
    D: tokens   dense part (the softmax classifier is always appended)
        WIDTH[n]  Dense + ReLU (n: with BatchNorm); dRATE dropout
    L2: FACTOR  L2 weight penalty on every conv and dense kernel
    A bare ``L2`` token in any section means ``L2: 1e-4``.

Pooling: when the C part has no ``p`` and no residual block, a 2x2 max-pool closes
every run of equal-width convolutions (before the dropout that follows it). Write
``p`` explicitly to place pooling yourself. A spec with no C part is an MLP.

This module imports no TensorFlow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from edgecnn.errors import EdgeCNNError

PRESETS: dict[str, str] = {
    # Flatten + Dense 100 + Dense 50: the classic MLP baseline.
    "mlp": "D: 100 50",
    # The classic TensorFlow tutorial CNN (3 conv, max-pooling, dense 64).
    "basic": "C: 32 p 64 p 64 | D: 64",
    # Conv-BN-ReLU pairs 32/64/128, max-pooling, dropout, L2, global average pooling.
    "regularized": "C: 32n 32n d0.2 64n 64n d0.3 128n 128n d0.4 gap | L2: 1e-4",
    # The cifar10 training preset's network, a ResNet-9 (Page, "How to train your ResNet") at a quarter
    # of its width, the last stage at 112 rather than 128 channels so its int8 TFLite stays under 400 KB:
    # convolutions at 32x32 are few and narrow (memory-bound on a CPU), the parameters sit at 8x8 and 4x4.
    # Twice the images per second of the VGG-style net it replaced, at the same accuracy per epoch.
    # (``32np`` for ``32n p``, pooling ahead of BN as Page does, ran 40-42 epochs in 19.5 minutes
    # rather than 36-38 but scored lower twice: docs/benchmarks.md, "Other recipes tried".) Global max pooling
    # at the end, as Page's (since 2026-12-07): 87.84%, 87.66% and 87.60% in three 19.5-minute runs, against
    # 87.42-87.66% for global average pooling, the same parameters (README, "Why the cifar10 network").
    # 112 channels, not 120, since 2026-12-07: in bfloat16 on an AMX Xeon 120 trained 1.2x slower than 112 or
    # 128 (docs/train_speed.md), so 112 runs 51-53 epochs where 120 ran 44-45, with 10% fewer parameters:
    # 87.84%, 87.78% and 87.72% (seeds 0, 1, 0) against 87.84%, 87.66% and 87.60% for 120.
    "cifar10": "C: 16n 32n p r32 64n p 112n p r112 gmp | L2: 1e-4",
    # MLPerf Tiny image-classification reference (ResNet-8, ~78k parameters).
    "resnet8": "C: 16n r16 r32 r64 gap | L2: 1e-4",
}

DEFAULT_L2 = 1e-4
GLOBAL_POOLS = ("gap", "gmp")  # global average / max pooling, the last token of section C


class SpecError(EdgeCNNError):
    """An architecture spec that does not parse."""


@dataclass(frozen=True)
class Layer:
    kind: str  # conv | res | pool | drop | dense | gap | gmp
    width: int = 0
    bn: bool = False
    rate: float = 0.0
    pool: bool = False  # conv only: 2x2 max-pooling right after the convolution, before BN/ReLU
    relu_inside: bool = False  # res only: ReLU ends the branch, none after the add (``rrWIDTH``)
    se: bool = False  # res only: squeeze-and-excitation on the branch (``rWIDTHse``)
    zero_init: bool = False  # res only: the branch's last BN starts with gamma 0, the block as identity (``rWIDTHz``)


@dataclass
class Spec:
    text: str
    conv: list[Layer] = field(default_factory=list)
    dense: list[Layer] = field(default_factory=list)
    l2: float = 0.0

    @property
    def global_pool(self) -> bool:
        return any(layer.kind in GLOBAL_POOLS for layer in self.conv)

    @property
    def pools(self) -> int:
        """How many times the spatial size is halved."""
        n = sum(1 for layer in self.conv if layer.kind == "pool" or layer.pool)
        width = None
        for layer in self.conv:
            if layer.kind == "res":
                if width is not None and layer.width > width:
                    n += 1
                width = layer.width
            elif layer.kind == "conv":
                width = layer.width
        return n


_INT = re.compile(r"^(\d+)(n?)(p?)$")
_RES = re.compile(r"^(rr?)(\d+)(se)?(z)?$")
_DROP = re.compile(r"^d(\d*\.?\d+)$")
_L2 = re.compile(r"^l2(?:=(.+))?$", re.IGNORECASE)


def resolve(arch: str) -> str:
    """Return the spec text for a preset name, or ``arch`` itself."""
    return PRESETS.get(arch.strip().lower(), arch)


def parse(arch: str) -> Spec:
    """Parse a preset name or spec string; raise SpecError pointing at the bad token."""
    text = resolve(arch).strip()
    if not text:
        raise SpecError("empty architecture spec; use a preset (" + ", ".join(PRESETS) + ") or e.g. 'C: 32n 64n gap'")
    spec = Spec(text=text)
    seen: set[str] = set()
    for raw_section in text.split("|"):
        section = raw_section.strip()
        head, sep, body = section.partition(":")
        name = head.strip().upper()
        if not sep or name not in ("C", "D", "L2"):
            raise SpecError(
                f"bad section {section!r} in architecture spec {text!r}: expected 'C: ...', 'D: ...' or 'L2: FACTOR'"
            )
        if name in seen:
            raise SpecError(f"section {name}: appears twice in architecture spec {text!r}")
        seen.add(name)
        if name == "L2":
            spec.l2 = _parse_float(body.strip(), f"L2 factor {body.strip()!r}", text, lo=0.0, hi=1.0)
            continue
        tokens = body.split()
        if not tokens:
            raise SpecError(f"section {name}: is empty in architecture spec {text!r}")
        for token in tokens:
            layer = _parse_token(name, token, text, spec)
            if layer is not None:
                (spec.conv if name == "C" else spec.dense).append(layer)
    _check_conv(spec)
    if spec.conv and not any(layer.kind in ("conv", "res") for layer in spec.conv):
        raise SpecError(f"section C: has no convolution in architecture spec {text!r}")
    if not spec.conv:
        spec.conv = []
    else:
        spec.conv = _insert_pooling(spec.conv)
    return spec


def _parse_float(s: str, what: str, text: str, lo: float, hi: float) -> float:
    try:
        value = float(s)
    except ValueError:
        raise SpecError(f"bad {what} in architecture spec {text!r}: not a number") from None
    if not lo <= value < hi:
        raise SpecError(f"bad {what} in architecture spec {text!r}: must be in [{lo}, {hi})")
    return value


def _parse_token(section: str, token: str, text: str, spec: Spec) -> Layer | None:
    t = token.strip()
    lt = t.lower()  # tokens ignore case, as section names and presets do: 32N, R32SE, D0.1, GAP
    m = _L2.match(t)
    if m:
        spec.l2 = _parse_float(m.group(1), f"token {t!r}", text, 0.0, 1.0) if m.group(1) else DEFAULT_L2
        return None
    m = _INT.match(lt)
    if m:
        width = int(m.group(1))
        if not 1 <= width <= 4096:
            raise SpecError(f"bad token {t!r} in section {section}: of {text!r}: width must be 1..4096")
        if m.group(3) and section != "C":
            raise SpecError(f"bad token {t!r} in section {section}: of {text!r}: pooling (p) belongs to section C:")
        return Layer("conv" if section == "C" else "dense", width=width, bn=bool(m.group(2)), pool=bool(m.group(3)))
    m = _DROP.match(lt)
    if m:
        rate = _parse_float(m.group(1), f"token {t!r}", text, 0.0, 1.0)
        return Layer("drop", rate=rate)
    if section == "C":
        m = _RES.match(lt)
        if m:
            width = int(m.group(2))
            if not 1 <= width <= 4096:
                raise SpecError(f"bad token {t!r} in section C: of {text!r}: width must be 1..4096")
            return Layer("res", width=width, bn=True, relu_inside=m.group(1) == "rr", se=bool(m.group(3)),
                         zero_init=bool(m.group(4)))
        if lt == "p":
            return Layer("pool")
        if lt in GLOBAL_POOLS:
            return Layer(lt)
        expected = "WIDTH[n][p], r[r]WIDTH[se][z], p, dRATE, gap, gmp or L2"
    else:
        expected = "WIDTH[n], dRATE or L2"
    raise SpecError(f"bad token {t!r} in section {section}: of architecture spec {text!r}: expected {expected}")


def _check_conv(spec: Spec) -> None:
    ends = [i for i, layer in enumerate(spec.conv) if layer.kind in GLOBAL_POOLS]
    if len(ends) > 1 or (ends and ends[0] != len(spec.conv) - 1):
        token = spec.conv[ends[0]].kind
        raise SpecError(f"token {token!r} must be the last token of section C: (one global pooling, gap or gmp) "
                        f"in architecture spec {spec.text!r}")


def _insert_pooling(layers: list[Layer]) -> list[Layer]:
    if any(layer.kind in ("pool", "res") or layer.pool for layer in layers):
        return layers
    out: list[Layer] = []
    last_conv = -1  # index in out of the last conv of the current run
    width = None
    for layer in layers:
        if layer.kind == "conv":
            if width is not None and layer.width != width:
                out.insert(last_conv + 1, Layer("pool"))
            width = layer.width
            out.append(layer)
            last_conv = len(out) - 1
        else:
            out.append(layer)
    if last_conv >= 0:
        out.insert(last_conv + 1, Layer("pool"))
    return out


def describe(spec: Spec) -> str:
    """The spec as written out in full (pooling made explicit)."""
    def tok(layer: Layer) -> str:
        if layer.kind in ("conv", "dense"):
            return f"{layer.width}{'n' if layer.bn else ''}{'p' if layer.pool else ''}"
        if layer.kind in GLOBAL_POOLS:
            return layer.kind
        if layer.kind == "res":
            suffix = ("se" if layer.se else "") + ("z" if layer.zero_init else "")
            return f"{'rr' if layer.relu_inside else 'r'}{layer.width}{suffix}"
        return {"pool": "p", "drop": f"d{layer.rate:g}"}[layer.kind]

    parts = []
    if spec.conv:
        parts.append("C: " + " ".join(tok(layer) for layer in spec.conv))
    if spec.dense:
        parts.append("D: " + " ".join(tok(layer) for layer in spec.dense))
    if spec.l2:
        parts.append(f"L2: {spec.l2:g}")
    return " | ".join(parts) if parts else "D:"
