"""The fast deploy form (export/fast/) against the training-form model: exact up to float32 rounding; its plan,
its passes and its pure permutation algebra, each on its own."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from micronet.export.deploy import recalibrate_batchnorm
import torch.nn.functional as F

from micronet.export.fast import (PROFILES, REWRITES, ChannelGather, ChannelRoll, ChannelTranspose, Coefficients,
                                  Conv, CostModel, LinearCoefficients, Moved, PartnerConv, PixelPairs, Rotations,
                                  RuntimeProfile, ShiftMax, batch_one_form, fast_plan, first_inexact_pass,
                                  relu_max_form, to_fast_deploy)
from micronet.export.fast import permutations as perms
from micronet.export.fast.cost_model import merged_groups
from micronet.export.fast.emit import grouped_taps
from micronet.export.fast.parse import parse
from micronet.export.fast.shift_max import coefficients_for
from micronet.layers import MicroFactorizedDepthwise, shift_permutation, shuffle_permutation
from micronet.model import build_model

VARIANTS = ["m0", "m1", "m2", "m3", "release-m0", "release-m3"]
LIMIT = 1e-5  # max |fast - reference| relative to the largest reference logit


def _recalibrated(variant: str, size: int = 96):
    torch.manual_seed(0)
    model = build_model(variant, input_size=size).eval()
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(8, 3, size, size, generator=gen) for _ in range(2)]
    recalibrate_batchnorm(model, batches)  # untrained stats collapse the logits (toolchain P15)
    return model


# At 224 px the cost model keeps more 1×1 convs grouped behind channel transposes than at 96 px. There m2's
# fast graph in float32 is 1.6e-5 from the float64 model (the reference form in float32: 2.5e-6), as it was
# before the channel transposes and merged groups, so the bound is looser.
@pytest.mark.parametrize("variant,size,batch,seed,limit,target",
                         [(v, 96, 4, 2, LIMIT, t) for v in VARIANTS for t in PROFILES]
                         + [(v, 224, 2, 5, 3 * LIMIT, "xnnpack") for v in ["m1", "m2", "m3", "release-m3"]]
                         + [(v, 224, 2, 5, 3 * LIMIT, "onnxruntime") for v in ["m0", "m3"]])
def test_fast_matches_training_form(variant, size, batch, seed, limit, target):
    model = _recalibrated(variant, size)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = model(x).double()
        out = to_fast_deploy(model, profile=target)(x).double()
    assert out.shape == ref.shape
    assert float((out - ref).abs().max() / ref.abs().max()) <= limit


def test_fast_at_224_and_model_untouched():
    model = _recalibrated("m0", 224)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = to_fast_deploy(model)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref, out = model(x).double(), fast(x).double()
    assert float((out - ref).abs().max() / ref.abs().max()) <= LIMIT
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not fast.training and not any(p.requires_grad for p in fast.parameters())


@pytest.mark.parametrize("channels,groups", [(8, 2), (32, 8), (96, 8), (64, 16), (36, 36), (12, 1)])
def test_shift_is_one_rotation_in_interleaved_order(channels, groups):
    shift = np.asarray(shift_permutation(channels, groups))
    order, d = perms.interleaved_cycles(shift)
    assert sorted(order.tolist()) == list(range(channels))
    pi = perms.inverse(order)[shift[order]]
    assert np.array_equal(pi, (np.arange(channels) + d) % channels)
    assert d == np.gcd(groups, channels // groups)


@pytest.mark.parametrize("channels,groups", [(24, 6), (32, 8), (64, 16)])
def test_shift_is_two_masked_rotations_in_natural_order(channels, groups):
    shift = np.asarray(shift_permutation(channels, groups))
    rot = perms.rotations(shift)
    assert rot is not None and len(rot) <= 2
    x = np.arange(channels)
    rebuilt = sum(np.where(mask, np.roll(x, -d), 0) for d, mask in rot.items())
    assert np.array_equal(rebuilt, x[shift])


def test_shuffle_relabelling_roundtrip():
    order = np.random.default_rng(0).permutation(24)
    assert np.array_equal(perms.before_shuffle(perms.through_shuffle(order, 4), 4), order)
    # The relabelled order really describes the shuffled tensor.
    logical = np.arange(24) * 10
    stored = logical[order]
    shuffled = logical[np.asarray(shuffle_permutation(24, 4))]
    assert np.array_equal(stored, shuffled[perms.through_shuffle(order, 4)])


# --- the rewrites, one by one (the numbers of export/fast/__init__.py's catalogue) -------------------------
from micronet.layers import DynamicShiftMax  # noqa: E402


def _shift_maxes(fast):
    return [m for m in fast.modules() if isinstance(m, ShiftMax)]


def _plans(plan, kind, blocks=None):
    return [u for u in plan.units if u.kind == kind and (blocks is None or u.block in blocks)]


def test_block_a_shift_after_depthwise_is_one_rotation_by_the_multiplier():
    """Rewrite 2, diagonal taps: m0 blocks 2 and 3 (8 and 16 input channels, multiplier 4)."""
    model = _recalibrated("m0")
    entries = _plans(fast_plan(model), "dw", blocks=(1, 2))
    assert len(entries) == 2
    for entry in entries:
        assert entry.diagonal and entry.xtilde.kind == "rotations" and entry.xtilde.shifts == (4,)
    rotations = [sm.xtilde.shifts for sm in _shift_maxes(to_fast_deploy(model))
                 if sm.producer is None and isinstance(sm.xtilde, Rotations)]
    assert rotations.count((4,)) >= 2


def test_block_bc_shift_after_depthwise_is_one_rotation_or_one_roll():
    """Rewrite 2: never a permutation conv, never masked rotations after a B/C depthwise."""
    for size in (96, 224):
        entries = _plans(fast_plan(_recalibrated("m0", size)), "dw", blocks=(3, 4, 5))
        assert len(entries) == 3
        for entry in entries:
            xt = entry.xtilde
            assert xt.kind == "roll" or (xt.kind == "rotations" and len(xt.shifts) == 1)


def test_grouped_taps_merge_groups_exactly():
    """Rewrite 9: a depthwise with a channel multiplier (6 groups of 1→4) runs as 2 groups of 3→12."""
    gen = torch.Generator().manual_seed(6)
    w, b = torch.randn(24, 1, 3, 3, generator=gen, dtype=torch.float64), torch.randn(24, dtype=torch.float64)
    merged = grouped_taps(w, b, 2, 1, 6, merged_groups(CostModel(), 6, 1, 24))
    assert merged.groups == 2 and merged.weight.shape == (24, 3, 3, 3)
    x = torch.randn(2, 6, 17, 17, generator=gen)
    ref = F.conv2d(x.double(), w, b, 2, 1, groups=6)
    assert torch.allclose(merged(x).double(), ref, rtol=1e-5, atol=1e-5)
    # Two inputs per group (a pending input), 16 groups of 2→4 → 4 groups of 8→16.
    w2 = torch.randn(64, 2, 5, 5, generator=gen, dtype=torch.float64)
    merged = grouped_taps(w2, torch.zeros(64, dtype=torch.float64), 2, 2, 16, merged_groups(CostModel(), 16, 2, 64))
    assert merged.groups == 4 and merged.weight.shape == (64, 8, 5, 5)
    x2 = torch.randn(1, 32, 21, 21, generator=gen)
    assert torch.allclose(merged(x2).double(), F.conv2d(x2.double(), w2, None, 2, 2, groups=16), rtol=1e-5, atol=1e-5)
    # A true depthwise stays one.
    assert merged_groups(CostModel(), 8, 1, 8) == 8
    assert merged_groups(CostModel(gemm_tile_outputs=8), 6, 1, 24) == 3  # the tile is the profile's


@pytest.mark.parametrize("channels,groups", [(192, 8), (384, 8), (36, 6)])
def test_shift_is_one_roll_in_the_natural_order_of_a_grouped_expand(channels, groups):
    """Rewrite 10: B/C's depthwise Shift-Max after a grouped expand (natural order, then S(g)) is one roll
    of the channels viewed as (g, C/g), and ChannelRoll computes exactly that permutation."""
    order = perms.through_shuffle(np.arange(channels), groups)
    shift = np.asarray(shift_permutation(channels, channels // groups))
    pi = perms.inverse(order)[shift[order]]
    roll = perms.roll_2d(pi)
    assert roll is not None and roll[:2] == (groups, channels // groups)
    x = torch.arange(channels, dtype=torch.float32).view(1, channels, 1, 1).repeat(1, 1, 2, 3)
    assert torch.equal(ChannelRoll(*roll)(x), x[:, torch.as_tensor(pi)])
    assert perms.roll_2d(np.random.default_rng(0).permutation(channels)) is None


def test_channel_transpose_plans_reach_their_target():
    """Rewrite 11: a permutation that is one transpose of a mixed-radix view of the channels is found, and
    ChannelTranspose moves the data exactly so; group-contiguity is reached where it exists."""
    channels = 48
    base = np.arange(channels)
    target = base.reshape(2, 4, 6).transpose(1, 0, 2).reshape(-1)
    plan = perms.transpose_to(base, target)
    assert plan is not None and plan[1][-1] == len(plan[0]) - 1  # keeps the innermost axis (copies runs)
    x = torch.randn(1, channels, 3, 3)
    assert torch.equal(ChannelTranspose(*plan)(x), x[:, torch.as_tensor(target)])
    stored = perms.through_shuffle(base, 6)  # a shuffled order: conv groups of 12 are strided
    plan = perms.transpose_to_groups(stored, 4, channels)
    moved = stored[perms.transposed_index(*plan)]
    assert np.array_equal(moved // 12, np.repeat(np.arange(4), 12))
    assert perms.transpose_to(base, np.random.default_rng(1).permutation(channels)) is None


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["m0", "m3", "release-m3"])
def test_relu_max_form_matches_and_has_no_maximum(variant):
    """Rewrite 14 (the int8 graph): max(p, q) as q + relu(p - q) is the same function, and no MAXIMUM is
    left for the int8 lowering (XNNPACK does not delegate int8 MAXIMUM)."""
    model = _recalibrated(variant)
    x = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(8))
    fast8 = to_fast_deploy(model, relu_max=True)
    with torch.no_grad():
        ref, out = model(x).double(), fast8(x).double()
        derived = relu_max_form(to_fast_deploy(model))(x).double()
    assert float((out - ref).abs().max() / ref.abs().max()) <= LIMIT
    assert torch.equal(derived, out)
    ops = {str(n.target) for n in torch.export.export(fast8, (torch.zeros(1, 3, 96, 96),)).graph.nodes}
    assert "aten.maximum.default" not in ops and "aten.relu.default" in ops
    assert not any(m.relu_max for m in _shift_maxes(to_fast_deploy(model)))


def test_narrow_coefficients_are_widened_along_w():
    """Rewrite 12: coefficients narrower than 64 channels multiply a map as (B, C, 1, W), by ones (exact)."""
    fast = to_fast_deploy(_recalibrated("m0", 224))
    seen = 0
    for sm in (m for m in fast.modules() if isinstance(m, ShiftMax)):
        if sm.channels < 64:
            assert sm.widen is not None and torch.all(sm.widen == 1) and sm.widen.shape[:3] == (1, 1, 1)
            seen += 1
        else:
            assert sm.widen is None
    assert seen >= 3


def test_pending_into_a_depthwise_only_where_the_cost_model_says_so():
    """At 224 px block 1's K=1 Shift-Max stays a product for block 2's depthwise (56×56: materialising
    needs a partner conv there), block 2's is materialised for block 3's (a 5×5 with a doubled inner loop
    costs more at 28×28)."""
    plan = fast_plan(_recalibrated("m0", 224))
    last_pw = {u.block: u for u in plan.units if u.kind == "pw"}
    first_dw = {u.block: u for u in reversed(plan.units) if u.kind == "dw"}
    assert last_pw[0].pending_output and first_dw[1].pending_input
    assert not last_pw[1].pending_output and last_pw[1].xtilde.kind == "partner"
    assert not first_dw[2].pending_input


def test_narrow_stem_computes_two_pixels_per_row():
    """Rewrite 13: m0's 6-channel stem is a 12-output 3×5 conv at stride (2, 4) and PixelPairs (exactness:
    the variant tests); m3's 16-channel stem, a full tile already, stays a 3×3 conv."""
    for size in (32, 96, 224):
        model = _recalibrated("m0", size)
        assert fast_plan(model).stem.pixel_pairs
        fast = to_fast_deploy(model)
        assert sum(isinstance(m, PixelPairs) for m in fast.modules()) == 1
        (conv,) = [m for m in fast.stem.modules() if isinstance(m, torch.nn.Conv2d)]
        assert conv.out_channels == 12 and conv.kernel_size == (3, 5) and conv.stride == (2, 4)
    model = _recalibrated("m3")
    assert not fast_plan(model).stem.pixel_pairs
    (conv,) = [m for m in to_fast_deploy(model).stem.modules() if isinstance(m, torch.nn.Conv2d)]
    assert conv.kernel_size == (3, 3)
    assert not fast_plan(_recalibrated("m0"), disable={"pixel_pairs"}).stem.pixel_pairs


def test_m3_squeezes_stay_grouped_behind_transposes_where_they_pay():
    """At 224 px the cost model transposes for grouped 1×1 convs at 28×28 and below, not at 56×56 (where
    a transpose of short runs costs more than the dense conv it saves, measured): in the plan, and the
    emitted graph has exactly the planned transposes, at those sizes."""
    model = _recalibrated("m3", 224)
    plan = fast_plan(model)
    transposed = [u for u in plan.units if u.kind == "pw" and u.grouped
                  and any(m is not None and m.kind == "transpose" for m in (u.before, u.after))]
    assert transposed and {u.hw for u in transposed} <= {(7, 7), (14, 14), (28, 28)}
    assert {u.hw for u in transposed} >= {(14, 14), (28, 28)}
    assert not [u for u in plan.units if u.kind == "pw" and u.hw == (56, 56) and (u.before or u.after)]
    fast = to_fast_deploy(model)
    moves = sum((u.before is not None) + (u.after is not None) for u in transposed)
    sizes = []
    for module in fast.modules():
        if isinstance(module, ChannelTranspose):
            module.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[-1]))
    with torch.no_grad():
        fast(torch.zeros(1, 3, 224, 224))
    assert len(sizes) == moves and max(sizes) <= 28
    grouped_1x1 = [m for m in fast.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)
                   and 1 < m.groups < m.in_channels]
    assert len(grouped_1x1) >= 30


def test_pending_shift_max_feeds_a_grouped_depthwise_with_two_inputs_per_group():
    """Rewrite 5: block 1's K=1 Shift-Max is a product only; block 2's depthwise sums its two parts."""
    model = _recalibrated("m0")
    plan = fast_plan(model)
    dw_plan = next(u for u in plan.units if u.kind == "dw" and u.block == 1)
    assert dw_plan.pending_input and dw_plan.merged and dw_plan.groups == 2
    fast = to_fast_deploy(model)
    pending = [sm for sm in _shift_maxes(fast) if sm.pending]
    assert pending and pending[0].producer.out_channels == 16 and pending[0].xtilde is None
    # 8 groups of 2 inputs → 4 outputs, merged into 2 groups of 8 → 16 (rewrite 9): zero weights across.
    dw = next(m.conv for m in fast.modules() if isinstance(m, Conv) and m.conv.kernel_size != (1, 1)
              and m.conv.in_channels == 16 and m.conv.out_channels == 32)
    assert dw.groups == 2 and dw.weight.shape[1] == 8
    for o in range(32):
        own = (o // 4) % 4
        others = [j for j in range(8) if j // 2 != own]
        assert torch.all(dw.weight[o, others] == 0) and torch.any(dw.weight[o, 2 * own:2 * own + 2] != 0)


def test_final_block_stays_grouped():
    """Rewrite 6: m0's last 1×1 conv (96→576, 12 groups) is a grouped conv, x~ one rotation by a group."""
    model = _recalibrated("m0")
    last = fast_plan(model).units[-1]
    assert last.kind == "pw" and last.grouped and last.xtilde.kind == "partner" and last.xtilde.shifts == (48,)
    sm = _shift_maxes(to_fast_deploy(model))[-1]
    assert isinstance(sm.xtilde, PartnerConv)
    assert sm.producer.groups == 12 and sm.xtilde.conv.groups == 12 and sm.xtilde.rotation == 48


@pytest.mark.parametrize("variant", ["m0", "m3"])
def test_no_gather_and_only_channel_axis_permutes_in_the_exported_graph(variant):
    """Channels move only by slices/concats and by transposes of channel axes (batch and H, W stay)."""
    fast = to_fast_deploy(_recalibrated(variant, 224))
    nodes = [n for n in torch.export.export(fast, (torch.zeros(1, 3, 224, 224),)).graph.nodes
             if n.op == "call_function"]
    assert not any("index" in str(n.target) or "gather" in str(n.target) for n in nodes)
    permutes = [n for n in nodes if "permute" in str(n.target)]
    pairs = sum(isinstance(m, PixelPairs) for m in fast.modules())
    assert len(permutes) == sum(isinstance(m, ChannelTranspose) for m in fast.modules()) + pairs
    for n in permutes:
        dims = list(n.args[1])
        pixel_pairs = dims == [0, 2, 3, 4, 1]  # PixelPairs: free in NHWC (tests/test_tf_graph.py)
        assert pixel_pairs or (dims[0] == 0 and dims[-2:] == [len(dims) - 2, len(dims) - 1])


def test_masked_coefficient_is_exactly_zero():
    sm = DynamicShiftMax(8, 2, 4, branches=1)
    with torch.no_grad():
        sm.fc2.weight.normal_()
        sm.fc2.bias.normal_()
    order = np.arange(8)
    mask = np.array([True, False] * 4)
    coef = coefficients_for(sm, [[(0, order, None), (1, order, mask)]], torch.eye(8, dtype=torch.float64),
                         torch.zeros(8, dtype=torch.float64))
    assert isinstance(coef, Coefficients)
    theta = coef(torch.randn(3, 8, 1, 1))
    assert torch.all(theta[:, 8:][:, ~torch.as_tensor(mask)] == 0)
    assert torch.all(theta[:, 8:][:, torch.as_tensor(mask)] != 0)


@pytest.mark.slow
@pytest.mark.parametrize("variant,target", [("m0", "xnnpack"), ("m0", "onnxruntime"), ("m3", "onnxruntime")])
def test_fast_graph_in_onnx_runtime(variant, target, tmp_path):
    """The fast graph also exports to ONNX and runs in ONNX Runtime with the same logits."""
    from micronet.export.onnx import export_onnx, run_onnx

    model = _recalibrated(variant)
    fast = to_fast_deploy(model, profile=target)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(4))
    export_onnx(fast, torch.zeros(1, 3, 96, 96), tmp_path / "fast.onnx")
    with torch.no_grad():
        ref = model(x).numpy()
    out = run_onnx(tmp_path / "fast.onnx", x.numpy())
    assert float(np.abs(out - ref).max() / np.abs(ref).max()) <= 1e-4


def test_unknown_profile_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown runtime profile 'tensorrt'; choose from"):
        to_fast_deploy(_recalibrated("m0", 32), profile="tensorrt")


def test_onnxruntime_target_choices():
    """The ONNX Runtime graph: depthwise pairs as two convs with no border term, the stem without pixel
    pairs, no widened coefficients, every shift one channel gather (no rotations, rolls or partner convs),
    hyper-functions as Linears; and no pending product feeds a depthwise."""
    model = _recalibrated("m0", 224)
    fast = to_fast_deploy(model, profile="onnxruntime")
    pairs = sum(isinstance(m, MicroFactorizedDepthwise) for m in model.modules())
    assert not any(isinstance(m, PixelPairs) for m in fast.modules())
    body = [m for m in fast.blocks.modules() if isinstance(m, Conv)]
    assert all(m.border is None for m in body)
    spatial = [m.conv.kernel_size for m in body if m.conv.kernel_size != (1, 1)]
    assert pairs == 6 and len(spatial) == 2 * pairs and all(kh == 1 or kw == 1 for kh, kw in spatial)
    sms = _shift_maxes(fast)
    for sm in sms:
        assert sm.widen is None and isinstance(sm.coef, LinearCoefficients)
        assert sm.pending or (isinstance(sm.xtilde, Moved) and isinstance(sm.xtilde.move, ChannelGather))
    plan = fast_plan(model, profile="onnxruntime")
    assert all(u.xtilde is None or u.xtilde.kind == "gather" for u in plan.units)
    assert not any(u.kind == "dw" and (u.merged or u.pending_input) for u in plan.units)
    # No pending product feeds a depthwise pair (its (k,1) conv would take two inputs per group).
    leaves = [m for m in fast.blocks.modules() if isinstance(m, (ShiftMax, Conv, torch.nn.Conv2d))]
    for i, m in enumerate(leaves):
        if isinstance(m, ShiftMax) and m.pending:
            consumer = next(c for c in leaves[i + 1:] if isinstance(c, Conv))
            assert consumer.conv.kernel_size == (1, 1)
    # Every grouped 1×1 conv of the training form stays grouped, a channel gather fixing its input order.
    def grouped_1x1(module):
        return [m for m in module.modules()
                if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and m.groups > 1]

    assert len(grouped_1x1(fast)) == len(grouped_1x1(model))
    assert any(isinstance(m, ChannelGather) for m in fast.modules())


@pytest.mark.parametrize("channels,groups", [(8, 2), (16, 4), (24, 6)])
def test_gathered_shift_equals_the_released_index(channels, groups):
    """x~ by one gather equals the training form's x[:, shift_permutation] in any stored order."""
    gen = torch.Generator().manual_seed(channels)
    order = torch.randperm(channels, generator=gen).numpy()
    shift = np.asarray(shift_permutation(channels, groups))
    pi = perms.inverse(order)[shift[order]]
    z = torch.randn(2, channels, 3, 3, generator=gen)  # stored
    logical = torch.empty_like(z)
    logical[:, torch.as_tensor(order)] = z
    expected = logical[:, torch.as_tensor(shift)][:, torch.as_tensor(order)]  # x~, stored in ``order``
    assert torch.equal(z.index_select(1, torch.as_tensor(pi)), expected)


def test_linear_coefficients_equal_the_conv_form():
    sm = DynamicShiftMax(16, 4, 4, branches=2)
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for lin in (sm.fc1, sm.fc2):
            lin.weight.normal_(generator=gen)
            lin.bias.normal_(generator=gen)
    order = np.arange(16)
    blocks = [[(2 * e, order, None), (2 * e + 1, order, None)] for e in range(2)]
    coef = coefficients_for(sm, blocks, torch.eye(16, dtype=torch.float64), torch.zeros(16, dtype=torch.float64))
    linear = coef.linear_form()
    x = torch.randn(3, 16, 5, 5, generator=gen)
    a, b = coef.from_map(x), linear.from_map(x)
    assert a.shape == b.shape == (3, 64, 1, 1)
    assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())
    assert float(a.amin()) < -1.5 and float(a.amax()) > 0.5  # the clamp is reached on both sides
    masked = coefficients_for(sm, [[(0, order, None), (1, order, np.arange(16) % 2 == 0)]],
                           torch.eye(16, dtype=torch.float64), torch.zeros(16, dtype=torch.float64))
    assert masked.linear_form() is None


@pytest.mark.parametrize("field", REWRITES)
def test_every_rewrite_switch_is_exact_on_its_own(field):
    """The profile's switches are independent: the XNNPACK profile with any one of them flipped still
    computes the training form's function (the two real profiles are checked above). A failure here names
    the rewrite."""
    base = PROFILES["xnnpack"]
    profile = dataclasses.replace(base, name=f"xnnpack-{field}", **{field: not getattr(base, field)})
    for variant in ("m0", "release-m3"):
        model = _recalibrated(variant)
        x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(8))
        with torch.no_grad():
            ref = model(x).double()
            out = to_fast_deploy(model, profile=profile)(x).double()
        assert float((out - ref).abs().max() / ref.abs().max()) <= LIMIT


def test_every_switch_off_at_once_is_exact_and_disable_names_switches():
    model = _recalibrated("m3")
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ref = model(x).double()
        out = to_fast_deploy(model, disable=REWRITES)(x).double()
    assert float((out - ref).abs().max() / ref.abs().max()) <= LIMIT
    plan = fast_plan(model, disable=REWRITES)
    assert not any(u.kind == "pw" and u.grouped for u in plan.units)
    assert not any(u.kind == "dw" and (u.merged or u.diagonal) for u in plan.units)
    with pytest.raises(ValueError, match="unknown fast-graph rewrite"):
        to_fast_deploy(model, disable={"pendnig"})


def test_profiles_are_data():
    """Every runtime difference is a field of the profile."""
    assert set(PROFILES) == {"xnnpack", "onnxruntime", "portable"}
    portable = PROFILES["portable"]
    assert not (portable.gather_shifts or portable.linear_coefficients or portable.merged_stem
                or portable.hard_swish_op or portable.roll_2d or portable.channel_transposes)
    ort = PROFILES["onnxruntime"]
    assert ort.gather_shifts and ort.linear_coefficients and not ort.merged_depthwise and not ort.pixel_pairs
    assert isinstance(ort.costs, CostModel) and PROFILES["xnnpack"].costs == ort.costs
    assert PROFILES["xnnpack"].without("pixel_pairs") == dataclasses.replace(PROFILES["xnnpack"], pixel_pairs=False)
    assert "pending_products" in REWRITES and "name" not in REWRITES and "costs" not in REWRITES
    assert all(isinstance(PROFILES["xnnpack"], RuntimeProfile) for _ in REWRITES)


def test_first_inexact_pass_names_the_broken_rewrite(monkeypatch):
    """With the rewrites switched on one at a time, a wrong rewrite is named (here pixel pairs with its two
    pixels swapped); an exact graph names none."""
    import micronet.export.fast.emit as emit

    model = _recalibrated("m0")
    assert first_inexact_pass(model) is None

    class SwappedPairs(PixelPairs):
        def forward(self, x):
            return super().forward(torch.cat([x[:, x.shape[1] // 2:], x[:, :x.shape[1] // 2]], dim=1))

    monkeypatch.setattr(emit, "PixelPairs", SwappedPairs)
    assert first_inexact_pass(model) == "pixel_pairs"


def test_parse_gives_one_unit_per_producer():
    """The training form parsed once: m0's units with their kind, block, map size and activation."""
    model = _recalibrated("m0", 224)
    net = parse(model)
    dw = [u for u in net.units if u.kind == "dw"]
    assert len(dw) == 6 and net.units[0].hw == (112, 112) and net.units[-1].hw_out == (7, 7)
    assert [u.block for u in net.units] == sorted(u.block for u in net.units)
    assert sum(u.first for u in net.units) == sum(u.last for u in net.units) == len(model.blocks)
    assert all((u.shift_max is None) or not u.relu6 for u in net.units)
    assert net.units[0].mult == 4 and net.units[0].c1 * (net.units[0].mult // net.units[0].c1) == 4


def test_plan_and_graph_agree_on_x_tilde_forms():
    """Each Shift-Max's x~ module is the one the plan chose (one small module per form)."""
    model = _recalibrated("m3", 224)
    kinds = [u.xtilde.kind for u in fast_plan(model).units if u.xtilde is not None]
    built = []
    for sm in _shift_maxes(to_fast_deploy(model)):
        if sm.pending:
            continue
        xt = sm.xtilde
        built.append("partner" if isinstance(xt, PartnerConv) else "rotations" if isinstance(xt, Rotations)
                     else {ChannelRoll: "roll", ChannelGather: "gather"}.get(type(xt.move), "permutation"))
    assert built == kinds and "roll" in kinds and "permutation" not in kinds


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["m0", "m3"])
def test_batch_one_form_is_exact_and_runs_in_onnx_runtime(variant, tmp_path):
    """Rewrite 20: Shift-Max products as BatchNormalizations (mean 0, variance 1, epsilon 0) compute exactly the
    same products, for one image at a time; in ONNX the map-sized MULs are gone."""
    import onnx

    from micronet.export.onnx import export_onnx, run_onnx

    model = _recalibrated(variant)
    fast = to_fast_deploy(model, profile="onnxruntime")
    one = batch_one_form(fast)
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        assert torch.equal(one(x), fast(x))
        ref = model(x).numpy()
    export_onnx(one, torch.zeros(1, 3, 96, 96), tmp_path / "one.onnx")
    graph = onnx.load(str(tmp_path / "one.onnx")).graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.value_info}
    assert sum(n.op_type == "BatchNormalization" for n in graph.node) >= 2 * len(_shift_maxes(fast))
    map_muls = [n for n in graph.node if n.op_type == "Mul" and len(shapes.get(n.output[0], [])) == 4
                and shapes[n.output[0]][2] > 1]
    assert not map_muls
    out = run_onnx(tmp_path / "one.onnx", x.numpy())
    assert float(np.abs(out - ref).max() / np.abs(ref).max()) <= 1e-4
    with pytest.raises(ValueError, match="one image at a time, got a batch of 2"):
        one(torch.zeros(2, 3, 96, 96))
    with pytest.raises(ValueError, match="build the graph for onnxruntime"):
        batch_one_form(to_fast_deploy(model))  # XNNPACK's widened coefficients


def test_the_cost_model_is_the_profiles():
    """The cost model is data on the profile: a runtime with an 8-wide GEMM tile merges depthwise groups to 8
    outputs each (rewrite 9) and the graph stays exact."""
    model = _recalibrated("m0")
    narrow = dataclasses.replace(PROFILES["xnnpack"], name="neon-8", costs=CostModel(gemm_tile_outputs=8))
    wide_groups = {u.position: u.groups for u in fast_plan(model).units if u.kind == "dw"}
    narrow_groups = {u.position: u.groups for u in fast_plan(model, profile=narrow).units if u.kind == "dw"}
    assert any(narrow_groups[p] > wide_groups[p] for p in wide_groups)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ref, out = model(x).double(), to_fast_deploy(model, profile=narrow)(x).double()
    assert float((out - ref).abs().max() / ref.abs().max()) <= LIMIT


def test_permutation_helpers_are_pure_functions():
    rng = np.random.default_rng(3)
    p = rng.permutation(12)
    assert np.array_equal(perms.inverse(p)[p], np.arange(12)) and perms.channels(p) == 12
    assert perms.group_contiguous(np.arange(12), 3, 12)
    assert not perms.group_contiguous(perms.through_shuffle(np.arange(12), 3), 3, 12)
    assert perms.factorizations(12, 2) == [(2, 6), (3, 4), (4, 3), (6, 2)]
    assert perms.transposed_index((2, 3), (1, 0)).tolist() == [0, 3, 1, 4, 2, 5]


def test_plan_summary_reads_one_line_per_unit():
    plan = fast_plan(_recalibrated("m0"), profile="onnxruntime")
    lines = plan.summary()
    assert len(lines) == len(plan.units) + 1 and lines[0].startswith("stem: 3x3 conv")
    assert all("x~ gather" in line or "x~ -" in line for line in lines[1:])


# ------------------------------------------------------------------------------------------ per-block switches

def _per_block_flips(model, profile):
    """Every (block, switch) flip of ``profile`` whose plan differs from the whole-graph one and from every
    earlier flip (what the tuner's block phase builds), with the flipped profile."""
    from types import SimpleNamespace

    from micronet.export.tune.candidates import block_flips, plan_fingerprint, with_block_switch

    ctx = SimpleNamespace(model=model)
    flips = block_flips(ctx, profile, {plan_fingerprint(ctx, profile)})
    return [(block, name, with_block_switch(profile, block, name, not getattr(profile.for_block(block), name)))
            for block, name in flips]


def test_block_overrides_are_checked_and_canonical():
    from micronet.export.fast.profiles import BLOCK_SWITCHES, check_block_overrides

    assert check_block_overrides([(3, "roll_2d", False), (1, "merged_groups", True), (3, "roll_2d", False)]) == \
        ((1, "merged_groups", True), (3, "roll_2d", False))
    for bad, message in [((0, "pixel_pairs", False), "not a per-block switch"),
                         ((-1, "roll_2d", False), "block >= 0"), ((0, "roll_2d", 1), "true/false"),
                         ((True, "roll_2d", False), "block >= 0"), ((0, "roll_2d"), "is \\(block, switch, on\\)")]:
        with pytest.raises(ValueError, match=message):
            check_block_overrides([bad])
    assert "merged_stem" not in BLOCK_SWITCHES and "gather_shifts" not in BLOCK_SWITCHES
    assert set(BLOCK_SWITCHES) <= set(REWRITES)
    base = PROFILES["xnnpack"]
    profile = dataclasses.replace(base, blocks=((2, "roll_2d", not base.roll_2d),))
    assert profile.for_block(2).roll_2d is not base.roll_2d and profile.for_block(2).blocks == ()
    assert profile.for_block(1) is profile and profile.for_block(1).roll_2d is base.roll_2d


def test_a_block_exception_changes_that_block_and_not_the_blocks_before_it():
    """The planner reads each unit's switches from its own block: a flip in block b leaves every unit of the
    blocks before b - 1 planned as before (b - 1 may change the layout it hands to b), and m0 has flips
    that change its graph in most of the switches the planner reads per block."""
    from micronet.export.fast.profiles import BLOCK_SWITCHES

    model = _recalibrated("m0")
    base = PROFILES["xnnpack"]
    whole = fast_plan(model, base)
    flips = _per_block_flips(model, base)
    assert len({name for _, name, _ in flips}) >= len(BLOCK_SWITCHES) // 2
    for block, name, profile in flips:
        plan = fast_plan(model, profile)
        changed = [i for i, (a, b) in enumerate(zip(whole.units, plan.units)) if _unit_key(a) != _unit_key(b)]
        assert changed, (block, name)
        assert min(plan.units[i].block for i in changed) >= block - 1, (block, name)


def _unit_key(unit) -> str:
    from micronet.export.fast.plan import FastPlan

    return FastPlan(profile=None, stem=None, units=[unit]).fingerprint()


@pytest.mark.parametrize("target", ["xnnpack", pytest.param("onnxruntime", marks=pytest.mark.slow)])
def test_every_per_block_flip_is_exact(target):
    """Each block exception the tuner can try computes the training form's function (m0: every flip that
    changes the graph)."""
    model = _recalibrated("m0")
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ref = model(x).double()
        for block, name, profile in _per_block_flips(model, PROFILES[target]):
            out = to_fast_deploy(model, profile=profile)(x).double()
            assert float((out - ref).abs().max() / ref.abs().max()) <= LIMIT, (block, name)


@pytest.mark.slow
def test_random_mixes_of_block_exceptions_are_exact():
    """Neighbouring blocks with different switches must still hand each other the layouts they expect:
    release-m3 (the most blocks and groups) with random sets of exceptions, on both profiles."""
    import random

    from micronet.export.fast.profiles import BLOCK_SWITCHES

    model = _recalibrated("release-m3")
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(10))
    rng = random.Random(0)
    with torch.no_grad():
        ref = model(x).double()
        for target in ("xnnpack", "onnxruntime"):
            base = PROFILES[target]
            for _ in range(6):
                blocks = {(rng.randrange(len(model.blocks)), rng.choice(BLOCK_SWITCHES)) for _ in range(8)}
                profile = dataclasses.replace(base, blocks=tuple(sorted(
                    (b, n, not getattr(base, n)) for b, n in blocks)))
                out = to_fast_deploy(model, profile=profile)(x).double()
                assert float((out - ref).abs().max() / ref.abs().max()) <= LIMIT, profile.blocks
