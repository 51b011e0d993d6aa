"""The molecules domain: QM9 loading, EGNN equivariance, encoding, atom counts, samples on disk."""

from __future__ import annotations

import json
import shutil
import signal
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from toolkit import broken_valence

from rgdm.algorithms import TrainingContext
from rgdm.algorithms.base import score_data_rows
from rgdm.api import load
from rgdm.batch import Batch
from rgdm.cli import main
from rgdm.diffusion import EpsModel, GaussianDiffusion, NoiseSchedule, sample
from rgdm.domains import build_domain
from rgdm.domains.molecules import properties
from rgdm.domains.molecules.chemistry import Molecule, is_stable, molecule_from_smiles
from rgdm.domains.molecules.data import PROPERTIES, QM9DataError, convert_qm9, load_qm9, split_indices
from rgdm.domains.molecules.domain import MoleculeDomain
from rgdm.domains.molecules.encoding import remove_center_of_mass
from rgdm.domains.molecules.io import read_sdf, read_xyz
from rgdm.domains.molecules.network import EGNN, EGNNDenoiser, EGNNRegressor
from rgdm.domains.molecules.properties import PropertyPredictor, point_cloud, train_property_predictor
from rgdm.engine.builder import make_scorer
from rgdm.engine.config import RewardConfig
from rgdm.engine.guide import scored_rows
from rgdm.io import CheckpointError
from rgdm.rewards import RewardCounter
from rgdm.stopping import TrainingInterrupted


def random_rotation(generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


@pytest.fixture(scope="module")
def domain() -> MoleculeDomain:
    return build_domain({"name": "molecules", "subset": 500})


def randomised(net: torch.nn.Module) -> torch.nn.Module:
    """Every weight random: EDM's near-zero coordinate head would hide a broken equivariance."""
    torch.manual_seed(0)
    for parameter in net.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    return net.double()


def test_egnn_positions_rotate_and_translate_with_the_input_and_features_are_invariant():
    generator = torch.Generator().manual_seed(0)
    egnn = randomised(EGNN(in_features=4, hidden=16, layers=3))
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    features = torch.randn(2, 6, 4, generator=generator, dtype=torch.float64)
    x = torch.randn(2, 6, 3, generator=generator, dtype=torch.float64) * mask[..., None]
    rotation, shift = random_rotation(generator), torch.randn(3, generator=generator, dtype=torch.float64)
    h, out = egnn(features, x, mask)
    h_moved, out_moved = egnn(features, (x @ rotation.T + shift) * mask[..., None], mask)
    assert torch.allclose(h_moved, h, atol=1e-9)
    assert torch.allclose(out_moved, (out @ rotation.T + shift) * mask[..., None], atol=1e-9)
    assert (out - x).abs().max() > 1e-3, "the coordinate update must not be trivially zero"


def test_denoiser_noise_rotates_with_the_molecule_and_ignores_translation_and_padding():
    generator = torch.Generator().manual_seed(1)
    net = randomised(EGNNDenoiser(atom_features=6, hidden=16, layers=2))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]], dtype=torch.float64)
    x = torch.randn(1, 6, 9, generator=generator, dtype=torch.float64) * mask[..., None]
    t = torch.tensor([0.4], dtype=torch.float64)
    rotation, shift = random_rotation(generator), torch.randn(3, generator=generator, dtype=torch.float64)
    moved = x.clone()
    moved[..., :3] = (x[..., :3] @ rotation.T + shift) * mask[..., None]
    eps, eps_moved = net(x, t, None, mask), net(moved, t, None, mask)
    assert torch.allclose(eps_moved[..., :3], eps[..., :3] @ rotation.T, atol=1e-9)
    assert torch.allclose(eps_moved[..., 3:], eps[..., 3:], atol=1e-9)
    padded = x.clone()
    padded[0, 4:] = 5.0  # garbage in padding atoms must not leak into real atoms
    assert torch.allclose(net(padded, t, None, mask)[0, :4], eps[0, :4], atol=1e-9)
    assert eps[0, 4:].abs().max() == 0


def test_the_dipole_read_out_is_invariant_to_rotation_translation_order_and_padding():
    """``|sum_i q_i x_i|`` with neutral charges: without the neutralisation a translation would change it."""
    generator = torch.Generator().manual_seed(2)
    net = randomised(EGNNRegressor(atom_features=6, hidden=16, layers=2, outputs=3, dipole_output=1))
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]], dtype=torch.float64)
    x = torch.randn(2, 6, 9, generator=generator, dtype=torch.float64) * mask[..., None]
    t = torch.zeros(2, dtype=torch.float64)
    rotation, shift = random_rotation(generator), 3.0 * torch.randn(3, generator=generator, dtype=torch.float64)
    out = net(x, t, None, mask)
    moved = x.clone()
    moved[..., :3] = (x[..., :3] @ rotation.T + shift) * mask[..., None]
    torch.testing.assert_close(net(moved, t, None, mask), out, rtol=0, atol=1e-9)
    order = torch.tensor([3, 0, 4, 1, 2, 5])
    torch.testing.assert_close(net(x[:, order], t, None, mask[:, order]), out, rtol=0, atol=1e-9)
    padded = x.clone()
    padded[0, 5:], padded[1, 3:] = 5.0, -7.0
    torch.testing.assert_close(net(padded, t, None, mask), out, rtol=0, atol=1e-9)
    plain = randomised(EGNNRegressor(atom_features=6, hidden=16, layers=2, outputs=3))
    plain.load_state_dict(net.state_dict(), strict=False)
    assert (plain(x, t, None, mask)[:, 1] - out[:, 1]).abs().min() > 1e-3, "column 1 is the dipole's"
    torch.testing.assert_close(plain(x, t, None, mask)[:, [0, 2]], out[:, [0, 2]], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="dipole_output must be one of the 3 outputs"):
        EGNNRegressor(atom_features=6, outputs=3, dipole_output=3)


def test_denoiser_runs_under_bf16_autocast_close_to_float32():
    """bf16 autocast (the bench's --bf16, on CPU or CUDA) must not break the scatter-adds of the messages."""
    torch.manual_seed(0)
    net = EGNNDenoiser(atom_features=6, hidden=32, layers=2).eval()
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]], dtype=torch.float32)
    x = torch.randn(2, 6, 9) * mask[..., None]
    t = torch.tensor([0.4, 0.7])
    with torch.no_grad():
        exact = net(x, t, None, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            approximate = net(x, t, None, mask).float()
    assert torch.isfinite(approximate).all()
    assert (approximate - exact).norm() / exact.norm() < 0.05


def test_center_of_mass_projection_is_idempotent_and_ignores_padding():
    generator = torch.Generator().manual_seed(2)
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 0]])
    x = torch.randn(2, 4, 5, generator=generator) * mask[..., None]
    projected = remove_center_of_mass(x, mask)
    assert torch.allclose((projected[..., :3] * mask[..., None]).sum(1), torch.zeros(2, 3), atol=1e-6)
    assert torch.allclose(remove_center_of_mass(projected, mask), projected, atol=1e-6)
    assert torch.equal(projected[..., 3:], x[..., 3:])
    assert projected[1, 2:].abs().max() == 0


def test_qm9_has_edm_splits_and_properties(domain):
    data = load_qm9()
    assert len(data) == 130_831 and data.num_atoms.max() == 29
    splits = split_indices(len(data))
    assert [len(splits[k]) for k in ("train", "val", "test")] == [100_000, 17_748, 13_083]
    assert set(splits["train_a"]).isdisjoint(splits["train_b"])
    assert len(splits["train_a"]) + len(splits["train_b"]) == 100_000
    assert not set(splits["train"]) & set(splits["test"])
    methane = int(np.flatnonzero(data.smiles == "C")[0])
    assert data.num_atoms[methane] == 5 and data.properties["alpha"][methane] == pytest.approx(13.21)
    heavy = data.subset(np.arange(100)).without_hydrogens()
    assert heavy.atomic_numbers.shape[1] <= 9 and not (heavy.atomic_numbers == 1).any()


def test_encoding_decodes_back_to_the_qm9_molecules(domain):
    batch = domain.dataset()
    assert batch.x.shape == (500, 29, 3 + 5 + 1)
    assert torch.allclose((batch.x[..., :3] * batch.mask[..., None]).sum(1), torch.zeros(500, 3), atol=1e-4)
    data = domain.molecules("train")
    molecules = domain.decode(batch.x[:50], batch.mask[:50])
    for mol, numbers in zip(molecules, data.atomic_numbers[:50], strict=True):
        assert list(mol.atomic_numbers) == [n for n in numbers if n > 0]
    assert np.mean([is_stable(mol) for mol in molecules]) > 0.9


def test_atom_counts_follow_the_training_histogram(domain):
    counts = domain.prior_batch(4000, torch.Generator().manual_seed(0)).mask.sum(1)
    expected = (domain.atom_count_histogram * torch.arange(len(domain.atom_count_histogram))).sum()
    assert abs(float(counts.mean()) - float(expected)) < 0.2
    assert counts.min() >= 3 and counts.max() <= 29


def test_refitted_atom_counts_are_the_weighted_counts_and_survive_config(domain):
    mask = (torch.arange(29)[None] < torch.tensor([[3], [5], [5]])).float()
    domain = build_domain(domain.config())
    domain.refit_prior(mask, torch.tensor([0.5, 0.25, 0.25]))
    assert domain.atom_count_histogram[[3, 5]].tolist() == [0.5, 0.5]
    counts = domain.prior_batch(200, torch.Generator().manual_seed(0)).mask.sum(1)
    assert set(counts.long().tolist()) == {3, 5}
    rebuilt = build_domain(domain.config())
    assert torch.equal(rebuilt.atom_count_histogram, domain.atom_count_histogram)


@pytest.mark.parametrize(("counts", "message"), [([1.0] * 7, "needs 30"), ([0.0] * 30, "some atom count"),
                                                 ([-1.0] + [1.0] * 29, "greater than or equal")])
def test_bad_atom_counts_are_refused_with_the_reason(counts, message):
    with pytest.raises(ValueError, match=message):
        build_domain({"name": "molecules", "subset": 500, "atom_counts": counts}).prior_batch(1, torch.Generator())


def test_without_hydrogens_uses_four_elements():
    heavy = build_domain({"name": "molecules", "subset": 50, "hydrogens": False, "charges": False})
    batch = heavy.dataset()
    assert batch.x.shape[1:] == (9, 3 + 4) and batch.mask.sum(1).max() <= 9


def test_samples_are_written_as_xyz_sdf_and_a_grid(domain, tmp_path):
    benzene, methane = molecule_from_smiles("c1ccccc1"), molecule_from_smiles("C")
    width = 12
    numbers = np.zeros((3, width), np.int64)
    positions = np.zeros((3, width, 3))
    methyl = Molecule(methane.atomic_numbers[:4], methane.positions[:4])  # CH3: a broken valence
    for row, mol in enumerate([benzene, methane, methyl]):
        numbers[row, : len(mol.atomic_numbers)] = mol.atomic_numbers
        positions[row, : len(mol.atomic_numbers)] = mol.positions
    batch = domain.encode(numbers, positions)
    written = domain.save_samples(batch, tmp_path)
    assert [p.name for p in written] == ["samples.xyz", "samples.sdf", "molecules.png"]
    assert [len(m.atomic_numbers) for m in read_xyz(tmp_path / "samples.xyz")] == [12, 5, 4]
    assert len(read_sdf(tmp_path / "samples.sdf")) >= 2
    metrics = domain.evaluate(batch, "qed", None, torch.Generator())
    assert metrics["molecule_stability"] == pytest.approx(1 / 3), "EDM's tables alone read benzene's ring as single"
    assert metrics["molecule_stability_kekule"] == pytest.approx(2 / 3)
    assert 0 < metrics["mean_reward"] < 1


def test_an_untrained_model_samples_molecules_inside_their_masks(domain):
    torch.manual_seed(0)
    diffusion = GaussianDiffusion(NoiseSchedule.create("polynomial", 20), project=domain.project, dof_offset=3)
    model = EpsModel(domain.build_network({"hidden": 16, "layers": 2}), diffusion)
    prior = domain.prior_batch(4, torch.Generator().manual_seed(0))
    x = sample(model, prior.x.shape, mask=prior.mask, generator=torch.Generator().manual_seed(1)).x0
    assert torch.isfinite(x).all()
    assert x[prior.mask == 0].abs().max() == 0
    center = (x[..., :3] * prior.mask[..., None]).sum(1)
    assert center.abs().max() < 1e-5 * x.abs().max()
    assert all(len(m.atomic_numbers) == int(n) for m, n in zip(domain.decode(x, prior.mask), prior.mask.sum(1),
                                                                   strict=True))


def test_a_missing_or_broken_cache_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RGDM_CACHE", str(tmp_path))
    (tmp_path / "qm9-v2.npz").write_bytes(b"not an npz file")
    with pytest.raises(QM9DataError, match="delete it"):
        load_qm9()
    source = tmp_path / "csv"
    source.mkdir()
    for part in ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv"):
        (source / part).write_text('Elements,XYZ_Ang,SMILES\n"[\'C\']","[[0,0","C"\n')
    with pytest.raises(QM9DataError, match="malformed QM9 row"):
        convert_qm9(source, tmp_path / "out.npz")


def test_concurrent_conversions_of_the_cache_both_succeed(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from rgdm.domains.molecules.data import CACHE_NAME, CSV_PARTS, PROPERTIES

    source = tmp_path / "csv"
    source.mkdir()
    header = ",".join(["Elements", "XYZ_Ang", "SMILES", *(column for column, _ in PROPERTIES.values())])
    row = ",".join(['"[\'C\']"', '"[[0.,0.,0.]]"', "C", *("1.5" for _ in PROPERTIES)])
    for part in CSV_PARTS:
        (source / part).write_text(f"{header}\n{row}\n")
    destination = tmp_path / "cache" / CACHE_NAME
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: convert_qm9(source, destination), range(2)))
    assert [p.name for p in destination.parent.iterdir()] == [CACHE_NAME]  # no temporary file left
    data = load_qm9(destination.parent)
    assert list(data.smiles) == ["C"] * len(CSV_PARTS) and data.properties["alpha"].tolist() == [1.5] * len(CSV_PARTS)


def test_unknown_split_and_elements_are_refused(domain):
    with pytest.raises(ValueError, match="unknown QM9 split"):
        domain.molecules("training")
    with pytest.raises(ValueError, match="outside H, C, N, O, F"):
        domain.encode(np.array([[6, 16]]), np.zeros((1, 2, 3)))



def test_missing_qm9pack_names_the_install_command(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.setenv("RGDM_CACHE", str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "qm9pack" else real_find_spec(name))
    with pytest.raises(QM9DataError, match="pip install qm9pack"):
        load_qm9()


@pytest.fixture(scope="module")
def alpha_domain() -> MoleculeDomain:
    return build_domain({"name": "molecules", "subset": 600, "target_property": "alpha"})


def test_a_hydrogen_free_model_never_gets_a_predictor_of_molecules_with_hydrogens(tmp_path, monkeypatch):
    """The shipped predictors with hydrogens read molecules with hydrogens; a model without them asks for its own."""
    heavy = build_domain({"name": "molecules", "subset": 300, "hydrogens": False, "target_property": "alpha"})
    shipped = properties.SHIPPED_PREDICTORS
    monkeypatch.setattr(properties, "SHIPPED_PREDICTORS", tmp_path)
    with pytest.raises(CheckpointError, match=r"no predictor qm9-noh-alpha-a .* --no-hydrogens"):
        heavy.predictor("a")
    shutil.copytree(shipped / "qm9-all-a", tmp_path / "qm9-noh-alpha-a")
    with pytest.raises(CheckpointError, match="qm9-noh-alpha-a was trained on molecules with hydrogens"):
        heavy.predictor("a")


@pytest.mark.parametrize("half", ["a", "b"])
def test_the_shipped_hydrogen_free_oracles_serve_every_property_of_their_half(half):
    for target in PROPERTIES:
        heavy = build_domain({"name": "molecules", "subset": 300, "hydrogens": False, "target_property": target})
        predictor = heavy.predictor(half)
        assert predictor.meta["split"] == f"train_{half}" and target in predictor.properties
        assert not predictor.meta["domain"]["hydrogens"]


def test_a_multi_task_predictor_serves_each_of_its_properties_for_its_own_half(tmp_path, monkeypatch):
    """Without ``qm9-noh-alpha-b`` the measuring predictor is ``qm9-noh-all-b``, if it regresses alpha on
    train_b; one of the other half under that name is refused."""
    heavy = build_domain({"name": "molecules", "subset": 300, "hydrogens": False, "target_property": "alpha"})
    monkeypatch.setattr(properties, "SHIPPED_PREDICTORS", tmp_path)
    settings = {"steps": 1, "batch_size": 4, "progress": False}
    train_property_predictor(heavy, "gap,alpha", "train_b", **settings).save(tmp_path / "qm9-noh-all-b")
    assert heavy.predictor("b").properties == ["gap", "alpha"] and heavy.predictor("b").meta["split"] == "train_b"
    train_property_predictor(heavy, "gap,alpha", "train_b", **settings).save(tmp_path / "qm9-noh-all-a")
    with pytest.raises(CheckpointError, match="qm9-noh-all-a regresses gap, alpha on train_b, not alpha on train_a"):
        heavy.predictor("a")


def test_property_targets_are_values_drawn_from_the_data_with_their_own_atom_counts(alpha_domain):
    assert alpha_domain.target_kind == "value"
    assert alpha_domain.parse_target("75") == 75.0
    for text in ("big", "nan", "inf"):
        with pytest.raises(ValueError, match="value of alpha"):
            alpha_domain.parse_target(text)
    values = alpha_domain.property_values
    generator = torch.Generator().manual_seed(0)
    drawn = alpha_domain.draw_target_values(2000, generator)
    assert drawn.dtype == torch.float32 and torch.isin(drawn, values).all(), "targets are the data's own values"
    assert abs(float(drawn.mean() - values.mean())) < 4 * float(values.std()) / 2000 ** 0.5
    low, high = (torch.full((500,), float(torch.quantile(values, q))) for q in (0.05, 0.95))
    small = alpha_domain.prior_batch(500, generator, low).mask.sum(1)
    large = alpha_domain.prior_batch(500, generator, high).mask.sum(1)
    assert large.mean() > small.mean() + 2, "alpha grows with size, so p(M | high alpha) must favour larger molecules"


def test_property_reward_and_measure_use_different_predictors(alpha_domain):
    rewarding = train_property_predictor(alpha_domain, "alpha", "train_a", steps=3, batch_size=8, progress=False)
    measuring = train_property_predictor(alpha_domain, "alpha", "train_b", steps=3, batch_size=8, seed=1,
                                         progress=False)
    alpha_domain._predictors.update({"qm9-alpha-a": rewarding, "qm9-alpha-b": measuring})
    data = alpha_domain.dataset().select(slice(0, 40))
    cond = alpha_domain.property_values[:40] + 2.0  # near each molecule's own alpha, as a good sample is
    molecules = alpha_domain.decode(data.x, data.mask)
    reward = alpha_domain.rewards()["property"].fn(molecules, cond.tolist())
    spread = alpha_domain.property_values.std()
    expected = -(rewarding.predict(data) - cond).abs() / spread
    assert np.allclose(reward, expected.numpy(), atol=1e-5), "-|f_a(x) - c| / s, in standard deviations"
    metrics = alpha_domain.evaluate(Batch(data.x, data.mask, cond), "property", None, torch.Generator())
    assert metrics["mean_reward"] == pytest.approx(float(np.mean(reward)), rel=1e-4), "scored against each target"
    measured = (measuring.predict(data) - cond).abs().mean()
    assert metrics["property_mae"] == pytest.approx(float(measured), rel=1e-4), "measured in the property's units"
    assert metrics["property_mae_valid"] == pytest.approx(float(measured), rel=1e-4), "QM9's molecules are valid"
    with_invalid = alpha_domain._property_metrics([*molecules[:5], broken_valence()], cond[:6])
    own = (measuring.predict(data.select(slice(0, 5))) - cond[:5]).abs().mean()
    assert with_invalid["property_mae_valid"] == pytest.approx(float(own), rel=1e-4), "the invalid one is left out"
    assert with_invalid["property_mae"] != pytest.approx(float(own), rel=1e-4), "EDM's MAE counts every molecule"
    assert metrics["atoms_baseline_mae"] < metrics["naive_baseline_mae"]
    assert {"edm_lbound_mae", "edm_naive_mae", "edm_atoms_mae"} <= set(metrics), "EDM's reference rows beside"


def test_edm_reference_errors_are_computed_on_the_half_the_measure_never_saw(alpha_domain, monkeypatch):
    """With a perfect measuring predictor the L-bound is 0, #Atoms lies between it and naive (shuffled)."""
    half = alpha_domain.molecules("train_a")

    class Oracle:  # the half's true alpha, row by row: the errors are computed on its first molecules in order
        def predict(self, batch, property_name=None):
            return torch.as_tensor(half.properties[property_name][: len(batch)], dtype=torch.float64)

    monkeypatch.setitem(alpha_domain._predictors, "qm9-alpha-b", Oracle())
    alpha_domain.__dict__.pop("edm_reference_errors", None)
    errors = alpha_domain.edm_reference_errors
    alpha_domain.__dict__.pop("edm_reference_errors", None)
    assert errors["edm_lbound_mae"] == pytest.approx(0.0, abs=1e-9)
    assert 0.0 < errors["edm_atoms_mae"] < errors["edm_naive_mae"], "size explains part of alpha, shuffling none"
    spread = float(np.abs(half.properties["alpha"] - half.properties["alpha"].mean()).mean())
    assert errors["edm_naive_mae"] > spread, "a shuffled pair differs more than a value from the mean"


def test_the_train_predictor_command_of_the_molecules_domain_saves_a_predictor(tmp_path, capsys):
    out = tmp_path / "alpha-a"
    assert main(["-q", "train-predictor", "--property", "alpha", "--split", "train_a", "--steps", "2",
                 "--batch-size", "8", "--subset", "100", "--no-hydrogens", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("alpha predictor on train_a: validation MAE ") and "the limit 0.3)" in printed
    predictor = PropertyPredictor.load(out)
    assert predictor.properties == ["alpha"] and predictor.meta["steps"] == 2
    assert set(predictor.meta["test_mae"]) == {"alpha"} and not (out / "training-state.json").exists()
    assert predictor.meta["domain"]["hydrogens"] is False and predictor.meta["domain"]["subset"] == 100


def counted_rewarding_predictor(alpha_domain):
    """A tiny rewarding predictor installed in the domain, counting the rows of every prediction: its own
    ``predict`` (uncounted) and the list of row counts."""
    predictor = train_property_predictor(alpha_domain, "alpha", "train_a", steps=2, batch_size=8, progress=False)
    alpha_domain._predictors["qm9-alpha-a"] = predictor
    predicted_rows = []
    predict = predictor.predict
    predictor.predict = lambda batch, **named: predicted_rows.append(len(batch)) or predict(batch, **named)
    return predict, predicted_rows


def test_scoring_data_against_every_target_predicts_each_molecule_once(alpha_domain):
    predict, predicted_rows = counted_rewarding_predictor(alpha_domain)
    data = alpha_domain.dataset().select(slice(0, 50))
    counter = RewardCounter()
    context = TrainingContext(model=None, ema=None, reference=None, data=data, batch_size=8, prior=None,
                              scorer=make_scorer(RewardConfig(name="property"), alpha_domain, counter),
                              targets=[70.0, 75.0, 80.0, 85.0])
    rows, rewards = score_data_rows(context, "rgdm-data", None, torch.Generator().manual_seed(0), chunk=20)
    assert counter.calls == 4 * 50 and predicted_rows == [20, 20, 10], "one prediction per molecule, not per target"
    targets = torch.tensor([70.0, 75.0, 80.0, 85.0])[:, None]
    expected = -(predict(data.select(rows)) - targets).abs() / alpha_domain.property_values.std()
    torch.testing.assert_close(rewards, expected, atol=1e-4, rtol=1e-5)


def test_a_guide_scores_its_rows_against_every_target_predicting_each_molecule_once(alpha_domain):
    predict, predicted_rows = counted_rewarding_predictor(alpha_domain)
    model = SimpleNamespace(domain=alpha_domain)
    counter = RewardCounter()
    targets = [70.0, 80.0, 90.0]
    scored, rewards = scored_rows(model, make_scorer(RewardConfig(name="property"), alpha_domain, counter), targets,
                                  30, torch.Generator().manual_seed(0))
    assert counter.calls == 3 * 30 and predicted_rows == [30], "one prediction per molecule, not per target"
    assert scored.cond.tolist() == [target for target in targets for _ in range(30)], "copy-major"
    expected = -(predict(scored) - scored.cond).abs() / alpha_domain.property_values.std()
    torch.testing.assert_close(rewards, expected, atol=1e-4, rtol=1e-5)


def test_a_model_without_target_property_refuses_targets(domain):
    with pytest.raises(ValueError, match=r"domain\.target_property=alpha"):
        domain.parse_target("75")


ATOM_COUNT_REWARD = """
import numpy as np

def atoms(molecules):
    return np.array([float(len(m.atomic_numbers)) for m in molecules])
"""


@pytest.mark.parametrize("algorithm", ["rgdm-data", "rgdm-model", "cfg"])
def test_payoff_fine_tunes_refit_the_atom_counts_and_resume_refits_the_same(tmp_path, algorithm):
    """``p*(M) ∝ p(M) E[exp(r / tau) | M]``: a reward for size moves the histogram to large molecules.
    The CFG peer's top class (the largest molecules here) moves it the same way: ``p(M | top class)``."""
    from rgdm.cli import main
    from rgdm.engine.trainer import Trainer

    (tmp_path / "reward.py").write_text(ATOM_COUNT_REWARD)
    run = tmp_path / "run"
    assert main(["-q", "finetune", "--checkpoint", "qm9-pretrained", "--reward", f"{tmp_path / 'reward.py'}:atoms",
                 "--algorithm", algorithm, "--temperature", "1.0", "--steps", "2", "--set", "domain.subset=500",
                 "--set", "algorithm.scored_size=300", "--set", "algorithm.rounds=2", "--set",
                 "algorithm.buffer_size=16", "--set", "algorithm.sample_steps=2", "--set", "train.batch_size=4",
                 "--out", str(run)]) == 0
    fitted = torch.tensor(json.loads((run / "model.json").read_text())["domain"]["atom_counts"], dtype=torch.float64)
    data = build_domain({"name": "molecules", "subset": 500}).atom_count_histogram
    sizes = torch.arange(len(data), dtype=torch.float64)
    assert float((fitted * sizes).sum()) > float((data * sizes).sum()) + 1.0
    assert Trainer.resume(run).domain.config()["atom_counts"] == fitted.tolist()


def test_molecule_demo_writes_its_report(tmp_path):
    from rgdm.benchmarks.demo import run_molecule_demo

    report = run_molecule_demo(tmp_path, progress=False, finetune_steps=2, rounds=2, buffer_size=8, samples=6,
                               sample_steps=4, percentile_molecules=500)
    for name in ("table.md", "metrics.json", "qed_histograms.png", "before/samples.xyz", "after/samples.xyz",
                 "after/molecules.png", "run/final.safetensors"):
        assert (tmp_path / name).is_file(), name
    assert report["algorithm"] == "rgdm-model" and report["reward_calls"] == 2 * 8 and report["rgdm"]["n"] == 6
    assert 0.4 < report["qm9_qed_p90"] < 0.7
    assert (tmp_path / "table.md").read_text().count("\n") == 4


def test_one_predictor_regresses_several_properties_and_names_the_one_asked_for(alpha_domain, tmp_path):
    predictor = train_property_predictor(alpha_domain, "alpha,mu", "train_a", steps=2, batch_size=8, progress=False)
    data = alpha_domain.molecules("val")
    batch = point_cloud(alpha_domain, data.atomic_numbers[:5], data.positions[:5])
    both = predictor.predict_all(batch)
    assert both.shape == (5, 2)
    torch.testing.assert_close(predictor.predict(batch, property_name="mu"), both[:, 1])
    with pytest.raises(ValueError, match="regresses alpha, mu; name one"):
        predictor.predict(batch)
    assert set(predictor.meta["val_mae"]) == set(predictor.meta["test_mae"]) == {"alpha", "mu"}
    assert predictor.meta["dipole_output"] == 1, "mu is read out as a dipole's norm"
    reloaded = PropertyPredictor.load(predictor.save(tmp_path / "both"))
    assert reloaded.net.dipole_output == 1
    torch.testing.assert_close(reloaded.predict_all(batch), both)
    scalar = train_property_predictor(alpha_domain, "alpha,mu", "train_a", steps=2, batch_size=8, progress=False,
                                      dipole=False)
    assert "dipole_output" not in scalar.meta
    assert PropertyPredictor.load(scalar.save(tmp_path / "scalar")).net.dipole_output is None
    with pytest.raises(ValueError, match="unknown QM9 property 'energy'"):
        train_property_predictor(alpha_domain, "alpha,energy", "train_a", steps=1, progress=False)


def test_a_compiled_predictor_training_fits_the_eager_weights(alpha_domain):
    settings = {"steps": 3, "batch_size": 8, "progress": False, "hidden": 16, "layers": 1}
    eager = train_property_predictor(alpha_domain, "alpha,mu", "train_a", **settings)
    compiled = train_property_predictor(alpha_domain, "alpha,mu", "train_a", compile=True, **settings)
    # Adam moves every weight by about lr a step, near-zero gradients too, whose rounding differs between
    # kernels: the weights agree to a tenth of the 3 steps' largest move (3 x lr = 3e-3).
    for key, value in eager.net.state_dict().items():
        torch.testing.assert_close(compiled.net.state_dict()[key], value, rtol=1e-3, atol=3e-4)
    assert compiled.meta["test_mae"] == pytest.approx(eager.meta["test_mae"], rel=1e-3)


def test_an_interrupted_predictor_training_resumes_bit_for_bit(alpha_domain, tmp_path, monkeypatch):
    settings = {"steps": 4, "batch_size": 8, "progress": False, "checkpoint_every": 2}
    straight = train_property_predictor(alpha_domain, "alpha", "train_a", out=tmp_path / "straight", **settings)

    save_state = properties.save_training_state

    def save_then_stop(*args, **named):
        save_state(*args, **named)
        raise KeyboardInterrupt

    monkeypatch.setattr(properties, "save_training_state", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_property_predictor(alpha_domain, "alpha", "train_a", out=tmp_path / "resumed", **settings)
    monkeypatch.undo()
    assert json.loads((tmp_path / "resumed" / "training-state.json").read_text())["step"] == 2
    with pytest.raises(CheckpointError, match="differs in lr"):
        train_property_predictor(alpha_domain, "alpha", "train_a", out=tmp_path / "resumed", lr=1e-2, **settings)
    resumed = train_property_predictor(alpha_domain, "alpha", "train_a", out=tmp_path / "resumed", **settings)
    for key, value in straight.net.state_dict().items():
        torch.testing.assert_close(resumed.net.state_dict()[key], value, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="already holds a finished predictor"):
        train_property_predictor(alpha_domain, "alpha", "train_a", out=tmp_path / "resumed", **settings)


def test_a_stop_signal_saves_the_predictor_state_at_its_step_and_the_rerun_finishes_alike(alpha_domain, tmp_path,
                                                                                          monkeypatch, signal_at_step):
    settings = {"steps": 5, "batch_size": 8, "progress": False, "checkpoint_every": 100}
    straight = train_property_predictor(alpha_domain, "alpha", "train_a", out=tmp_path / "straight", **settings)
    handler_before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job

    signal_at_step(properties, 2)
    with pytest.raises(TrainingInterrupted, match="at step 3; training state saved in"):
        train_property_predictor(alpha_domain, "alpha", "train_a", out=tmp_path / "resumed", **settings)
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is handler_before, "the stop handler is removed again"
    assert json.loads((tmp_path / "resumed" / "training-state.json").read_text())["step"] == 3
    resumed = train_property_predictor(alpha_domain, "alpha", "train_a", out=tmp_path / "resumed", **settings)
    for key, value in straight.net.state_dict().items():
        torch.testing.assert_close(resumed.net.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.parametrize("algorithm", ["rgdm-data", "cfg"])
def test_a_property_fine_tune_conditions_on_values_from_an_unconditional_parent(tmp_path, algorithm):
    """The parent has no value path; the fine-tune adds it (starting as the null token) and trains it, and
    its samples take any value as their target: one given, or values drawn from the data."""
    from rgdm.diffusion.conditioning import conditioning_of
    from rgdm.engine.builder import seeded_generator
    from rgdm.engine.generate import generate

    run = tmp_path / "run"
    assert main(["-q", "finetune", "--checkpoint", "qm9-pretrained", "--reward", "property", "--algorithm",
                 algorithm, "--temperature", "0.5", "--steps", "3", "--targets", "[70, 80]", "--set",
                 "domain.target_property=alpha", "--set", "domain.subset=300", "--set", "algorithm.scored_size=200",
                 "--set", "train.batch_size=4", "--set", "train.lr=1e-2", "--out", str(run)]) == 0
    model = load(str(run))
    conditioning = conditioning_of(model.net)
    assert conditioning.value is not None and conditioning.value.weight.abs().sum() > 0, "the value path trained"
    torch.testing.assert_close(conditioning.value_scale[0], model.domain.property_values.mean())
    near, far = (generate(model, 3, seeded_generator(0), target=value, steps=3) for value in (70.0, 80.0))
    assert near.cond.dtype == torch.float32 and near.cond.tolist() == [70.0] * 3
    assert ((near.x - far.x).abs() > 1e-4).any(), "a changed target changes the samples (every part a tensor)"
    drawn = generate(model, 4, seeded_generator(0), target="all", steps=2)
    assert torch.isin(drawn.cond, model.domain.property_values).all()
    guided = generate(model, 2, seeded_generator(0), target=75.0, steps=2, cfg_scale=2.0)
    assert torch.isfinite(guided.x).all() and guided.cond.tolist() == [75.0, 75.0]
    with pytest.raises(ValueError, match="out of range"):
        generate(model, 2, seeded_generator(0), target=75, steps=2)


def test_a_value_path_for_another_property_is_left_behind_and_one_for_the_same_is_kept(tmp_path):
    from rgdm.diffusion.conditioning import conditioning_of
    from rgdm.engine.config import load_config
    from rgdm.engine.trainer import Trainer

    parent = tmp_path / "alpha"
    assert main(["-q", "finetune", "--checkpoint", "qm9-pretrained", "--reward", "property", "--steps", "2",
                 "--targets", "[70, 80]", "--set", "domain.target_property=alpha", "--set", "domain.subset=300",
                 "--set", "algorithm.scored_size=100", "--set", "train.batch_size=4", "--set", "train.lr=1e-2",
                 "--out", str(parent)]) == 0
    trained = conditioning_of(load(str(parent)).net).value.weight
    assert trained.abs().sum() > 0

    def child(prop: str, name: str) -> torch.nn.Module:
        config = load_config(None, [f"init={parent}", f"domain.target_property={prop}", "reward.name=property",
                                    "algorithm.name=rgdm-data", "train.steps=1"])
        return conditioning_of(Trainer(config, tmp_path / name).net)

    gap = child("gap", "gap")
    parent_domain = json.loads((parent / "model.json").read_text())["domain"]
    torch.testing.assert_close(gap.value_scale[0], build_domain(
        parent_domain | {"target_property": "gap"}).property_values.mean())
    assert gap.value.weight.abs().sum() == 0, "alpha's value path means nothing for the gap: it starts afresh"
    torch.testing.assert_close(child("alpha", "alpha-again").value.weight, trained)
