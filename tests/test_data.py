"""Training data (distill.data): opening demonstration folders, collating items, the vectorised augmentation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_student import SyntheticDemos, tiny_teacher

from distill.data import ItemCollate, collate, dataset_dirs, open_dataset, random_shift
from tasks.errors import MissingInputError


def test_open_dataset_passes_a_dataset_through_and_names_missing_folders(tmp_path):
    data = SyntheticDemos(n=4)
    assert open_dataset(data, chunk=4) is data and dataset_dirs(data) == []
    assert dataset_dirs([tmp_path / "a", "b"]) == [str(tmp_path / "a"), "b"]
    with pytest.raises(MissingInputError, match=f"demonstration folder.s. not found: {tmp_path / 'nope'}"):
        open_dataset([tmp_path, tmp_path / "nope"], chunk=4)


def test_collate_from_items_equals_collate_from_the_loader_output():
    teacher, data = tiny_teacher(), SyntheticDemos(n=5)
    items = [data[i] for i in range(5)]
    direct, loaded = collate(teacher, items), collate(teacher, ItemCollate(teacher)(items))
    assert direct.inputs.keys() == loaded.inputs.keys()
    assert all(torch.equal(direct.inputs[k], loaded.inputs[k]) for k in direct.inputs)
    assert torch.equal(direct.actions, teacher.normalize_actions(torch.stack([it["actions"] for it in items])))
    assert direct.mask.dtype == torch.bool and direct.sample_ids.tolist() == [1000 + 7 * i for i in range(5)]


def test_vectorised_random_shift_equals_the_per_image_crop():
    images = torch.randint(0, 256, (5, 16, 12, 3), dtype=torch.uint8)
    shifted = random_shift(images, 3, torch.Generator().manual_seed(7))
    dy, dx = torch.randint(0, 7, (2, 5), generator=torch.Generator().manual_seed(7)).tolist()
    padded = F.pad(images.permute(0, 3, 1, 2).float(), (3, 3, 3, 3), mode="replicate")
    for i in range(5):
        expect = padded[i, :, dy[i]:dy[i] + 16, dx[i]:dx[i] + 12].permute(1, 2, 0).to(torch.uint8)
        assert torch.equal(shifted[i], expect)
    assert random_shift(images, 0, torch.Generator()) is images
