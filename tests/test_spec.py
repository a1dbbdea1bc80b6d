import pytest

from edgecnn import spec


def test_presets_parse_and_describe():
    assert spec.describe(spec.parse("mlp")) == "D: 100 50"
    assert spec.describe(spec.parse("basic")) == "C: 32 p 64 p 64 | D: 64"
    reg = spec.parse("regularized")
    assert spec.describe(reg) == "C: 32n 32n p d0.2 64n 64n p d0.3 128n 128n p d0.4 gap | L2: 0.0001"
    assert reg.global_pool and reg.pools == 3 and reg.l2 == 1e-4
    assert spec.parse("resnet8").pools == 2


def test_auto_pooling_between_width_groups():
    s = spec.parse("C: 16 16 32 32 | D: 16")
    assert spec.describe(s) == "C: 16 16 p 32 32 p | D: 16"
    s = spec.parse("C: 16n 16n d0.25 32n 32n d0.25 | D: 8 L2")
    assert spec.describe(s) == "C: 16n 16n p d0.25 32n 32n p d0.25 | D: 8 | L2: 0.0001"


def test_explicit_pooling_is_kept_as_written():
    assert spec.describe(spec.parse("C: 8 8 p 8")) == "C: 8 8 p 8"


def test_pool_first_convolution_counts_as_pooling():
    s = spec.parse("C: 8n 16np r16 32np gap")
    assert spec.describe(s) == "C: 8n 16np r16 32np gap" and s.pools == 2  # no pooling inserted
    assert [layer.pool for layer in s.conv if layer.kind == "conv"] == [False, True, True]
    assert spec.describe(spec.parse("C: 8 8p 16")) == "C: 8 8p 16"  # explicit pooling: nothing added


def test_mlp_has_no_conv():
    s = spec.parse("D: 64n d0.5 32")
    assert not s.conv and [layer.width for layer in s.dense if layer.kind == "dense"] == [64, 32]
    assert s.dense[0].bn


def test_global_max_pooling_ends_the_convolutions():
    s = spec.parse("C: 8n r8 16n GMP")
    assert spec.describe(s) == "C: 8n r8 16n gmp" and s.global_pool and s.conv[-1].kind == "gmp"


def test_residual_block_with_the_relu_inside_the_branch():
    s = spec.parse("C: 8n rr8 r16 rr16 gap")
    assert spec.describe(s) == "C: 8n rr8 r16 rr16 gap" and s.pools == 1
    assert [layer.relu_inside for layer in s.conv if layer.kind == "res"] == [True, False, True]


def test_squeeze_excitation_suffix_on_residual_blocks():
    s = spec.parse("C: 8n r8se rr16se r16 gap")
    assert spec.describe(s) == "C: 8n r8se rr16se r16 gap"
    assert [(layer.relu_inside, layer.se) for layer in s.conv if layer.kind == "res"] == [
        (False, True), (True, True), (False, False)]
    z = spec.parse("C: 8n r8z rr16sez R16Z gap")  # z: the branch's last BN starts at gamma 0
    assert spec.describe(z) == "C: 8n r8z rr16sez r16z gap"
    assert [(layer.se, layer.zero_init) for layer in z.conv if layer.kind == "res"] == [
        (False, True), (True, True), (False, True)]
    with pytest.raises(spec.SpecError, match=r"r\[r\]WIDTH\[se\]\[z\]"):
        spec.parse("C: 8n r8zse gap")


def test_tokens_ignore_case_like_sections_and_presets():
    """32N, R16SE, RR16, D0.1, P, GAP parse as their lower-case forms (they were refused while p, gap and
    the section names already ignored case)."""
    upper = spec.parse("c: 8N 16NP R16SE RR16 D0.1 P 32n GAP | d: 16N D0.5 | l2: 1E-4")
    assert spec.describe(upper) == "C: 8n 16np r16se rr16 d0.1 p 32n gap | D: 16n d0.5 | L2: 0.0001"


@pytest.mark.parametrize(
    "bad, needle",
    [
        ("C: 32x", "'32x'"),
        ("C: 32 | X: 3", "'X: 3'"),
        ("C: gap 32", "'gap'"),
        ("C: 8n gap gmp", "'gap'"),
        ("C: gmp 8n", "'gmp'"),
        ("D: d1.5", "'d1.5'"),
        ("C: 32 | C: 64", "twice"),
        ("C: d0.2", "no convolution"),
        ("", "empty"),
        ("C: 0", "'0'"),
        ("D: r16", "'r16'"),
        ("D: rr16", "'rr16'"),
        ("C: rrr16", "'rrr16'"),
        ("C: rr0", "'rr0'"),
        ("C: 16nse", "'16nse'"),
        ("C: r16es", "'r16es'"),
        ("D: r16se", "'r16se'"),
        ("D: 16np", "belongs to section C"),
        ("C: 16pn", "'16pn'"),
        ("L2: abc", "L2 factor"),
    ],
)
def test_bad_specs_point_at_the_token(bad, needle):
    with pytest.raises(spec.SpecError) as exc:
        spec.parse(bad)
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)
