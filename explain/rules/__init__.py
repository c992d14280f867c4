"""LRP rules: small objects of settings that one generic mechanism applies.

A rule turns the relevance ``R`` at a module's output into relevance at its inputs. Linear
layers (``Linear``, ``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d``, interpolation) share one
formula: a rule is a list of *groups*, each a coefficient and *terms* (an input modifier and a
parameter modifier); z⁺, γ and α-β are computed faster through an identity
(:class:`SignSplitRule`) but mean exactly this::

    z_g   = Σ_t sign_t · f(in_t(x); θ_t)              (f: the layer with modified parameters)
    R_in  = Σ_g coef_g · Σ_t sign_t · in_t(x) ⊙ J_tᵀ (R / stab(z_g))

where ``J_tᵀ`` is the layer's adjoint (the input gradient) with parameters ``θ_t`` (both from
:mod:`explain.backend`) and ``stab(z) = z + ε·sign(z)`` (sign(0) = 1). With that, the usual
rules read (contributions ``z_ij = x_i w_ij``; Montavon et al. 2019, "Layer-wise relevance
propagation: an overview"):

* ε (``Epsilon``): one term (x; W, b).
* z⁺ (``ZPlus``): (x⁺; W⁺) + (x⁻; W⁻), no bias: only positive contributions count (outputs
  without any positive contribution fall back to their negative ones, which conserves relevance).
* z^B (``ZBox``, bounds l ≤ x ≤ h; [0, 0] where every channel is 0): (x; W) − (l; W⁺) − (h; W⁻).
  ``ZBox(study_published=True)`` is the study's published variant: (x; W) − (l; W⁺) − (h; W⁺),
  i.e. max(0, W) where z^B needs min(0, W).
* γ (``Gamma``), sign-aware: outputs with z_j ≥ 0 amplify their positive contributions
  ``z_ij + γ z_ij⁺`` (bias b + γb⁺), outputs with z_j < 0 their negative ones ``z_ij + γ z_ij⁻``
  (bias b + γb⁻), so the denominator never gets closer to 0 than z_j itself.
* α-β (``AlphaBeta``): α·[positive group (x⁺; W⁺) + (x⁻; W⁻)] − β·[negative group (x⁺; W⁻) + (x⁻; W⁺)].
* flat (``Flat``): (1; 1) on data voxels: relevance spread evenly over the receptive field.
* w² (``WSquare``): (1; W²).

Non-linear and combining modules have rules of their own: ``Pass`` (activations, BatchNorm that
was not merged: R_in = R), ``Norm`` for sums (R_k = x_k / stab(Σ x) · R: residual additions
split relevance in proportion to their contributions), ``SignalTakesAll`` for gates
(:class:`explain.layers.Gate`: R_signal = R, R_gate = 0).

**Conservation** (:attr:`Rule.conservation`). For a rule whose denominator is the sum of the
contributions it distributes, ``Σ_i R_i = Σ_j R_j · z'_j / stab(z'_j)``, so a layer loses
``|Σ_i R_i − Σ_j R_j| ≤ Σ_j |R_j| · ε / (|z'_j| + ε)`` (the stabiliser's tolerance) plus
the relevance of outputs without any contribution (z' = 0: z^B and flat on all-zero
background). ``exact``: that holds whatever the biases (they are not in z'); ``bias``: it holds
when the layer has no bias, otherwise the bias takes its share ``R_j · b'_j / stab(z'_j)``
(ε, γ); ``none``: not conservative (α-β: an output with no negative contribution hands on
α·R_j).
"""

from explain.backend import conv3d, layer_adjoint, layer_forward
from explain.rules.base import LinearRule, Norm, Pass, Rule, SignalTakesAll, Term, stabilize
from explain.rules.basic import Epsilon, Flat, ParameterFreeEpsilon, WSquare, ZBox, data_mask
from explain.rules.signsplit import AlphaBeta, Gamma, SignSplitRule, ZPlus

__all__ = ["AlphaBeta", "Epsilon", "Flat", "Gamma", "LinearRule", "Norm", "ParameterFreeEpsilon", "Pass", "Rule",
           "SignSplitRule", "SignalTakesAll", "Term", "WSquare", "ZBox", "ZPlus", "conv3d", "data_mask",
           "layer_adjoint", "layer_forward", "stabilize"]
