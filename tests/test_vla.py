"""VLA interface, reference teacher and adapter: shapes, layer skipping, padding, two HF architectures.

Also holds the tiny synthetic demonstration dataset and tiny-model builders used by the other
distill tests (``from test_vla import SyntheticDemos, tiny_vla``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from distill.adapter import from_transformers
from distill.checkpoint import VLAPolicy
from distill.tokenizer import UNK, WordTokenizer
from distill.vla import VLA, VLAConfig, postprocess_actions, teacher_config

INSTRUCTIONS = ["pick up the coke can", "open the top drawer", "put the spoon on the towel, then stop"]
TINY = {
    "hidden_size": 32,
    "num_layers": 3,
    "num_heads": 4,
    "intermediate_size": 64,
    "vision_grid": 2,
    "stem_channels": 4,
}


class SyntheticDemos(Dataset):
    """Items in the ``tasks.datasets.DemoDataset`` format; actions are learnable from proprio+instruction."""

    def __init__(self, n: int = 64, chunk: int = 8, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.chunk = chunk
        self.proprio = rng.normal(size=(n, 8)).astype(np.float32)
        self.task = rng.integers(0, len(INSTRUCTIONS), n)
        self.images = rng.integers(0, 256, (n, 2, 128, 128, 3), dtype=np.uint8)
        self.valid = np.minimum(chunk, rng.integers(3, 2 * chunk, n))
        w = rng.normal(size=(8, 7)).astype(np.float32) * 0.3
        bias = rng.normal(size=(len(INSTRUCTIONS), 7)).astype(np.float32) * 0.3
        base = np.tanh(self.proprio @ w + bias[self.task])  # (n, 7)
        steps = np.linspace(0.0, 0.2, chunk, dtype=np.float32)[None, :, None]
        self.actions = np.clip(base[:, None, :] + steps, -1, 1)  # (n, K, 7)
        self.actions[..., -1] = np.where(self.proprio[:, :1] > 0, 1.0, -1.0)

    def __len__(self) -> int:
        return len(self.proprio)

    def instructions(self) -> list[str]:
        return list(INSTRUCTIONS)

    def __getitem__(self, i: int) -> dict:
        mask = np.arange(self.chunk) < self.valid[i]
        actions = self.actions[i].copy()
        actions[~mask] = actions[self.valid[i] - 1]
        return {
            "agentview": torch.from_numpy(self.images[i, 0]),
            "wrist": torch.from_numpy(self.images[i, 1]),
            "proprio": torch.from_numpy(self.proprio[i]),
            "instruction": INSTRUCTIONS[self.task[i]],
            "actions": torch.from_numpy(actions),
            "action_mask": torch.from_numpy(mask),
            "sample_id": torch.tensor(i, dtype=torch.int64),
            "suite": "synthetic",
            "task": f"t{self.task[i]}",
        }


def tiny_config(**overrides) -> VLAConfig:
    vocab = WordTokenizer.build(INSTRUCTIONS).vocab
    stats = {"mean": [0.1] * 7, "std": [0.5] * 7}
    proprio = {"mean": [0.0] * 8, "std": [1.0] * 8}
    return teacher_config("small", vocab, stats, proprio, **{**TINY, **overrides})


def tiny_vla(seed: int = 0, **overrides) -> VLA:
    torch.manual_seed(seed)
    return VLA(tiny_config(**overrides)).eval()


def make_obs(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "agentview": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
            "wrist": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
            "proprio": rng.normal(size=8).astype(np.float32),
            "instruction": INSTRUCTIONS[i % len(INSTRUCTIONS)],
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def vla() -> VLA:
    return tiny_vla()


def test_embed_layout_and_shapes(vla):
    batch = vla.prepare(make_obs(3))
    emb = vla.embed(batch)
    t = batch["input_ids"].shape[1]
    n = 2 * 2 * 2 + 1 + t + vla.config.chunk
    assert emb.hidden.shape == (3, n, 32)
    assert emb.attention_mask.shape == emb.vision_mask.shape == emb.text_mask.shape == (3, n)
    assert emb.vision_mask.sum(1).tolist() == [8, 8, 8]
    assert emb.query_mask[:, -vla.config.chunk :].all() and emb.query_mask.sum() == 3 * vla.config.chunk
    assert torch.equal(emb.text_mask.sum(1), batch["text_mask"].sum(1))
    assert not emb.attention_mask.all()  # the three instructions differ in length, so there is padding
    assert emb.attention_bias.shape == (3, 1, 1, n)
    cos, sin = emb.position_embeddings
    assert cos.shape == sin.shape == (3, n, 8)
    # the action queries sit right after the last real token in rotary positions
    assert torch.equal(emb.position_ids[:, -1], emb.attention_mask.sum(1) - 1)
    assert vla(batch).shape == (3, vla.config.chunk, 7)


def test_batched_equals_one_by_one_despite_padding(vla):
    obs = make_obs(3)
    with torch.no_grad():
        batched = vla(vla.prepare(obs))
        single = torch.cat([vla(vla.prepare([o])) for o in obs])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_all_true_layer_mask_equals_none(vla):
    batch = vla.prepare(make_obs(2))
    with torch.no_grad():
        full = vla(batch)
        masked = vla(batch, layer_mask=torch.ones(2, vla.num_layers, dtype=torch.bool))
    assert torch.equal(full, masked)


def test_skipped_layer_is_identity(vla):
    batch = vla.prepare(make_obs(2))
    mask = torch.ones(2, vla.num_layers, dtype=torch.bool)
    mask[:, 1] = False
    with torch.no_grad():
        routed = vla(batch, layer_mask=mask)
        emb = vla.embed(batch)
        h = emb.hidden
        for idx in (0, 2):
            h = vla.run_layer(idx, h, emb)
        manual = vla.head(h, emb)
        assert torch.equal(routed, manual)
        assert not torch.allclose(routed, vla(batch))  # the skipped layer did matter


def test_per_row_layer_mask_matches_rows_run_alone(vla):
    obs = make_obs(3)
    mask = torch.ones(3, vla.num_layers, dtype=torch.bool)
    mask[0, 0] = False
    mask[2, 2] = False
    with torch.no_grad():
        routed = vla(vla.prepare(obs), layer_mask=mask)
        for row in range(3):
            alone = vla(vla.prepare([obs[row]]), layer_mask=mask[row : row + 1])
            torch.testing.assert_close(routed[row : row + 1], alone, atol=1e-5, rtol=1e-5)


def test_layer_mask_shape_error(vla):
    batch = vla.prepare(make_obs(2))
    with pytest.raises(ValueError, match=r"layer_mask must be a bool tensor of shape \(2, 3\)"):
        vla(batch, layer_mask=torch.ones(2, 5, dtype=torch.bool))


def test_eager_and_sdpa_agree():
    model = tiny_vla()
    batch = model.prepare(make_obs(2))
    with torch.no_grad():
        sdpa = model(batch)
        model.set_attn_implementation("eager")
        eager = model(batch)
    assert model.attn_implementation == "eager"
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-5)


def test_decoder_layers_are_llama_and_bidirectional(vla):
    assert vla.num_layers == 3 and len(vla.layers) == 3
    assert type(vla.layers[0]).__name__ == "LlamaDecoderLayer"
    assert all(not layer.self_attn.is_causal for layer in vla.layers)
    # bidirectional: changing the last (action-query) token's input changes the first token's output
    batch = vla.prepare(make_obs(1))
    with torch.no_grad():
        emb = vla.embed(batch)
        out_a = vla.run_layer(0, emb.hidden, emb)
        hidden = emb.hidden.clone()
        hidden[:, -1] += 1.0
        out_b = vla.run_layer(0, hidden, emb)
    assert not torch.allclose(out_a[:, 0], out_b[:, 0])


def test_prepare_errors_name_the_key(vla):
    obs = make_obs(1)[0]
    with pytest.raises(ValueError, match=r"'wrist': got shape \(64, 64, 3\), expected \(128, 128, 3\)"):
        vla.prepare([{**obs, "wrist": np.zeros((64, 64, 3), np.uint8)}])
    with pytest.raises(ValueError, match="missing 'proprio'"):
        vla.prepare([{k: v for k, v in obs.items() if k != "proprio"}])


def test_tokenizer():
    tok = WordTokenizer.build(INSTRUCTIONS)
    assert tok.vocab[:2] == ["[PAD]", UNK] and "," in tok.vocab and "coke" in tok.vocab
    ids, mask = tok.batch_encode(["Pick up the banana", "open"], max_len=3)
    assert ids.shape == (2, 3) and mask.tolist() == [[True, True, True], [True, False, False]]
    assert ids[0].tolist() == [tok.vocab.index("pick"), tok.vocab.index("up"), tok.vocab.index("the")]
    assert tok.encode("banana", 5) == [tok.unk_id]
    with pytest.raises(ValueError, match="must start with"):
        WordTokenizer(["a", "b"])


def test_postprocess_clips_and_binarises_gripper():
    raw = np.array([[2.0, -3.0, 0.5, 0.0, 0.0, 0.0, 0.2], [0, 0, 0, 0, 0, 0, -0.01]], np.float32)
    out = postprocess_actions(raw)
    assert out[0, :3].tolist() == [1.0, -1.0, 0.5]
    assert out[:, -1].tolist() == [1.0, -1.0]


def test_config_errors():
    with pytest.raises(ValueError, match="unknown profile 'huge'; valid profiles: small, full"):
        teacher_config("huge", ["[PAD]", "[UNK]"], {}, {})
    with pytest.raises(ValueError, match="vision_grid"):
        tiny_config(vision_grid=5)
    with pytest.raises(ValueError, match="vision_keypoints must be >= 0"):
        tiny_config(vision_keypoints=-1)
    assert VLAConfig.from_dict(tiny_config().to_dict()) == tiny_config()


@pytest.mark.parametrize("arch", ["qwen2", "mistral"])
def test_adapter_wraps_a_config(arch):
    import transformers

    cls = {"qwen2": transformers.Qwen2Config, "mistral": transformers.MistralConfig}[arch]
    cfg = cls(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
    )
    torch.manual_seed(0)
    model = from_transformers(cfg, instructions=INSTRUCTIONS, vision_grid=2, stem_channels=4).eval()
    assert model.num_layers == 2 and model.config.backbone["model_type"] == arch
    batch = model.prepare(make_obs(2))
    with torch.no_grad():
        full = model(batch)
        mask = torch.tensor([[True, False], [True, True]])
        routed = model(batch, layer_mask=mask)
        emb = model.embed(batch)
        manual_row0 = model.head(model.run_layer(0, emb.hidden, emb), emb)[0]
    assert full.shape == (2, 8, 7) and torch.isfinite(full).all()
    torch.testing.assert_close(routed[1], full[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(routed[0], manual_row0, atol=1e-5, rtol=1e-5)
    policy = VLAPolicy(model)
    action = policy.act(make_obs(1)[0])
    assert action.shape == (7,) and np.all(np.abs(action) <= 1)


def test_adapter_reuses_pretrained_llama_layers():
    import transformers

    lm = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=50
        )
    )
    model = from_transformers(lm, instructions=INSTRUCTIONS, vision_grid=2, stem_channels=4)
    assert model.layers[0] is lm.model.layers[0] and model.norm is lm.model.norm
    assert "embed_tokens" not in "".join(model.state_dict())
    # a rebuilt model from the stored config has the same parameter names and shapes
    rebuilt = VLA(model.config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    with pytest.raises(ValueError, match="exposes no decoder"):
        from_transformers(torch.nn.Linear(2, 2))


def test_coordconv_stem_sees_pixel_positions():
    vla = tiny_vla(vision_coords=True).eval()
    assert vla.vision.stem[0].in_channels == 5 and tiny_vla().vision.stem[0].in_channels == 3
    blank = torch.zeros(1, vla.config.image_size, vla.config.image_size, 3, dtype=torch.uint8)
    with torch.no_grad():
        tokens = vla.vision(blank)  # (1, G*G, D): a blank image still gives position-dependent features
    assert tokens.shape[1] == vla.config.vision_grid ** 2
    assert not torch.allclose(tokens[0, 0] - vla.vision.pos[0], tokens[0, -1] - vla.vision.pos[-1])
    with torch.no_grad():
        assert torch.isfinite(vla(vla.prepare(make_obs(2)))).all()


def test_keypoint_token_is_the_soft_argmax_of_the_stride8_map(tmp_path):
    vla = tiny_vla(vision_keypoints=3).eval()
    assert vla.config.tokens_per_camera == vla.config.vision_grid ** 2 + 1
    cells = vla.config.image_size // 8
    peak = (5, 11)  # (row, column) of the one hot cell
    hot = torch.zeros(1, 2 * vla.config.stem_channels, cells, cells)
    hot[0, 0, peak[0], peak[1]] = 1.0
    with torch.no_grad():  # map k reads channel 0 with gain 60: a near one-hot softmax at the peak
        vla.vision.keypoint_maps.weight.zero_()
        vla.vision.keypoint_maps.weight[:, 0] = 60.0
        vla.vision.keypoint_maps.bias.zero_()
    seen = {}
    vla.vision.stem[3].register_forward_hook(lambda mod, inp, out: hot.expand_as(out))
    vla.vision.keypoint_proj.register_forward_hook(lambda mod, inp, out: seen.update(xy=inp[0]))
    blank = torch.zeros(1, vla.config.image_size, vla.config.image_size, 3, dtype=torch.uint8)
    with torch.no_grad():
        tokens = vla.vision(blank)
    assert tokens.shape == (1, vla.config.vision_grid ** 2 + 1, vla.config.hidden_size)
    centre = lambda i: (i + 0.5) / cells * 2 - 1
    expected = torch.tensor([centre(peak[1]), centre(peak[0])] * 3)  # x (column), y (row) per map
    assert torch.allclose(seen["xy"][0], expected, atol=1e-3)
    # the whole model: two more tokens, finite actions, and a save/load round trip keeps them
    model = tiny_vla(vision_keypoints=3).eval()
    batch = model.prepare(make_obs(2))
    emb = model.embed(batch)
    assert emb.hidden.shape[1] == tiny_vla().embed(batch).hidden.shape[1] + 2
    assert emb.spans[0] == 2 * model.config.tokens_per_camera
    from distill.checkpoint import load_vla, save_checkpoint
    save_checkpoint(tmp_path / "kp", model)
    with torch.no_grad():
        assert torch.equal(model(batch), load_vla(tmp_path / "kp")[0](batch))


@pytest.mark.parametrize("encoder", ["deep", "patch"])
def test_fast_inference_vision_matches_eager_and_stays_out_of_training_and_flop_counting(encoder):
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    model = tiny_vla(vision_encoder=encoder, vision_keypoints=4)
    policy = VLAPolicy(model)  # policies turn the frozen encoder on
    slot = model.__dict__["_fast_vision"]
    one, three = (model.prepare(make_obs(n)) for n in (1, 3))
    with torch.inference_mode():
        fast1 = model.embed(one).hidden
        assert slot.module is not None  # traced on the first call (2 images)...
        fast3 = model.embed(three).hidden  # ...and reused at another batch size
        model.fast_inference(False)
        eager1, eager3 = model.embed(one).hidden, model.embed(three).hidden
    torch.testing.assert_close(fast1, eager1, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast3, eager3, atol=1e-5, rtol=0)
    model.fast_inference()
    assert not any("fast" in k for k in model.state_dict())  # checkpoints are unchanged
    assert copy.deepcopy(model).__dict__["_fast_vision"].module is None  # a copy traces afresh
    with torch.inference_mode():
        model.embed(one)
        with FlopCounterMode(display=False) as counter:  # a dispatch mode sees the eager ops
            model.embed(one)
    model.fast_inference(False)
    with torch.inference_mode(), FlopCounterMode(display=False) as eager_counter:
        model.embed(one)
    assert counter.get_total_flops() == eager_counter.get_total_flops() > 0
    model.fast_inference()
    model.train()  # training runs the module itself: gradients reach the stem
    model.embed(one).hidden.sum().backward()
    assert next(model.vision.stem.parameters()).grad is not None
    model.eval()
    assert policy.model is model
