import torch

from itda_lens.core.metrics import LossMetrics, ReconstructionMetrics, next_token_losses


def test_fvu_divides_means_over_all_tokens():
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 2.0]], dtype=torch.float64)
    x_hat = torch.tensor([[1.0, 1.0], [3.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    metrics = ReconstructionMetrics()
    metrics.update(x[:2], x_hat[:2], (torch.tensor([[0, 1], [0, 1]]), torch.tensor([[1.0, 0.0], [2.0, 3.0]])))
    metrics.update(x[2:], x_hat[2:], (torch.tensor([[0, 1]]), torch.tensor([[1.0, 1.0]])))
    result = metrics.result()
    mean = x.mean(0)
    assert abs(result["fvu"] - (1 + 0 + 4) / 3 / ((x - mean).pow(2).sum(1).mean())) < 1e-9
    assert abs(result["mse"] - 5 / 6) < 1e-9
    assert abs(result["l0"] - 5 / 3) < 1e-9


def test_l0_counts_an_atom_chosen_twice_once():
    """Plain matching pursuit may pick an atom again; the token still uses one atom there
    (as the reference implementation counts it, on its dense codes)."""
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    metrics = ReconstructionMetrics()
    indices = torch.tensor([[3, 5, 3], [4, 4, 4]])
    values = torch.tensor([[1.0, 0.5, 0.2], [1.0, -0.5, -0.5]])
    metrics.update(x, x, (indices, values))
    assert metrics.result()["l0"] == 1.0  # atoms 3 and 5; atom 4's coefficients sum to 0


def test_next_token_losses_skip_bos_and_padding():
    logits = torch.randn(1, 5, 7)
    tokens = torch.tensor([[0, 3, 4, 5, 6]])
    mask = torch.tensor([[False, True, True, True, False]])
    losses = next_token_losses(logits, tokens, mask)
    want = torch.nn.functional.cross_entropy(logits[0, 1:3], tokens[0, 2:4], reduction="none")
    torch.testing.assert_close(losses, want)


def test_loss_score():
    metrics = LossMetrics()
    metrics.update(torch.tensor([1.0, 1.0]), torch.tensor([1.5, 1.5]), torch.tensor([6.0, 6.0]))
    result = metrics.result()
    assert abs(result["ce_loss_score"] - 0.9) < 1e-12
    assert abs(result["delta_lm_loss"] - 0.5) < 1e-12
