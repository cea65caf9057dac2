"""Advantage estimators against hand-computed values and plain-loop references."""

import math

import pytest
import torch

from rlhfkit import advantages as adv
from rlhfkit.advantages import (
    AdvantageInputs,
    AdvantageSettings,
    RunningMean,
    clip_scores,
    gae,
    get_advantage,
    grpo,
    informative_groups,
    overlong_penalty,
    register_advantage,
    reinforce,
    reinforce_plus_plus,
    rloo,
    token_rewards,
    whiten_scores,
)
from rlhfkit.errors import ConfigError, RlhfkitError

NAN = float("nan")


def random_mask(batch: int, length: int, holes: bool) -> torch.Tensor:
    """Right-padded response masks of random lengths (>= 1), optionally with interior holes."""
    lengths = torch.randint(1, length + 1, (batch,))
    mask = torch.arange(length) < lengths[:, None]  # (B, T)
    if holes:
        mask &= torch.rand(batch, length) > 0.3
        mask[:, 0] = True
    return mask


# --- GAE -----------------------------------------------------------------------------------------


def test_gae_by_hand():
    # row 0, gamma 1, lam 0.5, V = (0.5, 0.6, 0.7), r = (0, 0, 1):
    #   t2: delta = 1 + 0 - 0.7 = 0.3                      A = 0.3
    #   t1: delta = 0 + 0.7 - 0.6 = 0.1                    A = 0.1 + 0.5 * 0.3  = 0.25
    #   t0: delta = 0 + 0.6 - 0.5 = 0.1                    A = 0.1 + 0.5 * 0.25 = 0.225
    # row 1, one valid token: A = 2 - 1 = 1; padding (NaN) stays out
    rewards = torch.tensor([[0.0, 0.0, 1.0], [2.0, NAN, NAN]])
    values = torch.tensor([[0.5, 0.6, 0.7], [1.0, NAN, NAN]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    torch.testing.assert_close(advantages, torch.tensor([[0.225, 0.25, 0.3], [1.0, 0.0, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[0.725, 0.85, 1.0], [2.0, 0.0, 0.0]]))


def test_gae_discounts_by_hand():
    # V = 0, lam = 1, gamma 0.5: returns are discounted sums, R0 = 1 + 0.5 * 0 + 0.25 * 2 = 1.5
    advantages, returns = gae(
        torch.tensor([[1.0, 0.0, 2.0]]), torch.zeros(1, 3), torch.ones(1, 3), gamma=0.5, lam=1.0
    )
    torch.testing.assert_close(returns, torch.tensor([[1.5, 1.0, 2.0]]))
    torch.testing.assert_close(advantages, returns)


def loop_gae(rewards, values, mask, gamma, lam):
    """Textbook GAE, one sequence at a time, on the valid positions only."""
    advantages = torch.zeros_like(rewards)
    for row in range(rewards.shape[0]):
        positions = mask[row].nonzero().flatten().tolist()
        next_value, next_advantage = 0.0, 0.0
        for t in reversed(positions):
            delta = rewards[row, t].item() + gamma * next_value - values[row, t].item()
            next_advantage = delta + gamma * lam * next_advantage
            next_value = values[row, t].item()
            advantages[row, t] = next_advantage
    return advantages


@pytest.mark.parametrize("holes", [False, True])
def test_gae_matches_a_plain_loop(holes):
    torch.manual_seed(0)
    rewards, values = torch.randn(6, 9, dtype=torch.float64), torch.randn(6, 9, dtype=torch.float64)
    mask = random_mask(6, 9, holes)
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    expected = loop_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, torch.where(mask, expected + values, 0.0))


def test_gae_rejects_gamma_out_of_range():
    with pytest.raises(ConfigError, match="gamma=1.5 must lie in"):
        gae(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), gamma=1.5)


# --- GRPO and RLOO -------------------------------------------------------------------------------


def test_grpo_by_hand():
    # group [1, 2, 3]: mean 2, sample std 1 -> (-1, 0, 1)
    # group [4, 0, 0]: mean 4/3, deviations (8/3, -4/3, -4/3), sample var (96/9) / 2 = 48/9
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0, 0.0])
    std = math.sqrt(48 / 9)
    expected = torch.tensor([-1.0, 0.0, 1.0, 8 / 3 / std, -4 / 3 / std, -4 / 3 / std])
    torch.testing.assert_close(grpo(scores, 3, eps=0.0), expected)
    torch.testing.assert_close(
        grpo(scores, 3, scale_by_std=False), torch.tensor([-1.0, 0.0, 1.0, 8 / 3, -4 / 3, -4 / 3])
    )


def test_grpo_matches_a_loop_and_centres_each_group():
    torch.manual_seed(1)
    scores = torch.randn(12, dtype=torch.float64)
    expected = []
    for start in range(0, 12, 4):
        group = scores[start : start + 4].tolist()
        mean = sum(group) / 4
        std = math.sqrt(sum((s - mean) ** 2 for s in group) / 3)
        expected += [(s - mean) / (std + 1e-6) for s in group]
    advantages = grpo(scores, 4)
    torch.testing.assert_close(advantages, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(advantages.view(3, 4).sum(1), torch.zeros(3, dtype=torch.float64))


def test_rloo_by_hand_and_against_a_loop():
    # [1, 2, 3]: 1 - (2 + 3) / 2 = -1.5, 2 - (1 + 3) / 2 = 0, 3 - (1 + 2) / 2 = 1.5
    torch.testing.assert_close(
        rloo(torch.tensor([1.0, 2.0, 3.0]), 3), torch.tensor([-1.5, 0.0, 1.5])
    )
    torch.manual_seed(2)
    scores = torch.randn(15, dtype=torch.float64)
    expected = [
        scores[i] - sum(scores[j] for j in range(i // 5 * 5, i // 5 * 5 + 5) if j != i) / 4
        for i in range(15)
    ]
    torch.testing.assert_close(rloo(scores, 5), torch.stack(expected))
    # RLOO is G / (G - 1) times the centred score
    torch.testing.assert_close(rloo(scores, 5), 5 / 4 * grpo(scores, 5, scale_by_std=False))


@pytest.mark.parametrize("estimator", [grpo, rloo])
@pytest.mark.parametrize("group_size", [3, 7])
def test_identical_scores_give_exactly_zero(estimator, group_size):
    # exactly: with a std near 0, rounding noise in the mean would become a sizeable advantage
    for score in (0.7, 0.1, -2.3, 1 / 3):
        assert (estimator(torch.full((2 * group_size,), score), group_size) == 0).all()


@pytest.mark.parametrize("estimator", [grpo, rloo])
def test_group_errors_say_why(estimator):
    with pytest.raises(ConfigError, match="group_size=1 .*a group of one has none"):
        estimator(torch.ones(4), 1)
    with pytest.raises(ConfigError, match="group_size=4 does not divide the batch of 6"):
        estimator(torch.ones(6), 4)


# --- REINFORCE -----------------------------------------------------------------------------------


def test_running_mean_exact_and_decayed():
    exact = RunningMean()
    exact.update(torch.tensor([1.0, 3.0]))
    assert (exact.mean, exact.count) == (2.0, 2)
    exact.update(torch.tensor([6.0]))
    assert exact.mean == pytest.approx(10 / 3) and exact.count == 3  # (1 + 3 + 6) / 3
    decayed = RunningMean(decay=0.5)
    decayed.update(torch.tensor([1.0, 3.0]))
    decayed.update(torch.tensor([6.0]))
    assert decayed.mean == 4.0  # 0.5 * 2 + 0.5 * 6
    with pytest.raises(ConfigError, match="decay=1.0"):
        RunningMean(decay=1.0)


def test_reinforce_subtracts_the_mean_of_earlier_batches():
    baseline = RunningMean()
    # first batch: no past, so its own mean 2
    assert reinforce(torch.tensor([1.0, 3.0]), baseline).tolist() == [-1.0, 1.0]
    # second batch: baseline 2 from the first; then the mean of all four, 3.5
    assert reinforce(torch.tensor([4.0, 6.0]), baseline).tolist() == [2.0, 4.0]
    assert baseline.mean == 3.5


def test_reinforce_baseline_resumes_exactly():
    torch.manual_seed(3)
    batches = [torch.randn(4) for _ in range(5)]
    uninterrupted = RunningMean(decay=0.9)
    expected = [reinforce(b, uninterrupted) for b in batches]
    first = RunningMean(decay=0.9)
    got = [reinforce(b, first) for b in batches[:2]]
    resumed = RunningMean(decay=0.9)
    resumed.load_state_dict(first.state_dict())
    got += [reinforce(b, resumed) for b in batches[2:]]
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)
    assert resumed.state_dict() == uninterrupted.state_dict()
    with pytest.raises(RlhfkitError, match="lacks \\['count'\\]"):
        resumed.load_state_dict({"mean": 1.0})


# --- REINFORCE++ and reward shaping --------------------------------------------------------------


def test_reinforce_plus_plus_by_hand():
    # returns (gamma 1): row 0 r = (0, 1) -> G = (1, 1); row 1 r = (2) -> G = (2)
    # over valid tokens 1, 1, 2: mean 4/3, population std sqrt(2/9) -> (-1/√2, -1/√2, √2)
    rewards = torch.tensor([[0.0, 1.0], [2.0, NAN]])
    mask = torch.tensor([[1, 1], [1, 0]])
    advantages, returns = reinforce_plus_plus(rewards, mask, eps=0.0)
    torch.testing.assert_close(returns, torch.tensor([[1.0, 1.0], [2.0, 0.0]]))
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(advantages, torch.tensor([[-r, -r], [2 * r, 0.0]]))


def test_token_rewards_by_hand():
    scores = torch.tensor([1.0, 2.0])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    kl = torch.tensor([[0.1, 0.2, NAN], [0.3, 0.4, 0.5]])
    # -0.5 KL on each valid token; the score added on the last one
    torch.testing.assert_close(
        token_rewards(scores, mask, kl, kl_coef=0.5),
        torch.tensor([[-0.05, 0.9, 0.0], [-0.15, -0.2, 1.75]]),
    )
    torch.testing.assert_close(
        token_rewards(scores, mask), torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    )
    holes = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0]])
    torch.testing.assert_close(
        token_rewards(scores, holes), torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 2.0, 0.0, 0.0]])
    )


def test_token_rewards_sum_to_score_minus_kl_penalty():
    torch.manual_seed(4)
    scores, kl, mask = torch.randn(5), torch.rand(5, 8), random_mask(5, 8, holes=True)
    rewards = token_rewards(scores, mask, kl, kl_coef=0.1)
    torch.testing.assert_close(rewards.sum(1), scores - 0.1 * (kl * mask).sum(1))


def test_token_rewards_need_a_token_per_completion():
    with pytest.raises(ValueError, match=r"completions \[1\] have no response token"):
        token_rewards(torch.ones(2), torch.tensor([[1, 0], [0, 0]]))


def test_whiten_and_clip_scores():
    whitened = whiten_scores(torch.tensor([1.0, 3.0]))  # mean 2, population std 1
    torch.testing.assert_close(whitened, torch.tensor([-1.0, 1.0]))
    torch.testing.assert_close(
        whiten_scores(torch.tensor([1.0, 3.0]), shift_mean=False), torch.tensor([1.0, 3.0])
    )
    assert clip_scores(torch.tensor([-9.0, 0.5, 9.0]), 5.0).tolist() == [-5.0, 0.5, 5.0]
    with pytest.raises(ConfigError, match="bound=0"):
        clip_scores(torch.ones(2), 0)


# --- the registry and its calling convention -----------------------------------------------------


def test_every_registered_estimator_gives_token_level_advantages():
    torch.manual_seed(5)
    mask = random_mask(6, 5, holes=False)
    scores = torch.randn(6)
    inputs = AdvantageInputs(
        response_mask=mask,
        scores=scores,
        group_size=3,
        baseline=RunningMean(),
        token_rewards=token_rewards(scores, mask, torch.rand(6, 5), 0.1),
        values=torch.randn(6, 5),
    )
    assert adv.advantage_names() == ["gae", "grpo", "reinforce", "reinforce++", "rloo"]
    for name in adv.advantage_names():
        result = get_advantage(name)(inputs)
        assert result.advantages.shape == (6, 5), name
        assert (result.advantages[~mask] == 0).all(), name
    # sequence-level estimators broadcast over valid tokens
    per_token = get_advantage("rloo")(inputs).advantages
    torch.testing.assert_close(per_token, torch.where(mask, rloo(scores, 3)[:, None], 0.0))
    settings = AdvantageSettings(gamma=0.9, lam=0.7)
    result = get_advantage("gae")(inputs, settings)
    expected = gae(inputs.token_rewards, inputs.values, mask, 0.9, 0.7)
    torch.testing.assert_close(result.advantages, expected[0])
    torch.testing.assert_close(result.returns, expected[1])


def test_settings_reach_the_estimators():
    inputs = AdvantageInputs(
        response_mask=torch.ones(4, 2), scores=torch.tensor([0.0, 2.0, 1.0, 5.0]), group_size=2
    )
    dr_grpo = get_advantage("grpo")(inputs, AdvantageSettings(scale_by_std=False))
    torch.testing.assert_close(dr_grpo.advantages[:, 0], torch.tensor([-1.0, 1.0, -2.0, 2.0]))
    whitened = get_advantage("grpo")(inputs, AdvantageSettings(scale_by_std=False, whiten=True))
    # (-1, 1, -2, 2) over 8 tokens: mean 0, population std sqrt(2.5)
    torch.testing.assert_close(
        whitened.advantages[:, 0], torch.tensor([-1.0, 1.0, -2.0, 2.0]) / math.sqrt(2.5 + 1e-6)
    )


def test_registry_errors_name_the_fix():
    with pytest.raises(ConfigError, match="advantage='grop'.*did you mean 'grpo'"):
        get_advantage("grop")
    with pytest.raises(ConfigError, match="advantage='gae' needs token_rewards, values"):
        get_advantage("gae")(AdvantageInputs(response_mask=torch.ones(2, 3), scores=torch.ones(2)))
    with pytest.raises(RlhfkitError, match="'gae' is already registered"):
        register_advantage("gae")(lambda inputs, settings: None)
    with pytest.raises(RlhfkitError, match="unknown inputs \\['critic'\\]"):
        register_advantage("mine", needs=("critic",))
    with pytest.raises(ValueError, match=r"scores must have shape \(2,\).*got \(3,\)"):
        AdvantageInputs(response_mask=torch.ones(2, 3), scores=torch.ones(3))


def test_a_plugin_estimator_is_called_like_the_built_ins(monkeypatch):
    monkeypatch.setattr(adv, "_REGISTRY", dict(adv._REGISTRY))  # restored after the test

    @register_advantage("raw-score", needs=("scores",))
    def raw_score(inputs, settings):
        return adv.Advantages(
            torch.where(inputs.response_mask.bool(), inputs.scores[:, None], 0.0), None
        )

    result = get_advantage("raw-score")(
        AdvantageInputs(response_mask=torch.tensor([[1, 0]]), scores=torch.tensor([3.0]))
    )
    assert result.advantages.tolist() == [[3.0, 0.0]]


def test_a_plugin_math_function_is_called_by_its_parameter_names(monkeypatch):
    monkeypatch.setattr(adv, "_REGISTRY", dict(adv._REGISTRY))  # restored after the test

    @register_advantage("centred")
    def centred(scores, mask, eps):  # a field of the inputs, the mask, a setting
        return scores - scores.mean() + 0 * eps  # (B,): broadcast over each completion's tokens

    assert centred(torch.tensor([1.0, 3.0]), None, 0.0).tolist() == [-1.0, 1.0]  # unchanged
    assert get_advantage("centred").needs == {"scores"}
    result = get_advantage("centred")(
        AdvantageInputs(
            response_mask=torch.tensor([[1, 0], [1, 1]]), scores=torch.tensor([1.0, 3.0])
        )
    )
    assert result.advantages.tolist() == [[-1.0, 0.0], [1.0, 1.0]] and result.returns is None
    with pytest.raises(ConfigError, match="advantage='centred' needs scores"):
        get_advantage("centred")(AdvantageInputs(response_mask=torch.ones(2, 2)))
    with pytest.raises(RlhfkitError, match="takes \\['critic'\\], which are neither"):
        register_advantage("odd")(lambda scores, critic: scores)


def test_overlong_penalty_by_hand():
    # budget 10, buffer 4: free up to 6 tokens, then -(|y| - 6) / 4, -1 at the budget
    lengths = torch.tensor([3, 6, 7, 9, 10])
    torch.testing.assert_close(
        overlong_penalty(lengths, 10, 4), torch.tensor([0.0, 0.0, -0.25, -0.75, -1.0])
    )
    torch.testing.assert_close(
        overlong_penalty(lengths, 10, 4, 0.5)[2:], torch.tensor([-0.125, -0.375, -0.5])
    )
    with pytest.raises(ConfigError, match="overlong buffer=12 must lie in"):
        overlong_penalty(lengths, 10, 12)


def test_informative_groups_are_those_whose_scores_differ():
    scores = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.5])
    assert informative_groups(scores, 3).tolist() == [False, True, False]
    with pytest.raises(ConfigError, match="group_size=1"):
        informative_groups(scores, 1)
