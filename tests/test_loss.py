import pytest
import torch

from fastpg.loss import advantage, mean_std, reinforce_loss, reinforce_loss_reference, standardize


def _batch(seed: int, T: int = 7, N: int = 5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(T, N, 3, generator=g, requires_grad=True)
    action = torch.randint(0, 3, (T, N), generator=g)
    ret = torch.randn(T, N, generator=g) * 10 + 3
    mask = torch.rand(T, N, generator=g) < 0.7
    value = torch.randn(T, N, generator=g, requires_grad=True)
    return logits, action, ret, mask, value


def _loss_on_entries(log_prob, ret, mask, *, baseline, normalize, value, entropy, entropy_coef):
    """advantage + reinforce_loss on the entries the mask picks out, as the update runs them."""
    count = mask.sum().clamp_min(1).to(ret.dtype)
    r, lp, v, ent = ret[mask], log_prob[mask], value[mask], entropy[mask]
    base = {"none": None, "mean": r.sum() / count, "value": v}[baseline]
    adv = advantage(r, count, baseline=base, normalize=normalize)
    return reinforce_loss(
        lp, adv, count, ret=r, value=v if baseline == "value" else None, entropy=ent, entropy_coef=entropy_coef
    )


def test_mean_std_and_standardize_match_library_statistics():
    x = torch.randn(40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    count = torch.tensor(40.0, dtype=torch.float64)
    mean, std = mean_std(x, count)
    torch.testing.assert_close(mean, x.mean())
    torch.testing.assert_close(std, x.std(unbiased=False))
    torch.testing.assert_close(standardize(x, count), (x - x.mean()) / (x.std(unbiased=False) + 1e-8))


def test_no_entries_give_zeros_not_nan():
    empty, one = torch.zeros(0), torch.tensor(1.0)
    assert all(v.item() == 0.0 for v in mean_std(empty, one))
    loss, parts = reinforce_loss(empty, advantage(empty, one), one, entropy=empty)
    assert loss.item() == 0.0 and all(v.item() == 0.0 for v in parts.values())


@pytest.mark.parametrize("baseline", ["none", "mean", "value"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("entropy_coef", [0.0, 0.01])
def test_loss_on_entries_matches_the_masked_reference_value_and_gradient(baseline, normalize, entropy_coef):
    logits, action, ret, mask, value = _batch(seed=["none", "mean", "value"].index(baseline) * 2 + normalize)
    dist = torch.distributions.Categorical(logits=logits)
    log_prob, entropy = dist.log_prob(action), dist.entropy()
    kw = dict(baseline=baseline, normalize=normalize, value=value, entropy=entropy, entropy_coef=entropy_coef)
    loss, parts = _loss_on_entries(log_prob, ret, mask, **kw)
    ref = reinforce_loss_reference(log_prob, ret, mask, **kw)
    torch.testing.assert_close(loss, ref)
    g_fast = torch.autograd.grad(loss, (logits, value), retain_graph=True, allow_unused=True)
    g_ref = torch.autograd.grad(ref, (logits, value), allow_unused=True)
    for a, b in zip(g_fast, g_ref):
        if a is None:
            assert b is None
        else:
            torch.testing.assert_close(a, b)
    assert set(parts) == {"policy_loss", "value_loss", "entropy"}
    assert not any(v.requires_grad for v in parts.values())


def test_slices_add_up_to_the_whole_batch():
    logits, action, ret, mask, value = _batch(seed=9, T=13, N=11)
    log_prob = torch.distributions.Categorical(logits=logits).log_prob(action)[mask]
    r = ret[mask]
    count = torch.tensor(float(r.numel()))
    adv = advantage(r, count)
    whole, _ = reinforce_loss(log_prob, adv, count)
    parts = [reinforce_loss(log_prob[i : i + 7], adv[i : i + 7], count)[0] for i in range(0, r.numel(), 7)]
    torch.testing.assert_close(sum(parts), whole)


def test_reinforce_loss_hand_computed():
    # Two entries with returns 1 and 3; no normalization: loss = -(1*lp0 + 3*lp1)/2.
    log_prob = torch.tensor([-0.5, -2.0], requires_grad=True)
    ret, count = torch.tensor([1.0, 3.0]), torch.tensor(2.0)
    loss, _ = reinforce_loss(log_prob, advantage(ret, count, normalize=False), count)
    torch.testing.assert_close(loss, torch.tensor(-(1 * -0.5 + 3 * -2.0) / 2))
    loss.backward()
    torch.testing.assert_close(log_prob.grad, torch.tensor([-0.5, -1.5]))
    # Normalized: advantages become -1 and +1.
    loss, _ = reinforce_loss(log_prob.detach(), advantage(ret, count, normalize=True), count)
    torch.testing.assert_close(loss, torch.tensor(-(-1 * -0.5 + 1 * -2.0) / 2), atol=1e-6, rtol=0)


def test_masked_entries_do_not_influence_the_reference():
    logits, action, ret, mask, value = _batch(seed=5)
    log_prob = torch.distributions.Categorical(logits=logits).log_prob(action)
    loss1 = reinforce_loss_reference(log_prob, ret, mask, baseline="value", value=value)
    ret2 = torch.where(mask, ret, torch.full_like(ret, 1e9))
    loss2 = reinforce_loss_reference(log_prob, ret2, mask, baseline="value", value=value)
    torch.testing.assert_close(loss1, loss2)


def test_loss_errors_name_the_shapes():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match=r"adv has shape \(2,\) but log_prob has \(3,\)"):
        reinforce_loss(x, torch.zeros(2), torch.tensor(1.0))
    with pytest.raises(ValueError, match="value needs ret"):
        reinforce_loss(x, x, torch.tensor(1.0), value=x)
    # issue 23: shapes that would broadcast silently ([8, 1] against [8] gives an [8, 8] loss)
    with pytest.raises(ValueError, match=r"adv has shape \(2,\) but log_prob has \(8, 1\)"):
        reinforce_loss(torch.zeros(8, 1), torch.zeros(2), torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"adv has shape \(8,\) but log_prob has \(8, 1\)"):
        reinforce_loss(torch.zeros(8, 1), torch.zeros(8), torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"ret has shape \(3, 1\) but log_prob has \(3,\)"):
        reinforce_loss(x, x, torch.tensor(1.0), value=x, ret=torch.zeros(3, 1))
    with pytest.raises(ValueError, match=r"count must be a 0-dim tensor \(the entries in the loss\), got shape \(3,\)"):
        reinforce_loss(x, x, torch.ones(3))
    with pytest.raises(ValueError, match="count must be a 0-dim tensor .*, got int"):
        reinforce_loss(x, x, 3)
    assert reinforce_loss(x, x, torch.ones(1))[0].dim() == 0  # a one-element count is its number
    m = torch.ones(3, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="baseline must be none, mean or value"):
        reinforce_loss_reference(m.float(), m.float(), m, baseline="median")
    with pytest.raises(ValueError, match="bool mask"):
        reinforce_loss_reference(m.float(), m.float(), m.float())
