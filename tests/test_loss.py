import pytest
import torch

from fastpg.loss import (
    masked_mean,
    masked_mean_std,
    masked_normalize,
    reinforce_loss,
    reinforce_loss_reference,
)


def _batch(T=9, N=5, seed=0, p_mask=0.7):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(T, N, 3, generator=g, dtype=torch.float64, requires_grad=True)
    action = torch.randint(0, 3, (T, N), generator=g)
    ret = torch.randn(T, N, generator=g, dtype=torch.float64) * 10 + 3
    mask = torch.rand(T, N, generator=g) < p_mask
    value = torch.randn(T, N, generator=g, dtype=torch.float64, requires_grad=True)
    return logits, action, ret, mask, value


def test_masked_stats_match_boolean_indexing():
    _, _, x, mask, _ = _batch()
    torch.testing.assert_close(masked_mean(x, mask), x[mask].mean())
    mean, std = masked_mean_std(x, mask)
    torch.testing.assert_close(mean, x[mask].mean())
    torch.testing.assert_close(std, x[mask].std(unbiased=False))
    z = masked_normalize(x, mask)
    torch.testing.assert_close(z[mask].mean(), torch.zeros((), dtype=x.dtype), atol=1e-12, rtol=0)
    torch.testing.assert_close(z[mask].std(unbiased=False), torch.ones((), dtype=x.dtype), atol=1e-6, rtol=0)
    assert torch.all(z[~mask] == 0)


def test_masked_stats_empty_mask_is_zero_not_nan():
    x = torch.randn(4, 3)
    mask = torch.zeros(4, 3, dtype=torch.bool)
    assert masked_mean(x, mask).item() == 0.0
    assert all(v.item() == 0.0 for v in masked_mean_std(x, mask))
    assert torch.isfinite(masked_normalize(x, mask)).all()


@pytest.mark.parametrize("baseline", ["none", "mean", "value"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("entropy_coef", [0.0, 0.01])
def test_reinforce_loss_matches_reference_value_and_gradient(baseline, normalize, entropy_coef):
    logits, action, ret, mask, value = _batch(seed=["none", "mean", "value"].index(baseline) * 2 + normalize)
    dist = torch.distributions.Categorical(logits=logits)
    log_prob, entropy = dist.log_prob(action), dist.entropy()
    kw = dict(baseline=baseline, normalize=normalize, value=value, entropy=entropy, entropy_coef=entropy_coef)
    loss, stats = reinforce_loss(log_prob, ret, mask, **kw)
    ref = reinforce_loss_reference(log_prob, ret, mask, **kw)
    torch.testing.assert_close(loss, ref)
    g_fast = torch.autograd.grad(loss, (logits, value), retain_graph=True, allow_unused=True)
    g_ref = torch.autograd.grad(ref, (logits, value), allow_unused=True)
    for a, b in zip(g_fast, g_ref):
        if a is None:
            assert b is None
        else:
            torch.testing.assert_close(a, b)
    assert set(stats) >= {"policy_loss", "value_loss", "entropy", "mask_frac"}
    assert not any(v.requires_grad for v in stats.values())


def test_reinforce_loss_hand_computed():
    # Two valid entries with returns 1 and 3; no normalization: loss = -(1*lp0 + 3*lp1)/2.
    log_prob = torch.tensor([[-0.5, -1.0], [-2.0, -3.0]], requires_grad=True)
    ret = torch.tensor([[1.0, 100.0], [3.0, 100.0]])
    mask = torch.tensor([[True, False], [True, False]])
    loss, _ = reinforce_loss(log_prob, ret, mask, normalize=False)
    torch.testing.assert_close(loss, torch.tensor(-(1 * -0.5 + 3 * -2.0) / 2))
    loss.backward()
    torch.testing.assert_close(log_prob.grad, torch.tensor([[-0.5, 0.0], [-1.5, 0.0]]))
    # Normalized: advantages become -1 and +1.
    loss, _ = reinforce_loss(log_prob.detach(), ret, mask, normalize=True)
    torch.testing.assert_close(loss, torch.tensor(-(-1 * -0.5 + 1 * -2.0) / 2), atol=1e-6, rtol=0)


def test_masked_entries_do_not_influence_loss():
    logits, action, ret, mask, value = _batch(seed=5)
    log_prob = torch.distributions.Categorical(logits=logits).log_prob(action)
    loss1, _ = reinforce_loss(log_prob, ret, mask, baseline="value", value=value)
    ret2 = torch.where(mask, ret, torch.full_like(ret, 1e9))
    loss2, _ = reinforce_loss(log_prob, ret2, mask, baseline="value", value=value)
    torch.testing.assert_close(loss1, loss2)


def test_reinforce_loss_errors():
    x, m = torch.zeros(3, 2), torch.ones(3, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="baseline must be one of"):
        reinforce_loss(x, x, m, baseline="median")
    with pytest.raises(ValueError, match="needs the value predictions"):
        reinforce_loss(x, x, m, baseline="value")
    with pytest.raises(ValueError, match="log_prob has shape"):
        reinforce_loss(torch.zeros(3), x, m)
    with pytest.raises(ValueError, match="mask must be torch.bool"):
        reinforce_loss(x, x, m.float())
