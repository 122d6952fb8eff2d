import pytest
import torch
import torch.nn.functional as F

from itda_lens.core.gram_rows import LEVELS, MARGIN, MIN_ROWS, GramRows, products


@pytest.fixture
def atoms():
    torch.manual_seed(0)
    return F.normalize(torch.randn(600, 64), dim=1)


def test_products_do_not_depend_on_their_companions(atoms):
    # What makes cached encoding reproducible: a Gram value is the same whichever rows
    # and columns it is computed with.
    whole = atoms @ atoms.T
    for rows in (1, 3, MIN_ROWS, 100):
        for columns in (1, 5, 200):
            i, j = torch.randperm(600)[:rows], torch.randperm(600)[:columns]
            assert torch.equal(products(atoms[i], atoms[j]), whole[i][:, j])


def test_a_buffer_with_room_for_every_row_is_the_gram_matrix(atoms):
    gram = GramRows(atoms)
    assert gram.complete and gram.width == 640
    assert torch.equal(gram.rows()[gram.slot], F.pad(atoms @ atoms.T, (0, 40)))


def test_rows_are_made_when_first_wanted_when_not_all_fit(atoms):
    gram = GramRows(atoms, budget_bytes=149 * 640 * 4)  # below the int8 matrix too (600 * 640 bytes)
    assert len(gram.buffer) == 149 and gram.n_held == 0
    slots = gram.fetch(torch.tensor([5, 3]))
    assert gram.n_held == 2 and torch.equal(gram.rows()[slots], F.pad((atoms @ atoms.T)[[5, 3]], (0, 40)))


def test_fetch_keeps_the_most_chosen_rows_within_the_budget(atoms):
    gram = GramRows(atoms, budget_bytes=4 * 640 * 4)
    assert len(gram.buffer) == 4 and gram.n_held == 0
    gram.count(torch.tensor([[7, 7, 7, 8, 8, 9]]))
    gram.fetch(torch.tensor([7, 8, 9, 10]))
    assert gram.n_held == 4
    slots = gram.fetch(torch.tensor([11]))  # evicts 10, chosen least (never)
    assert gram.slot[10] == -1 and gram.slot[7] >= 0 and gram.slot[11] == slots[0]
    assert torch.equal(gram.buffer[slots[0], :600], (atoms @ atoms.T)[11])
    assert torch.equal(gram.buffer[slots[0], 600:], torch.zeros(40))
    partial = gram.fetch(torch.arange(20, 26))  # more than fit: the first four are held
    assert (partial[:4] >= 0).all() and (partial[4:] == -1).all()


def test_growing_matches_a_fresh_buffer(atoms):
    for budget in (1 << 30, 50 * 1024 * 4):
        grown = GramRows(atoms[:100], budget, room=300)
        grown.fetch(torch.arange(0, 100, 7))
        for end in (130, 250, 400, 600):  # 400 outgrows the room: a new buffer
            grown.grow(atoms[:end])
            assert grown.n_atoms == end and grown.width == -(-end // 128) * 128
        fresh = GramRows(atoms, budget)
        held = torch.nonzero(grown.slot >= 0)[:, 0]
        assert grown.complete == fresh.complete and len(grown.buffer) == len(fresh.buffer)
        assert torch.equal(grown.rows()[grown.slot[held]], F.pad(atoms[held] @ atoms.T, (0, 40)))


def test_a_budget_below_one_row_is_refused(atoms):
    with pytest.raises(ValueError, match="holds no row for 600 atoms; give at least 2560 bytes, or 0 for dense"):
        GramRows(atoms, budget_bytes=100)


@pytest.fixture
def shared():
    # Atoms with a large shared direction, as activations have: the quantized rows'
    # decomposition then matters.
    torch.manual_seed(2)
    return F.normalize(torch.randn(600, 64) + 2.0, dim=1)


def quantized_values(gram):
    """The Gram values the quantized buffer stands for, and how far off each may be."""
    n, along, across = gram.n_atoms, gram.along[: gram.n_atoms], gram.across[: gram.n_atoms]
    cosines = gram.rows()[gram.slot][:, :n].float() / LEVELS
    scale = across[:, None] * across[None, :]
    return along[:, None] * along[None, :] + scale * cosines, scale * 0.5 / LEVELS + MARGIN


def test_an_int8_matrix_when_only_it_fits(shared):
    exact = shared @ shared.T
    gram = GramRows(shared, budget_bytes=640 * 600)  # 1 byte a value fits, 4 do not
    assert gram.quantized and gram.complete and gram.buffer.dtype == torch.int8
    values, error = quantized_values(gram)
    assert ((values - exact).abs() <= error).all()
    assert (error < 0.5 / LEVELS).float().mean() > 0.9  # the shared direction makes most bounds tighter than int8's half step
    assert not GramRows(shared, budget_bytes=640 * 600 * 4).quantized  # float32 when it fits
    assert not GramRows(shared, budget_bytes=640 * 599).complete  # a float32 cache when neither fits


def test_no_int8_rows_without_the_compiled_steps(shared, monkeypatch):
    # The globals GramRows reads: the simulated NDIF server of test_nnsight re-imports modules.
    monkeypatch.setitem(GramRows._allocate.__globals__, "find_spec", lambda name: None)
    gram = GramRows(shared, budget_bytes=640 * 600)
    assert not gram.quantized and not gram.complete and gram.buffer.dtype == torch.float32


def test_growing_int8_rows_stays_within_the_bound(shared):
    grown = GramRows(shared[:100], budget_bytes=384 * 300 * 2, room=300)
    assert grown.quantized
    for end in (130, 300):
        grown.grow(shared[:end])
        values, error = quantized_values(grown)
        assert grown.complete and ((values - shared[:end] @ shared[:end].T).abs() <= error).all()


def test_outgrowing_int8_rows_leaves_no_split_behind(shared):
    grown = GramRows(shared[:100], budget_bytes=384 * 300 * 2, room=300)
    grown.grow(shared[:400])  # room for 600 atoms: neither the float32 nor the int8 matrix fits
    assert not grown.quantized and grown.buffer.dtype == torch.float32
    assert grown.direction is None and grown.along is None and grown.across is None
