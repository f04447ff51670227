"""Real VLM backbones as teachers (distill.hf_vla): tiny random PaliGemma, SmolVLM and Idefics3 folders, saved to
disk and loaded through ``hf:PATH`` with local files only; the family's own parts are what runs; train-teacher on them,
distill a routed student, exact parity with every gate open, only routed layers execute, the vision tower counted
as a fixed FLOPs cost; checkpoints round-trip with their tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from test_student import INSTRUCTIONS, SyntheticDemos, tiny_config

from distill import load_policy
from distill.checkpoint import convert_checkpoint, load_teacher, save_checkpoint
from distill.flops import count_flops, flops_for_batch, forward_flops, measured_flops, routed_share, seq_len
from distill.hf_vla import FAMILIES, HFVLA, HFStudentVLA, parse_hf_spec
from distill.routed import StudentPolicy, StudentVLA
from distill.student import distill
from distill.tokenizer import WordTokenizer
from distill.train import train_teacher
from harness import cli
from tasks.errors import MissingInputError, UserInputError

CHUNK = 4
STATS = {"mean": [0.0] * 7, "std": [0.5] * 7}
PROPRIO = {"mean": [0.0] * 8, "std": [1.0] * 8}
LAYERS = {"paligemma": 3, "smolvlm": 4, "idefics3": 2}  # the tiny folders' decoder layers; one folder per family


def _word_tokenizer(folder) -> None:
    """A word-level ``tokenizers`` tokenizer over the test instructions, saved as a real VLM folder holds one."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = WordTokenizer.build(INSTRUCTIONS).vocab
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]",
                                         pad_token="[PAD]").save_pretrained(str(folder))


def _save_tiny_vlm(family: str, folder) -> None:
    """A tiny random VLM of ``family`` saved with ``save_pretrained``: PaliGemma (SigLIP 28 px / patch 14 = 4 image
    tokens, Gemma 3 layers, with a tokenizer), SmolVLM and Idefics3 (32 px / patch 8, pixel shuffle 2 = 4 tokens,
    Llama 4 and 2 layers, no tokenizer: the word fallback; SmolVLM's folder has a preprocessor_config.json with its
    own mean and std)."""
    torch.manual_seed(0)
    llama = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": LAYERS[family],
             "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 64}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}
    if family == "paligemma":
        config = transformers.PaliGemmaConfig(
            vision_config={**vision, "model_type": "siglip_vision_model", "image_size": 28, "patch_size": 14,
                           "projection_dim": 32, "vision_use_head": False},
            text_config={**llama, "model_type": "gemma", "num_key_value_heads": 1, "head_dim": 16},
            projection_dim=32)
    else:
        config = getattr(transformers, FAMILIES[family].config_class)(vision_config=vision, text_config=llama,
                                                                     scale_factor=2)
    getattr(transformers, FAMILIES[family].model_class)(config).save_pretrained(str(folder))
    if family == "paligemma":
        _word_tokenizer(folder)
    if family == "smolvlm":
        (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.4, 0.5, 0.6],
                                                                     "image_std": [0.2, 0.25, 0.3]}))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("vlm")
    out = {}
    for family in LAYERS:
        _save_tiny_vlm(family, root / family)
        out[family] = root / family
    return out


@pytest.fixture(scope="module")
def teachers(folders) -> dict:
    """One HF VLA per family straight from its folder (random action head; eval mode)."""
    torch.manual_seed(0)
    return {family: HFVLA.from_pretrained(parse_hf_spec(f"hf:{folder}"), action_stats=STATS, proprio_stats=PROPRIO,
                                          instructions=INSTRUCTIONS, chunk=CHUNK).eval()
            for family, folder in folders.items()}


def _batch(model, data, rows=(0, 1, 2)) -> dict:
    return model.prepare([data[i] for i in rows])  # instructions of 5, 3 and 7 words: padded rows


def _vlm(folder, family):
    """The family's own ``*ForConditionalGeneration`` loaded from ``folder``, to compare against."""
    cls = getattr(transformers, FAMILIES[family].model_class)
    return cls.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32).eval()


@pytest.mark.parametrize("family", LAYERS)
def test_the_familys_own_parts_run(family, folders, teachers, data):
    teacher = teachers[family]
    assert teacher.num_layers == LAYERS[family] and teacher.config.vision_tokens == 2 * 4
    assert teacher.config.tokenizer == ("hf" if family == "paligemma" else "word")
    if family == "smolvlm":  # the folder's preprocessing statistics, not the 0.5 default
        assert teacher.config.image_mean == [0.4, 0.5, 0.6] and teacher.config.image_std == [0.2, 0.25, 0.3]
    vlm = _vlm(folders[family], family)
    batch = _batch(teacher, data)
    with torch.no_grad():
        pixels = teacher.pixels(batch["agentview"])  # (3, 3, S, S)
        shuffled = FAMILIES[family].pixel_shuffle  # SmolVLM / Idefics3 take (B, images, 3, S, S), give a list
        features = vlm.get_image_features(pixels[:, None] if shuffled else pixels).pooler_output
        features = torch.stack(list(features)) if shuffled else features  # (3, 4, D)
        torch.testing.assert_close(teacher.image_tokens(pixels), features, rtol=0, atol=1e-6)
        torch.testing.assert_close(teacher.text_embed(batch["input_ids"]),
                                   vlm.get_input_embeddings()(batch["input_ids"]), rtol=0, atol=0)
        # the decoder layers as the family's language model runs them, given our positions and attention bias
        emb = teacher.embed(batch)
        lm = getattr(vlm.model, FAMILIES[family].language)
        ref = lm(inputs_embeds=emb.hidden, attention_mask=emb.attention_bias,
                 position_ids=emb.position_ids).last_hidden_state
        torch.testing.assert_close(teacher.norm(teacher.run_layers(emb.hidden, emb)), ref, rtol=0, atol=1e-5)
    first = 1 if family == "paligemma" else 0  # PaliGemma's positions are 1-indexed
    assert emb.position_ids[:, 0].tolist() == [first] * 3
    # padding never moves the queries' positions: their ids follow the real tokens of each row
    assert emb.position_ids[:, -1].tolist() == [first + int(m.sum()) + 8 + CHUNK for m in batch["text_mask"]]


@pytest.mark.parametrize("family", LAYERS)
def test_batched_equals_one_by_one(family, teachers, data):
    teacher = teachers[family]
    with torch.no_grad():
        batched = teacher(_batch(teacher, data))  # (3, K, 7), instructions padded to the longest
        single = torch.cat([teacher(_batch(teacher, data, (i,))) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", LAYERS)
def test_all_gates_open_is_the_teacher_and_only_routed_layers_run(family, teachers, data):
    teacher = teachers[family]
    batch = _batch(teacher, data)
    full = StudentVLA.from_teacher(teacher, budget=1.0, router_dim=8).eval()
    assert isinstance(full, HFStudentVLA)
    with torch.no_grad():
        expected = teacher(batch)
        assert torch.equal(full(batch), expected)  # routed, budget 1: every layer
        assert torch.equal(full(batch, torch.ones(3, teacher.num_layers, dtype=torch.bool)), expected)
    student = StudentVLA.from_teacher(teacher, budget=0.5, router_dim=8).eval()
    with torch.no_grad():
        student.router.gate.weight.normal_(std=5.0)  # different routes per row
    rows_run = [0] * student.num_layers

    def count(idx: int):
        def hook(module, args, out) -> None:
            rows_run[idx] += args[0].shape[0]  # rows of hidden states this layer ran on
        return hook

    hooks = [layer.register_forward_hook(count(i)) for i, layer in enumerate(student.layers)]
    try:
        policy = StudentPolicy(student)
        _, layers = policy.model_call(batch)
        assert rows_run == [sum(idx in row for row in layers) for idx in range(student.num_layers)]
        assert all(len(row) == student.num_layers // 2 for row in layers)
        rows_run[:] = [0] * student.num_layers
        policy.reset()
        policy.act(data[0])  # batch 1: its route's layers only
        ran = policy.last_info["executed_layers"]
        assert rows_run == [int(idx in ran) for idx in range(student.num_layers)]
        assert len(ran) == student.num_layers // 2
    finally:
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize("family", LAYERS)
def test_flops_count_the_vision_tower_as_a_fixed_part(family, teachers, data):
    teacher = teachers[family]
    batch = _batch(teacher, data)
    share = routed_share(teacher, batch)
    with torch.no_grad():
        images = teacher.pixels(torch.cat([batch[cam] for cam in teacher.config.cameras]))  # (2*3, 3, S, S)
        tower = count_flops(lambda: teacher.image_tokens(images))
    assert share["vision"] == tower > 0 and share["routed"] > 0
    assert 0 < share["fixed_share"] < 1 and share["vision"] + share["embed_other"] + share["head"] == \
        share["total"] - share["routed"]
    assert seq_len(teacher, batch) == teacher.embed(batch).hidden.shape[1]
    measured = measured_flops(teacher, batch)["total"]
    assert abs(int(flops_for_batch(teacher, batch).sum()) - measured) <= 0.02 * measured
    one = forward_flops(teacher, 1, seq_len(teacher, batch), [0])  # one routed layer: the fixed part stays
    assert one["embed"] == forward_flops(teacher, 1, seq_len(teacher, batch), teacher.num_layers)["embed"]
    assert one["layers"] == one["per_layer"][0] > 0 and one["per_layer"][1:] == [0] * (teacher.num_layers - 1)


def test_checkpoint_round_trip_with_the_tokenizer(tmp_path, teachers, data):
    teacher = teachers["paligemma"]
    save_checkpoint(tmp_path / "ckpt", teacher)
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["kind"] == "hf_vla" and config["vla"]["hf_config"]["model_type"] == "paligemma"
    assert (tmp_path / "ckpt" / "tokenizer" / "tokenizer.json").is_file()
    policy = load_policy(tmp_path / "ckpt")
    assert isinstance(policy.model, HFVLA)
    with torch.no_grad():
        assert torch.equal(policy.model(_batch(policy.model, data)), teacher(_batch(teacher, data)))
    assert policy.act(data[0]).shape == (7,) and policy.last_info["flops"] > 0
    convert_checkpoint(tmp_path / "ckpt", tmp_path / "half")
    assert isinstance(load_teacher(tmp_path / "half")[0], HFVLA)  # the tokenizer came along


@pytest.mark.parametrize("family", LAYERS)
def test_train_teacher_from_hf_then_distill(family, folders, tmp_path):
    data = SyntheticDemos(n=12, chunk=CHUNK)
    out = tmp_path / "teacher"
    summary = train_teacher(data, out, init=f"hf:{folders[family]}", steps=3, batch_size=4, lr=1e-3, warmup=1,
                            ckpt_every=3, chunk=CHUNK, progress=False)
    assert summary["step"] == 3 and summary["loss"] > 0
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "hf_vla" and config["training"]["init"]["path"] == f"hf:{folders[family]}"
    trained, _ = load_teacher(out)
    before = getattr(_vlm(folders[family], family).model, FAMILIES[family].language).layers[0].mlp.down_proj.weight
    assert not torch.equal(trained.layers[0].mlp.down_proj.weight, before)  # fine-tuned, from the folder's weights
    assert torch.allclose(trained.layers[0].mlp.down_proj.weight, before, atol=1e-2)

    result = distill(out, data, [0.5], tmp_path / "distill", progress=False,
                     config=tiny_config(steps=2, stage1_steps=2, batch_size=4))
    folder = tmp_path / "distill" / "student-b0.5"
    assert result["budgets"]["0.5"]["status"] == "trained"
    assert json.loads((folder / "config.json").read_text())["kind"] == "hf_routed_student"
    policy = load_policy(folder)
    assert isinstance(policy, StudentPolicy) and isinstance(policy.model, HFStudentVLA)
    policy.act(data[0])
    assert len(policy.last_info["executed_layers"]) == LAYERS[family] // 2


def test_hf_specs_and_families_are_checked(tmp_path, folders, capsys):
    with pytest.raises(MissingInputError, match="no config.json"):
        parse_hf_spec(f"hf:{tmp_path / 'nothing'}")
    (tmp_path / "qwen").mkdir()
    (tmp_path / "qwen" / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    with pytest.raises(UserInputError, match="supported VLM families: paligemma, smolvlm, idefics3"):
        HFVLA.from_pretrained(tmp_path / "qwen", action_stats=STATS, proprio_stats=PROPRIO)
    args = ["distill", "--teacher", f"hf:{folders['smolvlm']}", "--data", str(tmp_path),
            "--out", str(tmp_path / "o")]
    assert cli.main(args) == 2
    assert f"train-teacher --init hf:{folders['smolvlm']}" in capsys.readouterr().err
