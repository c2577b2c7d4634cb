"""Train the reference PaiNN (default ``PaiNNConfig``) on the xTB data of ``generate_data.py``.

Fits energy (eV), forces (eV/Å) and, for periodic structures, stress (eV/Å^3, ASE convention:
``stress = -virial / volume``). Before training, the per-species reference energies are fitted
by least squares on the training compositions and ``energy_scale`` is set to the RMS force
component (eV/Å); both are buffers saved with the weights. The learning rate follows a cosine
over training progress, measured as the larger of the epoch fraction and the fraction of
``--max-minutes`` used, so a run cut by the wall-time limit still ends annealed. The weights with
the lowest validation loss are saved with :func:`mlff_export.checkpoint.save_checkpoint` and
evaluated on the test split (MAEs in meV/atom, meV/Å and meV/Å^3).

Usage: ``python training/train.py`` (about 32 minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.io import read

from mlff_export.checkpoint import load_checkpoint, save_checkpoint
from mlff_export.forces import energy_forces_virial
from mlff_export.interface import AtomicInputs
from mlff_export.model import PaiNN, PaiNNConfig, count_parameters
from mlff_export.neighbors import Pairs, batch_inputs, compute_pairs

REPO = Path(__file__).resolve().parent.parent
SUBSET_GROUPS = {"molecules": ("molecule", "molecule_md"), "periodic": ("water", "carbon")}


@dataclass
class Sample:
    """One labelled structure with its precomputed pair list."""

    atoms: Atoms
    pairs: Pairs
    subset: str
    split: str

    @property
    def periodic(self) -> bool:
        return bool(self.atoms.pbc.all())


@dataclass
class Batch:
    """Model inputs and xTB targets of several structures (B structures, N atoms)."""

    inputs: AtomicInputs
    energy: torch.Tensor  # [B] eV
    forces: torch.Tensor  # [N, 3] eV/Å
    stress: torch.Tensor  # [B, 3, 3] eV/Å^3, zero for non-periodic structures
    periodic: torch.Tensor  # [B] bool
    num_atoms: torch.Tensor  # [B]
    volume: torch.Tensor  # [B] Å^3, 1 for non-periodic structures


def load_samples(path: Path, cutoff: float) -> list[Sample]:
    """Read the extxyz dataset and compute every structure's pair list once."""
    structures = read(path, index=":")
    return [Sample(atoms, compute_pairs(atoms, cutoff), atoms.info["subset"], atoms.info["split"]) for atoms in structures]


def make_batch(samples: Sequence[Sample]) -> Batch:
    structures = [sample.atoms for sample in samples]
    periodic = [sample.periodic for sample in samples]
    stress = [atoms.get_stress(voigt=False) if p else np.zeros((3, 3)) for atoms, p in zip(structures, periodic)]
    volume = [atoms.get_volume() if p else 1.0 for atoms, p in zip(structures, periodic)]

    def as_float(values) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values), dtype=torch.float32)

    return Batch(
        inputs=batch_inputs(structures, [sample.pairs for sample in samples]),
        energy=as_float([atoms.get_potential_energy() for atoms in structures]),
        forces=as_float(np.concatenate([atoms.get_forces() for atoms in structures])),
        stress=as_float(stress),
        periodic=torch.tensor(periodic),
        num_atoms=torch.tensor([len(atoms) for atoms in structures]),
        volume=as_float(volume),
    )


def batches(samples: Sequence[Sample], batch_size: int, generator: torch.Generator | None = None) -> list[Batch]:
    """Consecutive batches of ``samples``, shuffled when a ``generator`` is given."""
    order = torch.randperm(len(samples), generator=generator).tolist() if generator is not None else range(len(samples))
    ordered = [samples[k] for k in order]
    return [make_batch(ordered[start : start + batch_size]) for start in range(0, len(ordered), batch_size)]


def fit_reference_energies(samples: Sequence[Sample], species: Sequence[int]) -> np.ndarray:
    """Per-species energies (eV) that best explain the total energies from composition alone."""
    counts = np.array([[np.sum(sample.atoms.numbers == z) for z in species] for sample in samples], dtype=float)
    energies = np.array([sample.atoms.get_potential_energy() for sample in samples])
    reference, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return reference


def rms_force(samples: Sequence[Sample]) -> float:
    """Root mean square of all force components (eV/Å)."""
    forces = np.concatenate([sample.atoms.get_forces().ravel() for sample in samples])
    return float(np.sqrt(np.mean(forces**2)))


def predict(model: PaiNN, batch: Batch, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Energy [B] (eV), forces [N, 3] (eV/Å) and stress [B, 3, 3] (eV/Å^3; meaningless where not periodic)."""
    energy, forces, virial = energy_forces_virial(model, batch.inputs, create_graph=create_graph)
    stress = -virial / batch.volume.reshape(-1, 1, 1)
    return energy, forces, stress


@dataclass
class LossWeights:
    energy: float  # on (energy error per atom)^2, eV^2
    forces: float  # on (force component error)^2, (eV/Å)^2
    stress: float  # on (stress component error)^2 of periodic structures, (eV/Å^3)^2


def loss_function(model: PaiNN, batch: Batch, weights: LossWeights, create_graph: bool = True) -> torch.Tensor:
    energy, forces, stress = predict(model, batch, create_graph)
    energy_loss = (((energy - batch.energy) / batch.num_atoms) ** 2).mean()
    force_loss = ((forces - batch.forces) ** 2).mean()
    loss = weights.energy * energy_loss + weights.forces * force_loss
    if batch.periodic.any():
        stress_loss = ((stress - batch.stress)[batch.periodic] ** 2).mean()
        loss = loss + weights.stress * stress_loss
    return loss


def evaluate(model: PaiNN, samples: Sequence[Sample], batch_size: int) -> dict[str, float]:
    """Mean absolute errors: energy (meV/atom), forces (meV/Å), stress (meV/Å^3, periodic only)."""
    energy_errors, force_errors, stress_errors = [], [], []
    for batch in batches(samples, batch_size):
        energy, forces, stress = (tensor.detach() for tensor in predict(model, batch, create_graph=False))
        energy_errors.append(((energy - batch.energy) / batch.num_atoms).abs())
        force_errors.append((forces - batch.forces).abs().reshape(-1))
        stress_errors.append((stress - batch.stress)[batch.periodic].abs().reshape(-1))
    errors = {"energy_meV_per_atom": energy_errors, "forces_meV_per_A": force_errors, "stress_meV_per_A3": stress_errors}
    return {name: 1000.0 * float(torch.cat(values).mean()) for name, values in errors.items() if torch.cat(values).numel()}


def test_report(model: PaiNN, samples: Sequence[Sample], batch_size: int) -> dict[str, dict]:
    """Test-split MAEs for all structures, for molecules vs periodic, and per subset."""
    test = [sample for sample in samples if sample.split == "test"]
    groups = {"all": test}
    groups.update({name: [s for s in test if s.subset in subsets] for name, subsets in SUBSET_GROUPS.items()})
    groups.update({subset: [s for s in test if s.subset == subset] for subset in sorted({s.subset for s in test})})
    return {name: {"structures": len(members), **evaluate(model, members, batch_size)} for name, members in groups.items()}


def cosine_learning_rate(progress: float, peak: float, warmup: float = 0.02, final_fraction: float = 0.01) -> float:
    """Linear warm-up to ``peak`` then cosine decay to ``final_fraction * peak``, ``progress`` in [0, 1]."""
    if progress < warmup:
        return peak * (progress / warmup)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - warmup) / (1.0 - warmup))))
    return peak * (final_fraction + (1.0 - final_fraction) * cosine)


def validation_loss(model: PaiNN, samples: Sequence[Sample], weights: LossWeights, batch_size: int) -> float:
    losses = [float(loss_function(model, batch, weights, create_graph=False).detach()) for batch in batches(samples, batch_size)]
    return sum(losses) / len(losses)


def train(model: PaiNN, train_set: list[Sample], val_set: list[Sample], args: argparse.Namespace) -> dict:
    """Train in place; load the best-validation weights at the end. Returns a summary of the run."""
    weights = LossWeights(args.energy_weight, args.force_weight, args.stress_weight)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    generator = torch.Generator().manual_seed(args.seed)
    steps_per_epoch = math.ceil(len(train_set) / args.batch_size)
    budget_s = 60.0 * args.max_minutes
    best = {"val_loss": math.inf, "epoch": 0, "state": copy.deepcopy(model.state_dict())}
    start = time.perf_counter()
    epoch, progress = 0, 0.0
    while progress < 1.0:
        epoch += 1
        model.train()
        total = 0.0
        for step, batch in enumerate(batches(train_set, args.batch_size, generator)):
            progress = max(((epoch - 1) * steps_per_epoch + step) / (args.epochs * steps_per_epoch),
                           (time.perf_counter() - start) / budget_s)
            for group in optimizer.param_groups:
                group["lr"] = cosine_learning_rate(progress, args.learning_rate)
            loss = loss_function(model, batch, weights)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad_norm)
            optimizer.step()
            total += float(loss.detach())
            if progress >= 1.0:
                break
        model.eval()
        val_loss = validation_loss(model, val_set, weights, args.batch_size)
        if val_loss < best["val_loss"]:
            best = {"val_loss": val_loss, "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
        print(f"epoch {epoch:4d}  train loss {total / (step + 1):.5f}  val loss {val_loss:.5f}  "
              f"lr {optimizer.param_groups[0]['lr']:.2e}  {time.perf_counter() - start:.0f} s", flush=True)
        progress = max(epoch / args.epochs, (time.perf_counter() - start) / budget_s)
    model.load_state_dict(best["state"])
    model.eval()
    return {"epochs": epoch, "best_epoch": best["epoch"], "best_val_loss": best["val_loss"],
            "wall_time_minutes": round((time.perf_counter() - start) / 60.0, 2)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO / "training" / "data" / "hcno-xtb.extxyz")
    parser.add_argument("--output", type=Path, default=REPO / "mlff_export" / "reference" / "painn-hcno.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=500, help="upper bound; --max-minutes usually ends the run")
    parser.add_argument("--max-minutes", type=float, default=30.0, help="wall-time limit of the training loop")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=1e-6)
    parser.add_argument("--clip-grad-norm", type=float, default=10.0)
    parser.add_argument("--energy-weight", type=float, default=1.0, help="per (eV/atom)^2")
    parser.add_argument("--force-weight", type=float, default=10.0, help="per (eV/Å)^2")
    parser.add_argument("--stress-weight", type=float, default=300.0, help="per (eV/Å^3)^2")
    parser.add_argument("--max-force", type=float, default=30.0, help="drop structures with a larger force component, eV/Å")
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model = PaiNN(PaiNNConfig())
    samples = load_samples(args.data, model.cutoff)
    kept = [sample for sample in samples if np.abs(sample.atoms.get_forces()).max() <= args.max_force]
    print(f"dropped {len(samples) - len(kept)} of {len(samples)} structures with a force component above "
          f"{args.max_force} eV/Å (extreme rattles)")
    samples = kept
    splits = {name: [s for s in samples if s.split == name] for name in ("train", "val", "test")}
    print({name: len(members) for name, members in splits.items()}, f"{count_parameters(model)} parameters")

    reference = fit_reference_energies(splits["train"], model.species)
    model.atom_reference_energies.copy_(torch.as_tensor(reference))
    model.energy_scale.fill_(rms_force(splits["train"]))
    print(f"reference energies (eV) {dict(zip(model.species, reference.round(4).tolist()))}, "
          f"energy scale {float(model.energy_scale):.3f} eV")

    summary = train(model, splits["train"], splits["val"], args)
    report = test_report(model, samples, args.batch_size)
    for group, metrics in report.items():
        maes = "  ".join(f"{name} {value:.2f}" for name, value in metrics.items() if name != "structures")
        print(f"test {group:12s} {metrics['structures']:4d} structures  {maes}")

    extra = {
        "teacher": f"GFN2-xTB (tblite {version('tblite')})",
        "dataset": {"file": args.data.name, "structures": len(samples), "max_force_eV_per_A": args.max_force,
                    "splits": {name: len(members) for name, members in splits.items()},
                    "subsets": {subset: sum(s.subset == subset for s in samples) for subset in sorted({s.subset for s in samples})}},
        "seeds": {"training": args.seed, "data": "training/generate_data.py default --seed"},
        "training": {**summary, "batch_size": args.batch_size, "peak_learning_rate": args.learning_rate,
                     "loss_weights": vars(LossWeights(args.energy_weight, args.force_weight, args.stress_weight)),
                     "machine": f"CPU, {args.threads} threads"},
        "test_mae": report,
        "parameters": count_parameters(model),
        "torch_version": torch.__version__,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    card = save_checkpoint(model, args.output, extra=extra)
    check_round_trip(model, card, splits["test"][: args.batch_size])
    print(f"saved {card} and {card.with_suffix('.safetensors')}")


def check_round_trip(model: PaiNN, card: Path, samples: Sequence[Sample]) -> None:
    """Reload the checkpoint and check it predicts the same energies as the trained model."""
    reloaded = load_checkpoint(card)
    batch = make_batch(samples)
    expected = predict(model, batch, create_graph=False)[0]
    actual = predict(reloaded, batch, create_graph=False)[0]
    if not torch.allclose(expected, actual, rtol=0.0, atol=1e-4):
        raise RuntimeError(f"reloaded checkpoint disagrees: {(expected - actual).abs().max():.2e} eV")


if __name__ == "__main__":
    main()
