"""Base of the backends whose graph takes a padded neighbor table (bucketed shapes).

:class:`PaddedTableBackend` gives every such backend (the joint graph in PyTorch, ONNX Runtime
with CUDA graphs) the same entry points around one ``run(feeds)``:

* ``evaluate(inputs)``: interface inputs (a pair list, any batch) -> table feeds -> outputs;
* ``launch_atoms(atoms)``: one ASE structure -> feeds built on the
  CUDA device (:class:`~mlff_export.runtime.device_feeds.DeviceFeeds`: no CPU neighbor search)
  -> outputs on the host (a captured graph copies them there itself: ``launch_captured``);
  ``None`` where the device cannot build them (the calculator then uses the CPU list); a structure
  the backend does not take whole (``takes_whole``: memory) goes to ``launch_large`` with its pair
  list (domains, where the backend has them);
* ``launch_batch(structures)``: the same for a batch of small molecules, one table for all.

The launches measure the closest pair on the device too
(:func:`~mlff_export.runtime.device_feeds.closest_distance`, inside the bucket's CUDA graph where
``run`` returns it as ``"closest_distance"``) and bring it back with the outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from ase import Atoms

from mlff_export.interface import OUTPUT_NAMES, AtomicInputs
from mlff_export.runtime.device_feeds import DeviceFeeds, closest_distance, on_device, table_feeds
from mlff_export.runtime.shape_buckets import strip_padding


class PaddedTableBackend:
    """Runs a neighbor-table graph, float32, on feeds padded to shape buckets.

    Subclasses implement :meth:`run`. Outputs: energy [B] eV, forces [N, 3] eV/Å, virial
    [B, 3, 3] eV.
    """

    name = "padded-table"
    dtype = torch.float32

    def __init__(self, device: torch.device, cutoff: float, species: tuple[int, ...]):
        self.device = device
        self.cutoff = float(cutoff)
        self.species = tuple(species)
        self.device_feeds = DeviceFeeds(cutoff, self.species[0], device) if device.type == "cuda" else None
        self._host_outputs = torch.empty(0)  # pinned once a call needs it

    def prepare(self, inputs: AtomicInputs) -> dict[str, torch.Tensor]:
        """Padded neighbor-table feeds of ``inputs`` on the device."""
        return table_feeds(inputs, self.device, self.species[0])

    def takes_whole(self, pairs: int) -> bool:
        """Whether a call of ``pairs`` pairs (or table slots) runs as one graph call now; larger
        structures go through :meth:`launch_large` (domains), larger batches through :meth:`evaluate`."""
        return True

    def runs_on_pair_list(self, pairs: int) -> bool:
        """Whether a structure of ``pairs`` pairs skips the table (:meth:`launch_large` on its pair list)."""
        return False

    def run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The graph on prepared feeds; outputs include the padding and may be reused by the next
        run. May add ``"closest_distance"`` ([1], Å: :func:`closest_distance` of the feeds)."""
        raise NotImplementedError

    def evaluate(self, inputs: AtomicInputs) -> dict[str, torch.Tensor]:
        outputs = strip_padding(self.run(self.prepare(inputs)), inputs.num_atoms, inputs.num_structures)
        # Graph replays reuse their output memory: copy before the next call overwrites it.
        return {name: value.clone() for name, value in outputs.items()}

    def launch_atoms(self, atoms: Atoms) -> Callable[[], dict[str, np.ndarray]] | None:
        """Start one structure on the GPU (feeds built on the device) and return ``finish``, which
        waits and gives float64 arrays: energy [1] eV, forces [N, 3] eV/Å, virial [1, 3, 3] eV,
        and closest_distance [1] Å (the structure's shortest pair, measured on the device).
        ``None`` where the feeds cannot be built on the device. The caller may do other CPU work
        between the two; results stay valid until the next launch.
        """
        if self.device_feeds is None:
            return None
        if self.device_feeds.takes_dense(atoms):
            return self._launch(self.device_feeds.dense(atoms), len(atoms), 1)
        reused = self.device_feeds.reused(atoms)  # a Verlet skin's table, only the positions new
        if reused is not None:
            return self._launch(reused, len(atoms), 1)
        inputs = self.device_feeds.search(atoms)
        if inputs is None:
            return None
        if not self.takes_whole(inputs.num_pairs) or self.runs_on_pair_list(inputs.num_pairs):
            return self.launch_large(inputs)
        feeds = table_feeds(inputs, self.device, self.species[0])
        self.device_feeds.keep(atoms, feeds)
        return self._launch(feeds, len(atoms), 1)

    def launch_large(self, inputs: AtomicInputs) -> Callable[[], dict[str, np.ndarray]] | None:
        """As :meth:`launch_atoms` for one structure that :meth:`takes_whole` refuses, whose pair
        list was searched on the device (``inputs``); ``None`` here: the calculator's CPU path."""
        return None

    def launch_batch(self, structures: Sequence[Atoms]) -> Callable[[], dict[str, np.ndarray]] | None:
        """As :meth:`launch_atoms` for many molecules in one call (feeds built on the device:
        :meth:`DeviceFeeds.batch`): energy [B], forces [N, 3] (structures in order), virial
        [B, 3, 3], closest_distance [1] (the shortest pair of them all). ``None`` unless every
        structure is a small non-periodic molecule and the table :meth:`takes_whole`."""
        feeds = self.device_feeds.batch(list(structures)) if self.device_feeds is not None else None
        if feeds is None or not self.takes_whole(feeds["neighbor_index"].numel()):
            return None
        return self._launch(feeds, sum(len(atoms) for atoms in structures), len(structures))

    def launch_captured(self, feeds: dict[str, torch.Tensor], num_atoms: int, num_structures: int) -> Callable[[], dict[str, np.ndarray]] | None:
        """``finish`` of a launch that a captured graph completes by itself (its outputs copied to
        the host inside the graph), or ``None`` where this backend has none for ``feeds``."""
        return None

    def _launch(self, feeds: dict[str, torch.Tensor], num_atoms: int, num_structures: int) -> Callable[[], dict[str, np.ndarray]]:
        finish = self.launch_captured(feeds, num_atoms, num_structures)
        if finish is not None:
            return finish
        padded_outputs = self.run(feeds)
        closest = padded_outputs.get("closest_distance")
        closest = closest_distance(on_device(feeds, self.device)) if closest is None else closest
        return self._copied_back(strip_padding(padded_outputs, num_atoms, num_structures), closest)

    def _copied_back(self, outputs: dict[str, torch.Tensor], closest: torch.Tensor) -> Callable[[], dict[str, np.ndarray]]:
        """``finish`` of :meth:`launch_atoms` for unpadded outputs on the device."""
        num_structures, num_atoms = outputs["energy"].shape[0], outputs["forces"].shape[0]
        packed = packed_outputs({**outputs, "closest_distance": closest})
        if self._host_outputs.numel() < packed.numel():  # one pinned buffer, grown to the largest call
            self._host_outputs = torch.empty(packed.numel(), pin_memory=True)
        host = self._host_outputs[: packed.numel()]
        host.copy_(packed, non_blocking=True)  # one device-to-host copy for all outputs
        done = torch.cuda.Event()
        done.record()

        def finish() -> dict[str, np.ndarray]:
            done.synchronize()
            return unpacked_outputs(host.numpy(), num_atoms, num_structures)

        return finish


HOST_OUTPUTS = (*OUTPUT_NAMES, "closest_distance")
"""What a launch brings back to the host, in the order of :func:`packed_outputs`."""


def packed_outputs(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """:data:`HOST_OUTPUTS` flattened into one vector (one device-to-host copy brings them all)."""
    return torch.cat([outputs[name].reshape(-1) for name in HOST_OUTPUTS])


def unpacked_outputs(
    values: np.ndarray, num_atoms: int, num_structures: int, padded_atoms: int | None = None, padded_structures: int | None = None
) -> dict[str, np.ndarray]:
    """The real atoms' and structures' outputs of a :func:`packed_outputs` vector whose outputs
    were padded to ``padded_atoms`` and ``padded_structures`` (default: not padded), as float64
    copies: energy [B] eV, forces [N, 3] eV/Å, virial [B, 3, 3] eV, closest_distance [1] Å."""
    forces_start = num_structures if padded_structures is None else padded_structures
    virial_start = forces_start + 3 * (num_atoms if padded_atoms is None else padded_atoms)
    return {
        "energy": values[:num_structures].astype(np.float64),
        "forces": values[forces_start : forces_start + 3 * num_atoms].reshape(num_atoms, 3).astype(np.float64),
        "virial": values[virial_start : virial_start + 9 * num_structures].reshape(num_structures, 3, 3).astype(np.float64),
        "closest_distance": values[-1:].astype(np.float64),
    }
