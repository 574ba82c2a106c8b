"""The fast deploy form of a MicroNet: same function, a graph that XNNPACK (TFLite) and ONNX Runtime run fast.

``to_fast_deploy(model)`` takes the *training form* (BatchNorm folded here) and returns a module with the
same input (NCHW float32) and the same logits up to float32 rounding; every rewrite is exact algebra and
``tests/test_fast_deploy.py`` checks each variant against the training form. ``export.tf_graph`` lowers it to
TensorFlow for TFLite. How much each rewrite is worth, measured, with the date and the stack, is in
``docs/fast-graph.md``; here is what each does and why.

The package, in the order a graph is made:

* ``parse.py``: the training form parsed once into a flat list of units (kind, folded weights, activation,
  shuffles, map size, block, residual);
* ``profiles.py``: ``RuntimeProfile`` (one switch per runtime-dependent rewrite, and the ``CostModel``) and
  ``PROFILES``; ``cost_model.py``: the cost functions; ``permutations.py``: the channel-order algebra;
* ``planner.py``: every layout and grouping decision per unit, made before any module exists, recorded as
  an inspectable ``FastPlan`` (``plan.py``);
* ``emit.py``: plan entries and folded weights → modules (``modules.py``, ``shift_max.py``);
* ``forms.py``: passes over the built module tree (``linear_coefficients``, ``relu_max_form``,
  ``batch_one_form``); ``diagnose.py``: ``first_inexact_pass``.

The rewrites (numbers are referred to throughout; *switch* names the ``RuntimeProfile`` field that turns a
rewrite off, leaving a correct graph that does that step the general way):

1. **Channel permutations are never executed, they are tracked.** Every tensor has a *stored order*; a
   channel shuffle only relabels; per-channel parameters are laid out in the stored order and a 1×1 conv
   absorbs its input order into its weight columns and emits its rows in the order its consumer wants.
2. **The Shift-Max partner x~ costs (almost) nothing.** After a dense 1×1 conv it is a second conv whose rows
   are the shifted rows; after a grouped 1×1 conv a conv with rows rotated inside each group, then one
   rotation by a group; after a depthwise conv, the consumer-side order makes the shift *one* flat rotation:
   Micro-Block A's multiplier taps assigned diagonally (switch ``diagonal_taps``), B/C's channels stored
   cycle-interleaved.
3. **Shift-Max combine as separate products**: ``max_k(a_k·x + b_k·x~)`` as MULs and ADDs on separate
   operands, no stacking (stacking needs a concat and a split, two full copies per Shift-Max).
4. **Coefficients in three small ops**: the h_sigmoid clamp is fc2's fused RELU6 (its ``+3`` in the bias),
   the rescale and offsets one 1×1 depthwise conv; fc1 absorbs the pooled producer, and whichever of the
   producer's input or output is smaller is pooled.
5. **A K=1 Shift-Max feeding a linear op is not materialised** (switches ``pending_products``,
   ``pending_into_depthwise``): ``a·x + b·x~`` is emitted as the product ``[x, x~]·[a, b]`` and the consumer
   sums the two parts in its weights (a depthwise consumer becomes a grouped conv with two inputs a group).
6. **Grouped 1×1 convs stay grouped** where the stored order allows it (switch ``grouped_pointwise``);
   elsewhere a dense conv absorbs the permutation.
7. **(k,1)+(1,k) depthwise pair → one k×k depthwise** with the channel multiplier (switch
   ``merged_depthwise`` for the blocks; the stem's 3×1 + 1×3 is always one dense 3×3); the first conv's
   bias is not uniform after zero padding at the left/right border, so it is added back as a constant.
8. **Head as 1×1 convs on the pooled map**: the TFLite converter folds h_swish's ``+3`` into a *copy* of a
   FULLY_CONNECTED; CONV_2D + HARD_SWISH stays one op each.
9. **Grouped k×k convs with few outputs per group are merged** into as few groups as keep at most one GEMM
   tile of outputs each, zero weights between (switch ``merged_groups``): XNNPACK pads each group's
   outputs to the tile anyway, so the merge costs no MACs and gives the kernel a longer inner loop.
10. **Shift-Max after a B/C depthwise as one 2-D roll** (switch ``roll_2d``): a grouped expanding conv emits
    its natural order; after the shuffle the shift is one roll of the channels viewed as (groups,
    C/groups): two slice+concat pairs on a 5-D view, no masked products.
11. **Grouped 1×1 convs behind channel transposes** (switch ``channel_transposes``): when the stored order
    is one transpose of a mixed-radix view away from group-contiguous (or from what the consumer needs), a
    TRANSPOSE (delegated; it copies runs) lets the conv stay grouped, where the cost model says it pays.
12. **Narrow Shift-Max coefficients widened along W** (switch ``widened_coefficients``): (B, C, 1, 1) →
    (B, C, 1, W) by a MUL with ones, so XNNPACK's broadcast MUL makes H calls of W·C values, not H·W tiny
    ones.
13. **A stem with at most 8 output channels computes two output pixels per GEMM row** (switch
    ``pixel_pairs``): a 3×5 conv at stride (2, 4) with 2C outputs fills the tile; in NHWC the (H, W/2, 2C)
    result is the (H, W, C) map byte for byte (``PixelPairs``).
14. **For int8, max(p, q) as q + relu(p - q)** with p - q formed on the coefficients (``relu_max_form``).

ONNX Runtime (NCHW, MLAS) differs, so ``PROFILES["onnxruntime"]`` (the ``micronet export --format onnx``
graph) keeps rewrites 1, 3, 6, 7 for the stem and 8, and replaces the rest:

15. **depthwise pairs stay two convs** (``merged_depthwise`` off, so no rewrite 9): MLAS's broadcast border
    add costs more than the second conv;
16. **every Shift-Max shift is one channel GATHER** (``gather_shifts``), replacing rotations, rolls and
    partner convs; XNNPACK does not delegate GATHER, so the TFLite graph never has one;
17. **every grouped 1×1 conv stays grouped**, a GATHER before it when its input is not group-contiguous and
    after it when its consumer needs another order (``gather_shifts``): MLAS runs a dense 1×1 conv on
    channel counts off the 16-multiple as a padded NCHWc conv with reorders;
18. **hyper-functions as Gemms on the flat pooled vector** (``linear_coefficients``; ``LinearCoefficients``
    instead of rewrite 4's 1×1 convs, which became NCHWc convs with a reorder on either side);
19. **no widened coefficients, no pixel pairs, no pending product into a depthwise** (rewrites 12, 13, 5:
    NHWC layouts, and a two-input grouped conv that MLAS runs per group through im2col);
20. **for a batch of one, every Shift-Max product is a BatchNormalization** (``batch_one_form``) with the
    coefficients as scale (mean 0, variance 1, epsilon 0: exactly x·a): ORT's BatchNormalization scales a
    channel in one vectorised loop where its broadcast MUL pays per channel span.
"""

from __future__ import annotations

from .build import fast_plan, resolve_profile, to_fast_deploy
from .diagnose import first_inexact_pass
from .forms import batch_one_form, linear_coefficients, relu_max_form
from .modules import (ChannelGather, ChannelRoll, ChannelTranspose, Conv, FastBlock, FastHead, FastMicroNet,
                      PixelPairs)
from .plan import ChannelMove, DepthwisePlan, FastPlan, PointwisePlan, StemPlan, XTildePlan
from .profiles import PROFILES, REWRITES, CostModel, RuntimeProfile
from .shift_max import Coefficients, LinearCoefficients, Moved, PartnerConv, Rotations, ShiftMax

__all__ = ["to_fast_deploy", "fast_plan", "resolve_profile", "relu_max_form", "batch_one_form",
           "linear_coefficients", "first_inexact_pass", "FastMicroNet", "PROFILES", "REWRITES",
           "RuntimeProfile", "CostModel", "FastPlan", "StemPlan", "DepthwisePlan", "PointwisePlan", "XTildePlan",
           "ChannelMove", "ChannelTranspose", "ChannelGather", "ChannelRoll", "PixelPairs", "Conv", "FastBlock",
           "FastHead", "ShiftMax", "Coefficients", "LinearCoefficients", "PartnerConv", "Rotations", "Moved"]
