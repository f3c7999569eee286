"""Hostile input to compress_lm, finetune_factors, save_pretrained and load_pretrained on a
tiny random LLaMA: token ids outside the vocabulary or of a float dtype are named
errors; a fine-tune that diverges or is interrupted puts the factors back and every
module's mode; a failing save leaves the folder as it was; a tampered folder (config,
factor shapes, NaN weights, a file that is not safetensors) is refused before anything
it describes is allocated."""

import copy
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_compress import llama

from compactnn.lm import compress_lm, finetune_factors, load_pretrained, save_pretrained
from compactnn.lm import pretrained as pretrained_module
from compactnn.lm.pretrained import WEIGHTS_FILE

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)
Q = "model.layers.0.self_attn.q_proj"


def stream(n=400, seed=0):
    return torch.randint(0, 60, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def compressed():
    return compress_lm(llama(), "svd", 0.4)[0]


@pytest.fixture
def fresh(compressed):
    return copy.deepcopy(compressed)  # the fine-tune tests change their model


def factors(model):
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith((".U", ".V"))}


# -- compress_lm ------------------------------------------------------------------
@pytest.mark.parametrize("shift", [60, -61])
def test_calibration_ids_outside_the_vocabulary_are_named(shift):
    calib = stream(64).view(4, 16) + shift
    with pytest.raises(ValueError, match=r"calibration holds token ids in .* outside the "
                                         r"model's vocabulary \[0, 59\]"):
        compress_lm(llama(), "svd_llm", 0.4, calib)


# -- finetune_factors ----------------------------------------------------------------
def test_finetune_refuses_float_and_out_of_vocabulary_ids(fresh):
    with pytest.raises(ValueError, match=r"ids must be a 1-D integer token tensor .*float32"):
        finetune_factors(fresh, stream().float(), steps=1, seq_len=8)
    with pytest.raises(ValueError, match=r"ids holds token ids in \[\d+, \d+\], outside"):
        finetune_factors(fresh, stream() + 60, steps=1, seq_len=8)


def test_finetune_gives_every_module_its_own_mode_back(fresh):
    model = fresh
    model.train()
    model.model.layers[1].eval()
    modes = [(n, m.training) for n, m in model.named_modules()]
    finetune_factors(model, stream(), steps=1, seq_len=8, batch_size=2)
    assert [(n, m.training) for n, m in model.named_modules()] == modes


def test_a_diverging_finetune_is_an_error_and_puts_the_factors_back(fresh):
    before = factors(fresh)
    with pytest.raises(FloatingPointError, match="not finite|the loss is"):
        finetune_factors(fresh, stream(), steps=3, seq_len=8, batch_size=2, lr=1e30)
    after = factors(fresh)
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_an_interrupted_finetune_puts_factors_flags_and_modes_back(fresh):
    model = fresh
    before = factors(model)
    grads = [p.requires_grad for p in model.parameters()]
    calls = []

    def interrupt(*_):
        calls.append(1)
        if len(calls) == 3:  # after two optimizer steps
            raise KeyboardInterrupt

    handle = model.model.norm.register_forward_pre_hook(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            finetune_factors(model, stream(), steps=5, seq_len=8, batch_size=2, lr=1e-2)
    finally:
        handle.remove()
    after = factors(model)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert [p.requires_grad for p in model.parameters()] == grads
    assert not any(m.training for m in model.modules())


# -- save_pretrained ------------------------------------------------------------------
def listing(folder):
    return {p: open(os.path.join(folder, p), "rb").read() for p in sorted(os.listdir(folder))}


def test_a_bad_tokenizer_is_refused_before_anything_is_written(tmp_path, compressed):
    target = tmp_path / "a" / "b"
    with pytest.raises(TypeError, match="tokenizer must have a save_pretrained method"):
        save_pretrained(compressed, target, tokenizer=3)
    assert os.listdir(tmp_path) == []


def test_a_save_failing_mid_way_leaves_the_folder_as_it_was(tmp_path, monkeypatch, compressed):
    folder = tmp_path / "m"
    save_pretrained(compress_lm(llama(1), "svd", 0.2)[0], folder)
    before = listing(folder)

    def broken(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pretrained_module, "save_model", broken)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(compressed, folder)
    assert listing(folder) == before
    assert sorted(os.listdir(tmp_path)) == ["m"]  # no staging folder left
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(compressed, tmp_path / "new" / "deeper")
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_an_empty_folder_name_is_refused(compressed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # "" would otherwise mean the current folder
    with pytest.raises(ValueError, match="folder must not be empty"):
        save_pretrained(compressed, "")
    with pytest.raises(ValueError, match="folder must not be empty"):
        load_pretrained("")
    assert os.listdir(tmp_path) == []


# -- load_pretrained on a tampered folder -----------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory, compressed):
    folder = tmp_path_factory.mktemp("saved") / "m"
    save_pretrained(compressed, folder)
    plain = folder.parent / "hf"
    compressed.save_pretrained(plain)  # Hugging Face's own writer
    return folder, plain


def copy_of(folder, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(folder, out)
    return out


def edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("changes, message", [
    # a vocabulary of 10**12 would allocate terabytes before any weight is read
    ({"vocab_size": 10**12}, r"'model.embed_tokens.weight' has shape \(60, 32\) but "
                             r"config.json describes \(1000000000000, 32\)"),
    ({"hidden_size": 64}, r"has shape \(60, 32\) but config.json describes \(60, 64\)"),
])
def test_a_tampered_config_is_refused_before_allocation(saved, tmp_path, changes, message):
    folder = copy_of(saved[0], tmp_path)
    edit_config(folder, **changes)
    with pytest.raises(ValueError, match=message):
        load_pretrained(folder)


class Skeleton(torch.nn.Module):
    """A model class whose buffer size comes from the config alone (as an attention
    mask's comes from the context length): no tensor of the file bounds it."""

    def __init__(self, config):
        super().__init__()
        self.register_buffer("mask", torch.ones(config.mask_entries), persistent=False)

    @classmethod
    def from_config(cls, config):
        return cls(config)


def test_config_buffers_larger_than_the_file_are_refused(saved, tmp_path):
    folder = copy_of(saved[0], tmp_path)
    edit_config(folder, mask_entries=10**13)  # 40 TB if it were allocated
    with pytest.raises(ValueError, match="entries that the file does not hold, more than"):
        load_pretrained(folder, model_class=Skeleton)


def rewrite(path, change):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    state = load_file(path)
    change(state)
    save_file(state, path, metadata=meta)


@pytest.mark.parametrize("which", [0, 1])
def test_non_finite_weights_are_refused(saved, tmp_path, which):
    folder = copy_of(saved[which], tmp_path)
    path = folder / (WEIGHTS_FILE if which == 0 else "model.safetensors")
    rewrite(path, lambda s: s[f"{Q}.U"].view(-1)[3:4].fill_(float("nan")))
    with pytest.raises(ValueError, match=rf"parameter '{Q}.U' holds non-finite values"):
        load_pretrained(folder)


def test_factors_that_do_not_fit_the_configured_layer_are_refused(saved, tmp_path):
    folder = copy_of(saved[1], tmp_path)

    def change(s):
        s[f"{Q}.U"], s[f"{Q}.V"] = torch.zeros(999, 3), torch.zeros(3, 999)

    rewrite(folder / "model.safetensors", change)
    with pytest.raises(ValueError, match=r"factors \(999, 3\) and \(3, 999\) do not fit its "
                                         r"\(32, 32\) weight"):
        load_pretrained(folder)


@pytest.mark.parametrize("which", [0, 1])
def test_a_weights_file_that_is_not_safetensors_is_a_value_error(saved, tmp_path, which):
    folder = copy_of(saved[which], tmp_path)
    name = WEIGHTS_FILE if which == 0 else "model.safetensors"
    (folder / name).write_bytes(b"\x00" * 8 + b"not a safetensors header")
    with pytest.raises(ValueError, match="not a safetensors file or is damaged"):
        load_pretrained(folder)


def test_a_symlinked_weights_file_is_followed_as_in_the_hugging_face_cache(saved, tmp_path,
                                                                            compressed):
    folder = copy_of(saved[0], tmp_path)
    (folder / WEIGHTS_FILE).unlink()
    (folder / WEIGHTS_FILE).symlink_to(saved[0] / WEIGHTS_FILE)
    x = torch.randint(0, 60, (1, 8))
    torch.testing.assert_close(load_pretrained(folder)(x).logits, compressed(x).logits)


class ConvNet(torch.nn.Sequential):
    """Convolutions (grouped, and both low-rank schemes) beside a linear layer, for
    the skeleton check's count of a factorized kernel's entries."""

    @classmethod
    def from_config(cls, config):
        torch.manual_seed(0)
        return cls(torch.nn.Conv2d(8, 6, 3, groups=2), torch.nn.Conv2d(6, 8, 3),
                   torch.nn.Conv1d(8, 6, 3), torch.nn.Linear(5, 7))


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_factorized_convolutions_pass_the_skeleton_check(saved, tmp_path, scheme):
    from compactnn import factorize, save_model

    folder = copy_of(saved[0], tmp_path)
    model, _ = factorize(ConvNet.from_config(None), rank=2, conv_scheme=scheme)
    save_model(model, folder / WEIGHTS_FILE)
    loaded = load_pretrained(folder, model_class=ConvNet)
    for a, b in zip(loaded.state_dict().items(), model.state_dict().items(), strict=True):
        assert a[0] == b[0] and torch.equal(a[1], b[1])


class NoEmbeddings(torch.nn.Sequential):
    def get_input_embeddings(self):  # as a Hugging Face base class that does not say
        raise NotImplementedError


def test_a_model_without_input_embeddings_skips_the_vocabulary_check():
    # any model factorize takes: the ids reach it unchecked, as its own input
    model = NoEmbeddings(torch.nn.Embedding(60, 16), torch.nn.Linear(16, 16),
                         torch.nn.ReLU(), torch.nn.Linear(16, 60))
    out, report = compress_lm(model, "svd_llm", 0.4, stream(64).view(4, 16))
    assert report.selected_param_ratio <= 0.6
