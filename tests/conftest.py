"""Shared fixtures: tiny random models (fast logic tests) and the embedded real model (slow set)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """A ``benchmarks/<name>.py`` script as a module (the scripts are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


KNOWEDIT_DIR = Path(os.environ.get("EDITWRAP_KNOWEDIT_DIR",
                                   Path(__file__).resolve().parents[2] / "shared/data/knowedit"))


def _tiny_tokenizer():
    """A real byte-level BPE tokenizer trained in memory (~1 s) so tests need no download."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    from editwrap.ops.corpus import iter_corpus

    texts = [t for _, t in zip(range(400), iter_corpus(None))]
    texts += ["The Eiffel Tower is located in the city of Paris Rome London Berlin",
              "The capital of France is Paris. Apple Microsoft Google"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=600, min_frequency=2, special_tokens=["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", bos_token="<|endoftext|>")


def interrupt_edit(monkeypatch, model, k: int):
    """Make the ``k``-th ``compute_edit`` call raise KeyboardInterrupt; returns the undo."""
    real, calls = type(model).compute_edit, {"n": 0}

    def compute_edit(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == k:
            raise KeyboardInterrupt("simulated interruption")
        return real(self, *a, **kw)

    monkeypatch.setattr(type(model), "compute_edit", compute_edit)
    return lambda: monkeypatch.setattr(type(model), "compute_edit", real)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return _tiny_tokenizer()


def build_tiny(kind: str, tokenizer, seed: int = 0):
    """A randomly initialised tiny causal LM of the given family, wrapped as EditableModel."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from editwrap import EditableModel

    torch.manual_seed(seed)
    v = len(tokenizer)
    if kind == "llama":
        cfg = LlamaConfig(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id)
        model = LlamaForCausalLM(cfg)
    elif kind == "gpt2":
        cfg = GPT2Config(vocab_size=v, n_embd=32, n_layer=4, n_head=4, n_positions=256,
                         pad_token_id=tokenizer.pad_token_id)
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(kind)
    model.eval()
    # EDITWRAP_TEST_DEVICE=cuda runs the logic tests on a GPU (`bash benchmarks/gpu/run.sh smoke`).
    return EditableModel.wrap(model.to(os.environ.get("EDITWRAP_TEST_DEVICE", "cpu")), tokenizer)


@pytest.fixture(params=["llama", "gpt2"])
def tiny_model(request, tiny_tokenizer):
    """A fresh tiny model per test, for both architecture families."""
    return build_tiny(request.param, tiny_tokenizer)


@pytest.fixture
def tiny_llama(tiny_tokenizer):
    return build_tiny("llama", tiny_tokenizer)


@pytest.fixture(scope="session")
def embedded():
    """The embedded SmolLM2-135M (loaded once per session; tests must leave its stack empty)."""
    from editwrap import EditableModel

    m = EditableModel.from_pretrained()
    yield m
    assert len(m.stack) == 0, "a test left edits on the shared embedded model"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch, request):
    """Tiny-model tests write covariance caches to a temp dir; the embedded model keeps the user cache."""
    if "embedded" not in request.fixturenames:
        monkeypatch.setenv("EDITWRAP_CACHE_STATS", str(tmp_path_factory.getbasetemp() / "stats"))


def pytest_collection_modifyitems(config, items):
    """Without the KnowEdit samples (../shared/data/knowedit, or $EDITWRAP_KNOWEDIT_DIR) the tests that
    read them are skipped with a reason saying where to point, instead of failing on a missing file."""
    if KNOWEDIT_DIR.is_dir():
        return
    import inspect

    skip = pytest.mark.skip(reason=f"KnowEdit samples not found at {KNOWEDIT_DIR}; set EDITWRAP_KNOWEDIT_DIR")
    for item in items:
        fn = getattr(item, "function", None)
        mod = getattr(item, "module", None)
        src = (inspect.getsource(fn) if fn else "") + (inspect.getsource(mod) if mod else "")
        if "KNOWEDIT_DIR" in src:
            item.add_marker(skip)


def _saved_tiny(arch: str, tmp_path_factory) -> Path:
    """A tiny random model and its tokenizer saved to a directory (for loaders and CLIs that take a path)."""
    tok = _tiny_tokenizer()
    d = tmp_path_factory.mktemp(f"tiny_{arch}")
    build_tiny(arch, tok).unwrap().save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return _saved_tiny("llama", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    return _saved_tiny("gpt2", tmp_path_factory)
