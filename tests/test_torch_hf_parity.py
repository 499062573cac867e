"""Live parity with torch.optim.Adafactor and transformers.Adafactor, step by step, on CPU.

Both references run in float32 on the same gradients; after every step the params must agree.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

# Live references: a missing torch or transformers fails the suite instead of skipping.
import torch  # noqa: E402
import transformers  # noqa: E402
from helpers import assert_trees_close
from helpers import max_rel_diff
from helpers import run_steps

import adafactor_jax as af

STEPS = 30
# The atol is 1e-6 of each leaf's largest |value| (a few f32 ulps); the rtol is the target.
RTOL, ATOL = 1e-5, 1e-6
MAX_SEEN: dict[str, float] = {}

# Leaves of rank 0 to 4; the gradient scale differs per leaf so that small gradients (where
# PyTorch's clamped epsilon matters) and large ones (update clipping) are both exercised.
SHAPES = {"s": (), "b": (7,), "w": (5, 3), "sq": (6, 6), "t3": (4, 3, 2), "t4": (2, 5, 3, 4)}
GRAD_SCALE = {"s": 0.5, "b": 1.0, "w": 1e-3, "sq": 3.0, "t3": 0.1, "t4": 1.0}


def make_params(seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


def make_grads(seed: int = 1, steps: int = STEPS) -> list[dict]:
  rng = np.random.default_rng(seed)
  return [{k: (GRAD_SCALE[k] * rng.normal(size=s)).astype(np.float32) for k, s in SHAPES.items()}
          for _ in range(steps)]


def run_ours(tx: optax.GradientTransformation, params: dict, grads: list[dict]) -> list[dict]:
  out, _ = run_steps(tx, jax.tree.map(jnp.asarray, params), grads)
  return [jax.tree.map(np.asarray, p) for p in out]


def run_torch(make_opt, params: dict, grads: list[dict]) -> list[dict]:
  tensors = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()}
  opt = make_opt(list(tensors.values()))
  out = []
  for g in grads:
    for k, t in tensors.items():
      t.grad = torch.tensor(g[k])
    opt.step()
    out.append({k: t.detach().numpy().copy() for k, t in tensors.items()})
  return out


def compare(ours: list[dict], theirs: list[dict], p0: dict, label: str) -> None:
  for i, (x, y) in enumerate(zip(ours, theirs)):
    assert_trees_close(x, y, RTOL, ATOL, f"{label} step {i + 1}")
  # The displacement from the start must match too, so that tiny updates (warmup_init) are
  # checked rather than hidden under the params' magnitude: within 1e-2 of the leaf's largest
  # displacement, plus the f32 rounding of the params themselves (8 ulps of the largest |p|).
  ulp = float(np.finfo(np.float32).eps)
  for i, (x, y) in enumerate(zip(ours, theirs)):
    for k in x:
      dx, dy = x[k].astype(np.float64) - p0[k], y[k].astype(np.float64) - p0[k]
      tol = 1e-2 * np.abs(dy).max() + 8 * ulp * np.abs(p0[k]).max()
      assert np.abs(dx - dy).max() <= tol, f"{label} displacement of {k} at step {i + 1}"
  MAX_SEEN[label] = max(max_rel_diff(x, y) for x, y in zip(ours, theirs))


# --------------------------------------------------------------------------------------------
# torch.optim.Adafactor

TORCH_SINGLE = {
    "default": dict(),
    "lr_0.1": dict(lr=0.1),
    "lr_1e-3": dict(lr=1e-3),
    "beta2_decay_-0.5": dict(beta2_decay=-0.5),
    "beta2_decay_-1": dict(beta2_decay=-1.0),
    "beta2_decay_0": dict(beta2_decay=0.0),
    "eps1_1e-3": dict(eps=(1e-3, 1e-3)),
    "eps1_0": dict(eps=(0.0, 1e-3)),
    "eps2_0.5": dict(eps=(None, 0.5)),
    "d_1.5": dict(d=1.5),
    "weight_decay": dict(lr=0.05, weight_decay=0.1),
    "maximize": dict(maximize=True),
    "maximize_wd": dict(weight_decay=0.1, maximize=True),
}

TORCH_CHOICES = {
    "lr": [1e-2, 0.05, 3e-3],
    "beta2_decay": [-0.8, -0.6, -1.0],
    "eps": [(None, 1e-3), (1e-2, 1e-3), (1e-30, 0.3)],
    "d": [1.0, 1.2, 2.0],
    "weight_decay": [0.0, 0.05, 0.3],
    "maximize": [False, True],
}


def random_combo(choices: dict, seed: int) -> dict:
  rng = np.random.default_rng(seed)
  return {k: v[rng.integers(len(v))] for k, v in choices.items()}


TORCH_CASES = list(TORCH_SINGLE.items()) + [
    (f"random_{i}", random_combo(TORCH_CHOICES, 100 + i)) for i in range(5)]


@pytest.mark.parametrize("name,kwargs", TORCH_CASES, ids=[c[0] for c in TORCH_CASES])
def test_torch_adafactor_matches_torch(name, kwargs):
  params, grads = make_params(0), make_grads(1)
  ours = run_ours(af.torch_adafactor(**kwargs), params, grads)
  theirs = run_torch(lambda p: torch.optim.Adafactor(p, **kwargs), params, grads)
  compare(ours, theirs, params, f"torch[{name}]")


FACTORED = ("w", "sq", "t3", "t4")  # the leaves of SHAPES that torch factors (rank >= 2)


def zero_rows_and_columns(grads: list[dict]) -> list[dict]:
  """The gradients with a zero row and a zero column in every slice of the factored leaves."""
  grads = jax.tree.map(np.copy, grads)
  for g in grads:
    for k in FACTORED:
      g[k][..., 1, :] = 0.0
      g[k][..., 0] = 0.0
  return grads


@pytest.mark.parametrize("eps1", [None, 1e-3])
def test_torch_adafactor_zero_rows_and_columns_match_torch(eps1):
  """A row or column of zero gradients makes its statistic zero and its rsqrt infinite; the
  estimate's floor eps1**2 caps the product of the row and column rsqrt, as PyTorch clamps the
  estimate itself (and the other entries are unchanged)."""
  params, grads = make_params(0), zero_rows_and_columns(make_grads(1))
  kwargs = dict(eps=(eps1, 1e-3))
  ours = run_ours(af.torch_adafactor(**kwargs), params, grads)
  theirs = run_torch(lambda p: torch.optim.Adafactor(p, **kwargs), params, grads)
  compare(ours, theirs, params, f"torch[zero rows and columns, eps1={eps1}]")


def test_torch_adafactor_zero_rows_with_underflowing_eps1_stay_finite():
  """Deliberate difference: with eps1=1e-30 the floor eps1**2 underflows in float32, and PyTorch
  multiplies the zero gradients by an infinite rsqrt: NaN there (and its update RMS is NaN, so
  it skips the clipping). Ours caps the rsqrt at that of the smallest normal number: those
  entries do not move, and the whole step stays finite."""
  params, grads = make_params(0), zero_rows_and_columns(make_grads(1))
  kwargs = dict(eps=(1e-30, 1e-3))
  ours = run_ours(af.torch_adafactor(**kwargs), params, grads)
  theirs = run_torch(lambda p: torch.optim.Adafactor(p, **kwargs), params, grads)
  for i, (x, y) in enumerate(zip(ours, theirs)):
    for k in x:
      nan = np.isnan(y[k])
      assert nan.any() == (k in FACTORED), f"{k} step {i + 1}"
      assert np.all(np.isfinite(x[k])), f"{k} step {i + 1}"
      np.testing.assert_array_equal(x[k][nan], params[k][nan], err_msg=f"{k} step {i + 1}")


def test_torch_eps1_none_is_resolved_per_leaf():
  # Deliberate difference: PyTorch resolves eps1=None from the FIRST parameter of the group
  # (here bfloat16, eps = 2**-7) and reuses it for the float32 one, whose small gradients are
  # then damped. We resolve it per leaf: the float32 leaf moves as in a float32-only torch group.
  rng = np.random.default_rng(3)
  p16 = rng.normal(size=(4, 3)).astype(np.float32)
  p32 = rng.normal(size=(5,)).astype(np.float32)
  grads = [(rng.normal(size=(4, 3)).astype(np.float32),
            (1e-3 * rng.normal(size=(5,))).astype(np.float32)) for _ in range(STEPS)]

  a = torch.nn.Parameter(torch.tensor(p16, dtype=torch.bfloat16))
  b = torch.nn.Parameter(torch.tensor(p32))
  mixed = torch.optim.Adafactor([a, b], lr=0.01)
  alone_b = torch.nn.Parameter(torch.tensor(p32))
  alone = torch.optim.Adafactor([alone_b], lr=0.01)

  tx = af.torch_adafactor(lr=0.01)
  params = {"a": jnp.asarray(p16, jnp.bfloat16), "b": jnp.asarray(p32)}
  state = tx.init(params)
  step = jax.jit(tx.update)
  for i, (g16, g32) in enumerate(grads):
    a.grad = torch.tensor(g16, dtype=torch.bfloat16)
    b.grad = torch.tensor(g32)
    alone_b.grad = torch.tensor(g32)
    mixed.step()
    alone.step()
    updates, state = step({"a": jnp.asarray(g16, jnp.bfloat16), "b": jnp.asarray(g32)}, state,
                          params)
    params = optax.apply_updates(params, updates)
    ours_b = np.asarray(params["b"])
    np.testing.assert_allclose(ours_b, alone_b.detach().numpy(), rtol=RTOL,
                               atol=ATOL * np.abs(p32).max(), err_msg=f"step {i + 1}")
  # torch's mixed group moved the float32 leaf much less (its eps1 is bf16's 2**-7).
  moved_alone = np.abs(alone_b.detach().numpy() - p32).max()
  moved_mixed = np.abs(b.detach().numpy() - p32).max()
  assert moved_mixed < 0.5 * moved_alone
  # Our bf16 leaf does use bf16's epsilon: with eps=(2**-7, .) given explicitly it is the same.
  explicit = af.torch_adafactor(lr=0.01, eps=(2.0**-7, 1e-3))
  g = {"a": jnp.asarray(grads[0][0], jnp.bfloat16), "b": jnp.asarray(grads[0][1])}
  p = {"a": jnp.asarray(p16, jnp.bfloat16), "b": jnp.asarray(p32)}
  u1, _ = af.torch_adafactor(lr=0.01).update(g, af.torch_adafactor(lr=0.01).init(p), p)
  u2, _ = explicit.update(g, explicit.init(p), p)
  np.testing.assert_array_equal(np.asarray(u1["a"], np.float32), np.asarray(u2["a"], np.float32))


def test_every_torch_argument_is_accepted():
  """A drop-in: torch.optim.Adafactor's arguments (from the live class, but params) with its
  defaults; `foreach` has no effect (the same compiled step) and must be a bool or None."""
  import inspect
  torch_args = {n: p.default for n, p in
                inspect.signature(torch.optim.Adafactor.__init__).parameters.items()
                if n not in ("self", "params")}
  ours = inspect.signature(af.torch_adafactor).parameters
  assert set(torch_args) <= set(ours)
  assert all(ours[n].default == d for n, d in torch_args.items() if n != "eps"), torch_args
  assert tuple(ours["eps"].default) == tuple(torch_args["eps"])
  af.torch_adafactor(**torch_args)
  p, g = {"w": jnp.ones((3, 4))}, {"w": jnp.arange(12.0).reshape(3, 4)}
  updates = [tx.update(g, tx.init(p), p)[0]["w"] for tx in
             (af.torch_adafactor(), af.torch_adafactor(foreach=True))]
  np.testing.assert_array_equal(updates[0], updates[1])
  with pytest.raises(ValueError, match="foreach must be a bool, got 'yes'"):
    af.torch_adafactor(foreach="yes")


def test_torch_argument_errors_match_torch():
  for kwargs in [dict(lr=-1.0), dict(beta2_decay=0.5), dict(eps=(-1.0, 1e-3)),
                 dict(eps=(None, -1.0)), dict(d=0.5), dict(weight_decay=-0.1)]:
    with pytest.raises(ValueError):
      torch.optim.Adafactor([torch.nn.Parameter(torch.zeros(2))], **kwargs)
    with pytest.raises(ValueError):
      af.torch_adafactor(**kwargs)


# --------------------------------------------------------------------------------------------
# transformers.Adafactor

HF_SINGLE = {
    "default": dict(),
    "warmup_init": dict(warmup_init=True),
    "lr_0.05": dict(lr=0.05, relative_step=False),
    "lr_0.5_no_scale": dict(lr=0.5, relative_step=False, scale_parameter=False),
    "no_scale_parameter": dict(scale_parameter=False),
    "eps1_1e-3": dict(eps=(1e-3, 1e-3)),
    "eps2_0.5": dict(eps=(1e-30, 0.5)),
    "clip_0.5": dict(clip_threshold=0.5),
    "decay_rate_-0.5": dict(decay_rate=-0.5),
    "beta1_0.9": dict(beta1=0.9),
    "beta1_0": dict(beta1=0.0),
    "weight_decay": dict(weight_decay=0.5),
    "weight_decay_lr": dict(weight_decay=0.5, lr=0.05, relative_step=False),
    "weight_decay_no_scale": dict(weight_decay=0.5, scale_parameter=False),
}

HF_CHOICES = {
    "eps": [(1e-30, 1e-3), (1e-8, 1e-2)],
    "clip_threshold": [1.0, 0.7, 2.0],
    "decay_rate": [-0.8, -0.6],
    "beta1": [None, 0.5, 0.9],
    "weight_decay": [0.0, 0.1],
    "scale_parameter": [True, False],
    "step": [("relative", False), ("relative", True), ("lr", 0.05), ("lr", 0.01)],
}


def hf_combo(seed: int) -> dict:
  kw = random_combo(HF_CHOICES, seed)
  kind, value = kw.pop("step")
  if kind == "relative":
    kw.update(relative_step=True, warmup_init=value)
  else:
    kw.update(relative_step=False, lr=value)
  return kw


HF_CASES = list(HF_SINGLE.items()) + [(f"random_{i}", hf_combo(200 + i)) for i in range(5)]


@pytest.mark.parametrize("name,kwargs", HF_CASES, ids=[c[0] for c in HF_CASES])
def test_hf_adafactor_matches_transformers(name, kwargs):
  params, grads = make_params(0), make_grads(1)
  ours = run_ours(af.hf_adafactor(**kwargs), params, grads)
  theirs = run_torch(lambda p: transformers.Adafactor(p, **kwargs), params, grads)
  compare(ours, theirs, params, f"transformers[{name}]")


def test_hf_argument_errors():
  p = [torch.nn.Parameter(torch.zeros(2))]
  # As transformers: lr with relative_step=True, and warmup_init without relative_step.
  for kwargs in [dict(lr=0.1), dict(warmup_init=True, relative_step=False, lr=0.1)]:
    with pytest.raises(ValueError):
      transformers.Adafactor(p, **kwargs)
    with pytest.raises(ValueError):
      af.hf_adafactor(**kwargs)
  # Deliberate difference: relative_step=False without lr fails at construction here; in
  # transformers only at the first step, with a TypeError.
  with pytest.raises(ValueError, match="needs a learning rate"):
    af.hf_adafactor(relative_step=False)
  opt = transformers.Adafactor(p, relative_step=False)
  p[0].grad = torch.ones(2)
  with pytest.raises(TypeError):
    opt.step()
  with pytest.raises(ValueError):
    af.hf_adafactor(decay_rate=0.5)


def test_report_max_difference(capsys):
  with capsys.disabled():
    for lib in ("torch", "transformers"):
      seen = {k: v for k, v in MAX_SEEN.items() if k.startswith(lib)}
      if seen:
        worst = max(seen, key=seen.get)
        print(f"\n[parity] {lib}: {len(seen)} configurations x {STEPS} steps, "
              f"max |ours-ref|/max|ref| = {seen[worst]:.3g} ({worst})")
